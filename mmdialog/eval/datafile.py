"""A dataset file (LLaVA, ShareGPT, OpenAI chat) as evaluation records: every assistant turn a scored round.

The file is read with the readers and checks training uses (data/formats: DataFile, Checks with the model's
processor, so roles, media tags, missing or undecodable media and the length are refused exactly as there).
Then the labels and candidates each assistant turn may carry are read:

    per record   "meta": {"rounds": [{...labels...}, ...],          one dict (or null) per assistant turn
                          "candidates": [[...], null, ...]}         one list of strings (or null) per assistant turn
    per turn     an assistant message's "labels": {...} and "candidates": [...]   (they win over meta's)

A labels dict may also hold "scored": false (the turn stays in the history but is not scored, like the world's
captions), "candidates" and "relevance" (one number per candidate, for NDCG; default: 1 for
the candidates equal to the gold reply after normalisation). A record whose label count differs from its
assistant turns, whose candidates do not list the gold reply, or whose label is not a whole number >= 0
where the label is numeric (some record gives it a number) is invalid: counted and listed with its reason,
never silently dropped, and the rest are scored.

An evaluation record (what eval/contexts.py and eval/lab.py take):

    {"id": "line 3", "line": 3, "record_id": <the record's own "id", if any>, "system": [parts] | None,
     "rounds": [{"round": k, "question": <user text>, "parts": [<user turn's parts>], "answer": <gold reply>,
                 "scored": True, "labels": {...}, "candidates": [...], "gold_candidate": i, "relevance": [...]}]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mmdialog.data.conversation import Conversation, Text
from mmdialog.data.formats import Checks, DataFile
from mmdialog.data.formats.common import MediaRoot, RecordError
from mmdialog.data.formats.reader import FORMATS
from mmdialog.data.formats.stream import iter_records
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.eval.matching import canonical

LABEL_COUNT = "label count differs from turn count"
NOT_A_NUMBER = "label is not a number"
BAD_LABELS = "malformed labels"
BAD_CANDIDATES = "malformed candidates"
GOLD_NOT_LISTED = "candidates do not list the gold reply"


@dataclass
class EvalData:
    file: str
    format: str
    records: list[dict] = field(default_factory=list)  # the valid ones, as evaluation records
    invalid: list[dict] = field(default_factory=list)  # {"line", "id", "reason"} in file order
    read: int = 0  # records read
    group_by: tuple[str, ...] = ()
    numeric: frozenset[str] = frozenset()  # the group_by labels some record gives as a number

    def summary(self) -> str:
        return (f"{self.file} ({self.format}): {self.read} records read, {len(self.records)} scored, "
                f"{len(self.invalid)} invalid")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _messages(raw: dict) -> list:
    for key in ("messages", "conversations"):
        if isinstance(raw.get(key), list):
            return raw[key]
    return []


def _assistant_messages(raw: dict) -> list[dict]:
    """The raw assistant messages of a record, in order (the converter has checked the roles)."""
    out = []
    for m in _messages(raw):
        if isinstance(m, dict) and (m.get("role") or m.get("from")) in ("assistant", "gpt"):
            out.append(m)
    return out


def _per_turn(meta: dict, key: str, n: int) -> list:
    """meta[key] as one entry per assistant turn (None where absent)."""
    if key not in meta or meta[key] is None:
        return [None] * n
    value = meta[key]
    if not isinstance(value, list):
        raise RecordError(BAD_LABELS if key == "rounds" else BAD_CANDIDATES,
                          f"field 'meta.{key}' should be a list (one entry per assistant turn), got {_short(value)}")
    if len(value) != n:
        raise RecordError(LABEL_COUNT, f"field 'meta.{key}' has {len(value)} entries but the record has {n} "
                                       f"assistant turn(s)")
    return value


def _candidates(value, gold: str, where: str) -> tuple[list[str], int]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise RecordError(BAD_CANDIDATES, f"{where} should be a non-empty list of strings, got {_short(value)}")
    stripped = [c.strip() for c in value]
    if gold.strip() in stripped:
        return list(value), stripped.index(gold.strip())
    g = canonical(gold)
    for i, c in enumerate(value):
        if canonical(c) == g:
            return list(value), i
    raise RecordError(GOLD_NOT_LISTED, f"{where} ({len(value)} candidates) does not list the gold reply {_short(gold)}")


def eval_record(conv: Conversation, raw: dict, line: int) -> dict:
    """The evaluation record of one converted record (raw: its parsed JSON), or a RecordError."""
    turns = list(conv.turns)
    system = None
    if turns and turns[0].role == "system":
        system = list(turns[0].parts)
        turns = turns[1:]
    pairs = [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]  # roles alternate (checked)
    n = len(pairs)
    meta = raw.get("meta", {}) if isinstance(raw, dict) else {}
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RecordError(BAD_LABELS, f"field 'meta' should be an object, got {_short(meta)}")
    label_list = _per_turn(meta, "rounds", n)
    cand_list = _per_turn(meta, "candidates", n)
    messages = _assistant_messages(raw)
    rounds = []
    for k, (user, assistant) in enumerate(pairs):
        labels = label_list[k]
        if labels is None:
            labels = {}
        if not isinstance(labels, dict):
            raise RecordError(BAD_LABELS, f"field 'meta.rounds'[{k}] should be an object of labels, got {_short(labels)}")
        labels = dict(labels)
        msg = messages[k] if k < len(messages) else {}
        if "labels" in msg:
            if not isinstance(msg["labels"], dict):
                raise RecordError(BAD_LABELS, f"assistant turn {k}: field 'labels' should be an object, "
                                              f"got {_short(msg['labels'])}")
            labels.update(msg["labels"])
        cands, where = cand_list[k], f"field 'meta.candidates'[{k}]"
        if "candidates" in labels:
            cands, where = labels.pop("candidates"), f"field 'meta.rounds'[{k}].candidates"
        if "candidates" in msg:
            cands, where = msg["candidates"], f"assistant turn {k}: field 'candidates'"
        relevance = labels.pop("relevance", None)
        scored = labels.pop("scored", True)
        if not isinstance(scored, bool):
            raise RecordError(BAD_LABELS, f"assistant turn {k}: label 'scored' should be true or false, got {_short(scored)}")
        rd = {"round": k, "question": user.text, "parts": list(user.parts), "answer": assistant.text, "scored": scored,
              "labels": labels}
        if cands is not None:
            rd["candidates"], rd["gold_candidate"] = _candidates(cands, assistant.text, where)
            if relevance is not None:
                if not (isinstance(relevance, list) and len(relevance) == len(rd["candidates"]) and
                        all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in relevance)):
                    raise RecordError(BAD_CANDIDATES, f"assistant turn {k}: 'relevance' should be {len(rd['candidates'])} "
                                                      f"numbers, one per candidate, got {_short(relevance)}")
                rd["relevance"] = [float(x) for x in relevance]
        rounds.append(rd)
    rec = {"id": conv.meta.get("id", f"line {line}"), "line": line, "system": system, "rounds": rounds}
    own = (conv.meta.get("record") or {}).get("id")
    if own is not None:
        rec["record_id"] = own
    return rec


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or \
        (isinstance(v, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", v) is not None)


def _whole(v) -> int | None:
    """v as a whole number >= 0, or None."""
    if not _is_number(v):
        return None
    x = float(v)
    return int(x) if x.is_integer() and x >= 0 else None


def numeric_labels(records: list[dict], group_by) -> frozenset[str]:
    """The group_by labels that some record gives as a number: they are bucketed 0/1/2/3-5/6+."""
    return frozenset(label for label in group_by
                     if any(_is_number(rd["labels"].get(label)) for rec in records for rd in rec["rounds"]))


def _check_numbers(rec: dict, numeric) -> None:
    for rd in rec["rounds"]:
        for label in numeric:
            v = rd["labels"].get(label)
            if v is None:
                continue
            w = _whole(v)
            if w is None:
                raise RecordError(NOT_A_NUMBER, f"assistant turn {rd['round']}: label {label!r} is {_short(v)}, not a "
                                                f"whole number >= 0 (other records give {label!r} as a number, so "
                                                f"--group-by {label} buckets it 0 / 1 / 2 / 3-5 / 6+)")
            rd["labels"][label] = w


def read_eval_file(path: str | Path, fmt: str = "auto", media_root: str | Path | None = None, *,
                   processor: Processor | None, modalities=None, group_by=(), max_records: int = 0,
                   progress: bool = False) -> EvalData:
    """Every record of the file as an evaluation record or an invalid one with its reason. max_records: stop
    after that many valid records (0: all)."""
    data = DataFile(path, fmt, media_root=media_root)
    checks = Checks(processor=processor, modalities=None if modalities is None else frozenset(modalities))
    out = EvalData(str(path), data.format, group_by=tuple(group_by))
    for raw in iter_records(data.path):
        if max_records and len(out.records) >= max_records:
            break
        out.read += 1
        rec = data.record(raw, checks)
        rid = data.record_id(raw.line)
        if rec.conversation is None:
            out.invalid.append({"line": raw.line, "id": rid, "reason": rec.reason})
            continue
        try:
            out.records.append(eval_record(rec.conversation, raw.value, raw.line))
        except RecordError as e:
            out.invalid.append({"line": raw.line, "id": rid, "reason": str(e)})
    out.numeric = numeric_labels(out.records, out.group_by)
    kept = []
    for rec in out.records:
        try:
            _check_numbers(rec, out.numeric)
            kept.append(rec)
        except RecordError as e:
            out.invalid.append({"line": rec["line"], "id": rec["id"], "reason": str(e)})
    out.records = kept
    out.invalid.sort(key=lambda x: x["line"])
    return out


# ----------------------------------------------------------------------------- the world as a file

def world_to_file(records: list[dict], world_dir: str | Path, path: str | Path, fmt: str = "sharegpt") -> Path:
    """Write world records as a dataset file whose records carry their labels in meta.rounds (distance, family,
    ref; "scored": false on captions and statements): the file path then scores what the world path does. Media paths are relative
    to world_dir (pass it as --media-root when the file is elsewhere)."""
    from mmdialog.data.worlds.shapes import record_to_conversation

    if fmt not in FORMATS:
        raise MMDialogError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
    media = MediaRoot(world_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import json

    with open(path, "w") as f:
        for rec in records:
            conv = record_to_conversation(rec, world_dir)
            conv.meta = {"id": rec["id"]}
            if fmt != "openai":  # tag formats need the text to hold the tag where the image is
                for t in conv.turns:
                    t.parts = [p for p in t.parts if not (isinstance(p, Text) and not p.text)]
            out = FORMATS[fmt].to_record(conv, media)
            out["meta"] = {"rounds": [{**{k: rd[k] for k in ("distance", "family", "ref")},
                                       **({} if rd["scored"] else {"scored": False})} for rd in rec["rounds"]]}
            f.write(json.dumps(out) + "\n")
    return path
