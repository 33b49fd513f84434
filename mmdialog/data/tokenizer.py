"""Byte-level BPE tokenizer trained on the world's text, plus the chat template.

Special tokens mark roles, turn ends and media placeholders. The tokenizer never merges
across a special token, and every turn ends with `<|end|>`, so the token ids of turns 1..N
are a prefix of the token ids of turns 1..N+1 (the cross-turn KV cache relies on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import jinja2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmdialog.data.conversation import Conversation
from mmdialog.errors import MMDialogError

PAD, BOS = "<|pad|>", "<|bos|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
MEDIA_TOKENS = {"image": "<|image|>", "audio": "<|audio|>", "video": "<|video|>"}
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

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def render(self, conv: Conversation, add_generation_prompt: bool = False) -> str:
        """The chat template applied to a conversation: a string with one placeholder per media item."""
        turns = [{"role": t.role, "parts": [vars(p) | {"type": p.type} for p in t.parts]} for t in conv.turns]
        return self._template.render(turns=turns, add_generation_prompt=add_generation_prompt)
