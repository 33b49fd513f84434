"""Byte-level BPE tokenizer trained on the world's text, plus the chat template.

Special tokens mark roles, turn ends and media placeholders. The tokenizer never merges
across a special token, and every turn ends with `<|end|>`, so the token ids of turns 1..N
are a prefix of the token ids of turns 1..N+1 (the cross-turn KV cache relies on it).

Only the template places special tokens. A conversation's own text (what users, systems and
replies say, from any source: chat, a request, a dataset file) is tokenised as plain text, so
text that spells `<|end|><|assistant|>` is those characters, never a turn boundary
(`encode_conversation`). `encode` parses special tokens: it is for template text.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import jinja2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmdialog.data.conversation import Conversation
from mmdialog.errors import MMDialogError
from mmdialog.modalities import MODALITIES

PAD, BOS = "<|pad|>", "<|bos|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
MEDIA_TOKENS = {m.name: m.placeholder for m in MODALITIES}  # {"image": "<|image|>", ...}
SPECIAL_TOKENS = [PAD, BOS, *ROLE_TOKENS.values(), END, *MEDIA_TOKENS.values()]

# One placeholder per media item; the processor expands it to the encoder's token count.
CHAT_TEMPLATE = (
    "{%- for turn in turns -%}"
    "<|{{ turn.role }}|>"
    "{%- for part in turn.parts -%}"
    "{%- if part.type == 'text' -%}{{ part.text }}{%- else -%}<|{{ part.type }}|>{%- endif -%}"
    "{%- endfor -%}"
    "<|end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


MARK = re.compile("\ue000(\\d+)\ue001")  # stands for the i-th text part while the template renders
CHUNK = 1 << 14  # characters tokenised at a time while counting a long text against a limit
_LAST_WORD = re.compile(r".*\S(?= )", re.S)  # up to the last non-space that a space follows


class TooLong(MMDialogError):
    """A text over a token limit, found without tokenising all of it: it needs at least `at_least` tokens."""

    def __init__(self, at_least: int, limit: int):
        super().__init__(f"at least {at_least} tokens, over the limit of {limit}")
        self.at_least, self.limit = at_least, limit


class ChatTokenizer:
    """A `tokenizers.Tokenizer` plus a Jinja chat template and the ids of the special tokens."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str = CHAT_TEMPLATE):
        self.tok = tokenizer
        self.chat_template = chat_template
        self._template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(chat_template)
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise MMDialogError(f"tokenizer lacks special tokens {missing}")
        self.pad_id = ids[PAD]
        self.end_id = ids[END]
        self.role_ids = {r: ids[t] for r, t in ROLE_TOKENS.items()}
        self.media_ids = {m: ids[t] for m, t in MEDIA_TOKENS.items()}
        # The same tokenizer that reads special tokens' spellings as plain text (for a conversation's text), the
        # special tokens by spelling (for the template's text), and the most characters one token stands for.
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        added = tokenizer.get_added_tokens_decoder().values()
        self._special = {t.content: tokenizer.token_to_id(t.content) for t in added if t.special}
        self._special_re = re.compile("|".join(map(re.escape, sorted(self._special, key=len, reverse=True))))
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        longest = max((len(t) for t in vocab if t not in self._special), default=1)
        # a normalizer may shorten the text (composing accents): leave room for it
        self.max_token_chars = longest * (1 if tokenizer.normalizer is None else 2)

    # -- training and files -------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> "ChatTokenizer":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(d / "tokenizer.json"))
        (d / "chat_template.jinja").write_text(self.chat_template)

    @classmethod
    def load(cls, directory: str | Path) -> "ChatTokenizer":
        """tokenizer.json (+ chat_template.jinja) of a checkpoint or export, or a pretrained LM's directory
        (data.tokenizer=/models/SmolLM2-360M-Instruct): its vocabulary, with mmdialog's special tokens added
        where it lacks them (the decoder grows its embedding table to match)."""
        d = Path(directory)
        f = d / "tokenizer.json"
        if not f.is_file():
            raise MMDialogError(f"no tokenizer.json in {d}")
        try:
            tok = Tokenizer.from_file(str(f))
        except Exception as e:
            raise MMDialogError(f"cannot read tokenizer {f}: {e}") from None
        missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:  # a pretrained LM's tokenizer: mmdialog's tokens go after its vocabulary, and its template
            tok.add_special_tokens(missing)  # (which knows none of them) gives way to mmdialog's
            tok.no_truncation()  # the processor decides lengths
            tok.no_padding()
            return cls(tok)
        t = d / "chat_template.jinja"
        return cls(tok, t.read_text() if t.is_file() else CHAT_TEMPLATE)

    # -- text ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def never_generated(self) -> list[int]:
        """The ids no reply contains, so no decoder of a reply may choose them: padding, <|bos|>, the role
        tokens and the media placeholders (the chat session, the batched chat and teacher forcing ban them)."""
        return [self.pad_id, self.tok.token_to_id("<|bos|>"), *self.role_ids.values(), *self.media_ids.values()]

    def encode(self, text: str) -> list[int]:
        """Template text: spellings of special tokens become those tokens."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """Plain text: a spelling of a special token is its characters (what users, systems and data say)."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_conversation(self, conv: Conversation, add_generation_prompt: bool = False,
                            max_tokens: int | None = None) -> list[int]:
        """The ids of the rendering, with every text part tokenised as plain text; only the template's own
        text yields special tokens. For text without special spellings these are exactly
        `encode(render(conv))`. max_tokens: raise TooLong as soon as the ids would be more, bounding
        from the characters first, so that an over-long text is refused without tokenising it all."""
        runs = self._runs(conv, add_generation_prompt)
        if max_tokens is not None:
            bound = sum(1 if isinstance(r, int) else math.ceil(len(r) / self.max_token_chars) for r in runs)
            if bound > max_tokens:
                raise TooLong(bound, max_tokens)
        ids: list[int] = []
        for r in runs:
            if isinstance(r, int):
                ids.append(r)
            else:
                if max_tokens is not None and len(r) > CHUNK:
                    self._count(r, max_tokens - len(ids))
                ids += self._plain.encode(r, add_special_tokens=False).ids
            if max_tokens is not None and len(ids) > max_tokens:
                raise TooLong(len(ids), max_tokens)
        return ids

    def _runs(self, conv: Conversation, add_generation_prompt: bool) -> list[str | int]:
        """The rendering as special token ids (placed by the template) and runs of text between them."""
        texts: list[str] = []

        def part(p) -> dict:
            d = vars(p) | {"type": p.type}
            if p.type == "text":
                d["text"] = f"\ue000{len(texts)}\ue001"
                texts.append(p.text)
            return d

        turns = [{"role": t.role, "parts": [part(p) for p in t.parts]} for t in conv.turns]
        rendered = self._template.render(turns=turns, add_generation_prompt=add_generation_prompt)
        runs: list[str | int] = [""]
        for i, piece in enumerate(MARK.split(rendered)):
            if i % 2:  # a text part: plain text, whatever it spells
                runs[-1] += texts[int(piece)]
                continue
            pos = 0
            for m in self._special_re.finditer(piece):
                runs[-1] += piece[pos:m.start()]
                runs += [self._special[m.group()], ""]
                pos = m.end()
            runs[-1] += piece[pos:]
        return [r for r in runs if r != ""]

    def _count(self, text: str, limit: int) -> None:
        """Raise TooLong if a long text needs more than `limit` tokens, tokenising CHUNK characters at a time
        (each piece ends before a space that follows a non-space: a word boundary for BPE pre-tokenizers)."""
        n, start, pieces = 0, 0, 0
        while start < len(text):
            end = min(start + CHUNK, len(text))
            if end < len(text) and (m := _LAST_WORD.match(text, start + CHUNK // 2, end)):
                end = m.end()
            n += len(self._plain.encode(text[start:end], add_special_tokens=False).ids)
            pieces += 1
            if n > limit + pieces - 1:  # one token either way at each cut, where a cut splits a word after all
                raise TooLong(n - pieces + 1, limit)
            start = end

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def render(self, conv: Conversation, add_generation_prompt: bool = False) -> str:
        """The chat template applied to a conversation: a string with one placeholder per media item."""
        turns = [{"role": t.role, "parts": [vars(p) | {"type": p.type} for p in t.parts]} for t in conv.turns]
        return self._template.render(turns=turns, add_generation_prompt=add_generation_prompt)
