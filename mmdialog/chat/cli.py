"""The terminal chat loop behind `mmdialog chat`."""

from __future__ import annotations

import sys
from pathlib import Path

from mmdialog.chat.session import ChatSession
from mmdialog.data.conversation import Image
from mmdialog.errors import MMDialogError

HELP = "commands: /image PATH (attach to your next message), /reset, /quit"


def chat_loop(model, processor, *, max_new_tokens: int = 32, stdin=sys.stdin, stdout=sys.stdout) -> ChatSession:
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
    pending: list[Image] = []
    print(HELP, file=stdout)
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            pending.clear()
            print("(conversation cleared)", file=stdout)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                if not Path(path).is_file():
                    raise MMDialogError(f"image file not found: {path!r}")
                im = Image(path=path)
                im.load()
            except MMDialogError as e:
                print(f"error: {e}", file=stdout)
                continue
            pending.append(im)
            print(f"(image {path} attached to your next message)", file=stdout)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=stdout)
            continue
        try:
            reply = session.ask(*pending, line)
        except MMDialogError as e:
            session.conv.turns.pop()  # leave the session as it was before this turn
            print(f"error: {e}", file=stdout)
            continue
        pending.clear()
        print(f"bot> {reply}", file=stdout, flush=True)
    return session
