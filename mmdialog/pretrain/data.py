"""Paired data for pretraining: (media, caption) pairs, each with optional (question, answer) pairs about it.

Two sources:

- the built-in shapes world: every dialogue gives its image, a caption, and its questions that need no
  history (distance 0, no earlier round) with their answers. The caption is by default written from the
  scene metadata, naming every object ("5 shapes: a large red circle at the top left, ..."); with
  pretrain.world_captions=round it is the dialogue's own caption round (the object count and one object).
- a user file, JSON Lines, one pair per line:

      {"image": "pics/0001.png", "text": "a red circle above a blue square"}
      {"image": "pics/0002.png", "text": "two green squares", "question": "How many squares?", "answer": "2"}
      {"audio": "beeps/07.wav", "text": "three high beeps", "id": "beep-07"}

  exactly one of "image", "audio", "video" (a path relative to the media root, default the file's folder;
  paths leaving it are refused), "text" a non-empty caption, optional "question" and "answer" (both or
  neither), optional "id" (default: the line number).

A record that cannot be used (bad JSON, a missing or empty field, a missing or undecodable file, media the
model has no encoder for, too long) is skipped, counted and reported with its line or id and the reason;
it never stops the run.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from mmdialog.data.collate import Collator
from mmdialog.data.conversation import Conversation, Text
from mmdialog.data.dataset import Skipped
from mmdialog.data.formats.common import MALFORMED, MISSING_MEDIA, MediaRoot, RecordError, media_part
from mmdialog.data.formats.stream import iter_jsonl
from mmdialog.data.processor import Example, Processor
from mmdialog.errors import MMDialogError
from mmdialog.modalities import NAMES

CAPTION_PROMPT = "List the shapes in the picture."  # the world's own caption round asks "Describe the picture."
USER_CAPTION_PROMPT = "Describe the picture."
MODALITIES = NAMES  # a pair record names its media field by its modality


@dataclass
class PairRecord:
    """One media item, its caption, and questions about it that need nothing but the media."""

    id: str
    modality: str  # image | audio | video
    path: str  # absolute
    text: str
    qas: list[tuple[str, str]] = field(default_factory=list)
    prompt: str = USER_CAPTION_PROMPT  # the user turn that asks for the caption


# ----------------------------------------------------------------------------- the world

def scene_caption(scene: dict) -> str:
    """Every object of a world scene, in reading order: '3 shapes: a large red circle at the top left, ...'."""
    objs = sorted(scene["objects"], key=lambda o: (o["row"], o["col"]))
    things = [f"a {o['size']} {o['colour']} {o['shape']} at the {o['position']}" for o in objs]
    return f"{len(objs)} shape{'s' if len(objs) != 1 else ''}: " + ", ".join(things) + "."


def world_pairs(world_dir: str | Path, split: str, captions: str = "scene") -> list[PairRecord]:
    """The pairs of one split of a world directory: its image, a caption (scene or round), and the questions of
    its dialogue that depend on no earlier round."""
    from mmdialog.data.worlds.shapes import load_split

    if captions not in ("scene", "round"):
        raise MMDialogError(f"pretrain.world_captions must be scene or round, got {captions!r}")
    out = []
    for rec in load_split(world_dir, split):
        rounds = rec["rounds"]
        text = scene_caption(rec["scene"]) if captions == "scene" else rounds[0]["answer"]
        qas = [(rd["question"], rd["answer"]) for rd in rounds[1:] if rd["scored"] and rd["depends_on"] is None]
        out.append(PairRecord(rec["id"], "image", str((Path(world_dir) / rec["image"]).resolve()), text, qas,
                              prompt=CAPTION_PROMPT if captions == "scene" else rounds[0]["question"]))
    return out


def world_texts(world_dir: str | Path, split: str = "train") -> list[str]:
    """Every question and answer of a world split (the text the fine-tuning dialogues hold)."""
    from mmdialog.data.worlds.shapes import load_split

    return [t for r in load_split(world_dir, split) for rd in r["rounds"] for t in (rd["question"], rd["answer"])]


# ----------------------------------------------------------------------------- a user file

def read_pairs_file(path: str | Path, media_root: str | Path | None = None) -> tuple[list[PairRecord], list[Skipped]]:
    """The usable pairs of a JSONL file, and the skipped ones (id "line N", reason naming the field)."""
    path = Path(path)
    root = MediaRoot(media_root or path.parent)
    records, skipped = [], []
    for raw in iter_jsonl(path):
        where = f"{path.name} line {raw.line}"
        if raw.error:
            skipped.append(Skipped(where, raw.error))
            continue
        try:
            records.append(_pair(raw.value, raw.line, root))
        except RecordError as e:
            skipped.append(Skipped(where, str(e)))
    return records, skipped


def _pair(value, line: int, root: MediaRoot) -> PairRecord:
    if not isinstance(value, dict):
        raise RecordError(MALFORMED, f"a record must be a JSON object, got {type(value).__name__}")
    kinds = [m for m in MODALITIES if m in value]
    if len(kinds) != 1:
        raise RecordError(MALFORMED, f"a record needs exactly one of the fields 'image', 'audio', 'video'; "
                                     f"it has {len(kinds)}" + (f" ({', '.join(kinds)})" if kinds else ""))
    text = value.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RecordError(MALFORMED, f"field 'text' should be a non-empty string, got {text!r}"[:120])
    q, a = value.get("question"), value.get("answer")
    if (q is None) != (a is None):
        raise RecordError(MALFORMED, "fields 'question' and 'answer' go together; the record has only "
                                     f"'{'question' if a is None else 'answer'}'")
    qas = []
    if q is not None:
        if not (isinstance(q, str) and q.strip() and isinstance(a, str) and a.strip()):
            raise RecordError(MALFORMED, f"fields 'question' and 'answer' should be non-empty strings, got {q!r}, {a!r}")
        qas.append((q.strip(), a.strip()))
    full = root.resolve(value[kinds[0]], repr(kinds[0]))
    if not Path(full).is_file():
        raise RecordError(MISSING_MEDIA, f"field {kinds[0]!r}: file not found: {full}")
    rid = value.get("id")
    return PairRecord(str(rid) if isinstance(rid, (str, int)) else f"line {line}", kinds[0], full, text.strip(), qas)


# ----------------------------------------------------------------------------- processed pairs

@dataclass
class PairItem:
    """One processed pair.

    caption: [media, prompt] -> caption, labels on the caption; carries the media tensor (images/audios/videos)
    text_ids: (L,) the caption's token ids alone (the text tower's input)
    qas: [media, question] -> answer examples, without their own copy of the media tensor
    answers: the answers of qas, as written
    """

    id: str
    caption: Example
    text_ids: torch.Tensor
    qas: list[Example]
    answers: list[str]


def _conversation(modality: str, path: str, prompt: str, reply: str) -> Conversation:
    conv = Conversation()
    conv.add("user", media_part(modality, path), Text(prompt))
    conv.add("assistant", reply)
    return conv


class PairDataset(Dataset):
    """Pairs processed once up front; the ones that fail to process are in `skipped` with the reason.

    An item is (PairItem, the index of its question this epoch): each epoch asks a different one of a
    pair's questions (set_epoch, called by the trainer before every step, so a resumed run asks the same).
    """

    def __init__(self, items: list[PairItem], skipped: list[Skipped], modality: str):
        self.items, self.skipped, self.modality = items, skipped, modality
        self.ids = [it.id for it in items]
        self.epoch = 0

    @classmethod
    def build(cls, records: list[PairRecord], processor: Processor, *, skipped: list[Skipped] | None = None,
              desc: str = "processing pairs", progress: bool = True) -> "PairDataset":
        skipped = list(skipped or [])
        items = []
        modalities = {r.modality for r in records}
        if len(modalities) > 1:
            raise MMDialogError(f"pretraining pairs must share one modality, these have {sorted(modalities)}")
        for rec in tqdm(records, desc=desc, disable=not progress, leave=False):
            try:
                items.append(process_pair(rec, processor))
            except MMDialogError as e:
                skipped.append(Skipped(rec.id, str(e)))
        return cls(items, skipped, next(iter(modalities), "image"))

    def report(self) -> str:
        qa = sum(len(it.qas) for it in self.items)
        if not self.skipped:
            return f"{len(self.items)} pairs ({qa} questions), none skipped"
        head = "; ".join(f"{s.id}: {s.reason}" for s in self.skipped[:5])
        return (f"{len(self.items)} pairs ({qa} questions), {len(self.skipped)} skipped ({head}"
                f"{' ...' if len(self.skipped) > 5 else ''})")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[PairItem, int]:
        it = self.items[i]
        return it, (self.epoch + i) % len(it.qas) if it.qas else -1


def process_pair(rec: PairRecord, processor: Processor) -> PairItem:
    where = f"pair {rec.id}"
    caption = processor(_conversation(rec.modality, rec.path, rec.prompt, rec.text), where=where)
    text_ids = torch.tensor(processor.tokenizer.encode_text(rec.text))
    if len(text_ids) == 0:
        raise MMDialogError(f"{where}: the caption has no tokens")
    qas, answers = [], []
    for k, (q, a) in enumerate(rec.qas):
        conv = _conversation(rec.modality, rec.path, q, a)
        ids = processor.expanded_ids(conv, where=f"{where} question {k}")
        if len(ids) > processor.max_length:
            raise MMDialogError(f"{where} question {k}: {len(ids)} tokens exceed max_length {processor.max_length}")
        # the media tensor is the caption's: not read or stored again
        qas.append(Example(torch.tensor(ids), torch.tensor(processor.labels_for(ids))))
        answers.append(a)
    return PairItem(rec.id, caption, text_ids, qas, answers)


def text_hash(ids: torch.Tensor) -> int:
    """A 62-bit fingerprint of a token sequence: equal captions get equal hashes (to keep them from being each
    other's negatives)."""
    return zlib.crc32(ids.numpy().tobytes()) << 30 ^ len(ids)


class PairCollator:
    """(PairItem, question index) list -> one flat dict of tensors (what PretrainObjective reads):

      input_ids, attention_mask, labels (B, T): [media, prompt] -> caption, labels on the caption
      images (B, 3, H, W) | audios (B, S) | videos (B, F, 3, H, W): one media item per pair, row order
      text_ids, text_mask (B, L): the caption's tokens alone, right-padded
      text_hash (B,): equal captions, equal values
      qa_input_ids, qa_attention_mask, qa_labels (Q, Tq): [media, question] -> answer, for the pairs that have
          a question this epoch; qa_rows (Q,) their rows in the batch (their media); qa_class (Q,) the answer's
          class in the closed answer set (-1: outside it, or no answer set)
    """

    def __init__(self, pad_id: int, answer_vocab=None):
        self.pad_id = pad_id
        self.collate = Collator(pad_id)
        self.answer_vocab = answer_vocab

    def __call__(self, batch: list[tuple[PairItem, int]]) -> dict[str, torch.Tensor]:
        items = [it for it, _ in batch]
        out = self.collate([it.caption for it in items])
        L = max(len(it.text_ids) for it in items)
        out["text_ids"] = torch.full((len(items), L), self.pad_id, dtype=torch.long)
        out["text_mask"] = torch.zeros((len(items), L), dtype=torch.long)
        for b, it in enumerate(items):
            out["text_ids"][b, :len(it.text_ids)] = it.text_ids
            out["text_mask"][b, :len(it.text_ids)] = 1
        out["text_hash"] = torch.tensor([text_hash(it.text_ids) for it in items], dtype=torch.long)
        rows = [b for b, (it, q) in enumerate(batch) if q >= 0]
        qa = self.collate([items[b].qas[batch[b][1]] for b in rows]) if rows else None
        if qa is not None:
            out["qa_input_ids"], out["qa_attention_mask"], out["qa_labels"] = (
                qa["input_ids"], qa["attention_mask"], qa["labels"])
            out["qa_rows"] = torch.tensor(rows, dtype=torch.long)
            vocab = self.answer_vocab
            out["qa_class"] = torch.tensor([vocab.encode(items[b].answers[batch[b][1]]) if vocab is not None else -1
                                            for b in rows], dtype=torch.long)
        return out
