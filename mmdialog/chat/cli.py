"""The terminal chat loop behind `mmdialog chat`: replies stream in; slash commands edit the session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmdialog.chat.policies import make_policy
from mmdialog.chat.sampling import SamplingParams
from mmdialog.chat.session import ChatSession
from mmdialog.data.conversation import MEDIA_PARTS, Audio, Conversation, Image, Video
from mmdialog.errors import MMDialogError

HELP = """commands:
  /image PATH          attach an image to your next message (several may be attached)
  /audio PATH          attach a WAV clip (models with an audio encoder)
  /video PATH          attach a clip: animated GIF/PNG/WebP or .npy frames (models with a video encoder)
  /policy NAME [ARG]   context policy: full | last_k K [STEP] | token_budget TOKENS | summary KEEP [STEP]
                       (STEP > 1 drops old rounds STEP at a time, so the cache survives between cuts)
  /undo                remove your last message and its reply
  /retry               regenerate the last reply
  /reset               start a new conversation
  /save FILE           write the conversation as JSON
  /load FILE           read a conversation written by /save
  /help                this list
  /quit                leave"""


class ChatCLI:
    """One terminal chat. Each command either works or prints `error: ...` and changes nothing."""

    def __init__(self, session: ChatSession, stdin=sys.stdin, stdout=sys.stdout, system: str | None = None):
        self.session, self.stdin, self.stdout, self.system = session, stdin, stdout, system
        self.pending: list[Image | Audio | Video] = []
        if system and not session.conv.turns:
            session.add("system", system)

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.stdout, flush=True)

    def run(self) -> ChatSession:
        self.say(f"mmdialog chat (policy: {self.session.policy.describe()}). /help lists the commands.")
        while True:
            self.say("you> ", end="")
            line = self.stdin.readline()
            if not line:  # end of input
                self.say()
                break
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) == "quit":
                        break
                else:
                    self.reply(self.session.stream(*self.pending, line))
                    self.pending.clear()
            except MMDialogError as e:
                self.say(f"error: {e}")
            except KeyboardInterrupt:  # Ctrl-C stops the reply being written; the turn is dropped
                self.say("\n(interrupted; that turn was dropped)")
        return self.session

    def reply(self, stream) -> None:
        self.say("bot> ", end="")
        try:
            for piece in stream:
                self.say(piece, end="")
        finally:
            stream.close()
        self.say()

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        s = self.session
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            self.say(HELP)
        elif name in ("/image", "/audio", "/video"):
            kind = name[1:]
            if not arg:
                raise MMDialogError(f"usage: /{kind} PATH")
            s.model.num_media_tokens(kind)  # raises, naming the encoders the model has, when it has none for this
            path = Path(arg).expanduser()
            if not path.is_file():
                raise MMDialogError(f"{kind} file not found: {arg}")
            # absolute, so that /save and /load work from anywhere
            part = MEDIA_PARTS[kind](path=str(path.resolve()))
            if kind == "image":  # a file that cannot be read fails here, not mid-turn
                part.load()
            else:
                part.read_bytes()
            self.pending.append(part)
            self.say(f"({kind} {arg} attached to your next message)")
        elif name == "/policy":
            if not arg:
                self.say(f"(policy: {s.policy.describe()})")
                return None
            s.set_policy(make_policy(*arg.split()))
            self.say(f"(policy: {s.policy.describe()})")
        elif name == "/undo":
            s.undo()
            self.pending.clear()
            self.say(f"(last exchange removed; {len(s.conv.turns)} turns left)")
        elif name == "/retry":
            self.reply(s.regenerate())
        elif name == "/reset":
            s.reset()
            if self.system:
                s.add("system", self.system)
            self.pending.clear()
            self.say("(conversation cleared)")
        elif name == "/save":
            if not arg:
                raise MMDialogError("usage: /save FILE")
            try:
                Path(arg).write_text(json.dumps(s.conv.to_dict(), indent=2))
            except OSError as e:
                raise MMDialogError(f"cannot write {arg}: {e}") from None
            self.say(f"(saved {len(s.conv.turns)} turns to {arg})")
        elif name == "/load":
            if not arg:
                raise MMDialogError("usage: /load FILE")
            try:
                data = json.loads(Path(arg).read_text())
            except FileNotFoundError:
                raise MMDialogError(f"file not found: {arg}") from None
            except (OSError, ValueError) as e:
                raise MMDialogError(f"cannot read {arg}: {e}") from None
            try:
                conv = Conversation.from_dict(data, root=Path(arg).resolve().parent, where=arg)
            except (TypeError, AttributeError):
                conv = None
            if not isinstance(data, dict) or conv is None:
                raise MMDialogError(f"{arg} does not hold a conversation (a JSON object with 'turns', as /save writes)")
            s.load(conv)
            self.pending.clear()
            self.say(f"(loaded {len(s.conv.turns)} turns from {arg})")
        else:
            raise MMDialogError(f"unknown command {name}; /help lists the commands")
        return None


def chat_loop(model, processor, *, max_new_tokens: int = SamplingParams.max_new_tokens, policy=None,
              sampling: SamplingParams | None = None, system: str | None = None, stdin=sys.stdin,
              stdout=sys.stdout) -> ChatSession:
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens, policy=policy, sampling=sampling)
    return ChatCLI(session, stdin, stdout, system=system).run()
