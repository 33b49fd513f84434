"""A dataset file in one of the formats, read one record at a time: conversations, a check report,
the text to train a tokenizer on, or the processed training set.

    data = DataFile("llava.json", "auto", media_root="images/")
    report = data.check(Checks(max_length=2048))       # records, valid, invalid [(line, reason)]
    for rec in data.records(Checks()):                  # Record(line, conversation | None, reason | None)
        ...
"""

from __future__ import annotations

import glob
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmdialog.data.conversation import Conversation
from mmdialog.data.dataset import ConversationDataset, Skipped
from mmdialog.data.formats import llava, openai, sharegpt
from mmdialog.data.formats.common import NOT_JSON, MediaRoot, RecordError
from mmdialog.data.formats.stream import RawRecord, iter_jsonl_offsets, iter_records, layout, read_jsonl_at
from mmdialog.data.formats.validate import Checks, check_conversation
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.modalities import MODALITIES

FORMATS = {m.NAME: m for m in (llava, sharegpt, openai)}
DETECT_RECORDS = 32  # records `auto` looks at


def detect_format(values: list, path: Path) -> str:
    """The format the first records of a file follow, from their keys:

    images / videos / audios lists -> sharegpt; `messages` whose content is a list of parts, or plain
    text without media tags -> openai; `messages` with media tags -> sharegpt; `conversations` -> llava.
    """
    dicts = [v for v in values if isinstance(v, dict)]
    if any(k in d for d in dicts for k in sharegpt.LISTS.values()):
        return "sharegpt"
    msgs = [m for d in dicts if isinstance(d.get("messages"), list) for m in d["messages"] if isinstance(m, dict)]
    if msgs:
        contents = [m.get("content", m.get("value")) for m in msgs]
        if any(isinstance(c, list) for c in contents):
            return "openai"
        if any(isinstance(c, str) and any(mod.tag in c for mod in MODALITIES) for c in contents) \
                or any("from" in m for m in msgs):
            return "sharegpt"
        return "openai"
    if any("conversations" in d for d in dicts):
        return "llava"
    raise MMDialogError(f"{path}: cannot tell the format from the first {len(values)} record(s) (no 'messages' or "
                        "'conversations' field); pass --format llava, sharegpt or openai")


@dataclass
class Record:
    line: int
    conversation: Conversation | None = None
    reason: str | None = None
    index: int = 0  # the record's 1-based place in the file (see stream.RawRecord)


@dataclass
class Invalid:
    line: int
    reason: str
    record: int = 0  # the record's 1-based place in the file: it names one of many records on one line


_RECORD_ID = re.compile(r"line (\d+)(?: \(record (\d+)\))?$")


def record_order(record_id: str) -> tuple[int, int]:
    """(line, record) of an id such as "line 3" or "shard.json line 1 (record 4)", to sort ids in file order."""
    m = _RECORD_ID.search(record_id)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


@dataclass
class CheckReport:
    file: str
    format: str
    records: int = 0
    valid: int = 0
    invalid: list[Invalid] = field(default_factory=list)
    array: bool = False  # one JSON array: a line may hold many records, so reports name the record too

    def to_dict(self) -> dict:
        return {"file": self.file, "format": self.format, "records": self.records, "valid": self.valid,
                "invalid": [{"line": i.line, "record": i.record, "reason": i.reason} for i in self.invalid]}

    def text(self, limit: int = 0) -> str:
        """What `mmdialog data check` prints: a summary line, then one line per invalid record."""
        lines = [f"{self.file} ({self.format}): {self.records} records read, {self.valid} valid, "
                 f"{len(self.invalid)} invalid"]
        shown = self.invalid[:limit] if limit else self.invalid
        lines += [f"  line {i.line}{f' (record {i.record})' if self.array else ''}: {i.reason}" for i in shown]
        if len(shown) < len(self.invalid):
            lines.append(f"  ... and {len(self.invalid) - len(shown)} more")
        return "\n".join(lines)


class DataFile:
    def __init__(self, path: str | Path, fmt: str = "auto", media_root: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise MMDialogError(f"data file not found: {self.path}")
        if fmt != "auto" and fmt not in FORMATS:
            raise MMDialogError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMATS)}")
        root = Path(media_root) if media_root else self.path.parent
        if not root.is_dir():
            raise MMDialogError(f"media root not found: {root} (for {self.path})")
        self.media = MediaRoot(root)
        self.array = layout(self.path) == "array"
        if fmt == "auto":
            head = [r.value for r in itertools.islice(iter_records(self.path), DETECT_RECORDS) if r.error is None]
            fmt = detect_format(head, self.path)
        self.format = fmt
        self.converter = FORMATS[fmt]

    label: str = ""  # names the file in record ids when training reads several ("shard-1.jsonl line 3")

    def record_id(self, line: int, index: int = 0) -> str:
        """"line 3", "shard-1.jsonl line 3"; in a JSON array, also the record's place: "line 1 (record 4)"."""
        rid = f"{self.label} line {line}" if self.label else f"line {line}"
        return f"{rid} (record {index})" if self.array and index else rid

    def record(self, raw: RawRecord, checks: Checks | None = None) -> Record:
        """One parsed record as a conversation, or the reason it is refused. checks=None: conversion only."""
        if raw.error is not None:
            reason = raw.error if raw.error.startswith(NOT_JSON) else f"{NOT_JSON}: {raw.error}"
            return Record(raw.line, reason=reason, index=raw.index)
        try:
            conv = self.converter.from_record(raw.value, self.media)
            if checks is not None:
                check_conversation(conv, checks)
        except RecordError as e:
            return Record(raw.line, reason=str(e), index=raw.index)
        conv.meta.update(id=self.record_id(raw.line, raw.index), line=raw.line, source=str(self.path))
        return Record(raw.line, conv, index=raw.index)

    def records(self, checks: Checks | None = None) -> Iterator[Record]:
        """Every record with its conversation, or the reason it is refused. checks=None: conversion only."""
        for raw in iter_records(self.path):
            yield self.record(raw, checks)

    def indexed_records(self, checks: Checks | None = None) -> Iterator[tuple[int, Record]]:
        """records(), each with the byte offset of its line (JSON Lines only: a lazy dataset reads it again there)."""
        if layout(self.path) != "jsonl":
            raise MMDialogError(f"{self.path}: data.lazy reads JSON Lines only (one record per line); this file is "
                                "one JSON array: convert it to JSONL, or set data.lazy=false")
        for offset, raw in iter_jsonl_offsets(self.path):
            yield offset, self.record(raw, checks)

    def read_at(self, offset: int, line: int) -> Record:
        """The record at a byte offset found by indexed_records, converted (not checked again)."""
        return self.record(read_jsonl_at(self.path, offset, line))

    def check(self, checks: Checks) -> CheckReport:
        report = CheckReport(str(self.path), self.format, array=self.array)
        for rec in self.records(checks):
            report.records += 1
            if rec.conversation is not None:
                report.valid += 1
            else:
                report.invalid.append(Invalid(rec.line, rec.reason, rec.index))
        return report

    def texts(self) -> Iterator[str]:
        """The text of every turn of every record that converts (media not checked): a tokenizer's training text."""
        for rec in self.records(None):
            if rec.conversation is not None:
                yield from (t.text for t in rec.conversation.turns if t.text)

    def dataset(self, processor: Processor, modalities, progress: bool = True) -> ConversationDataset:
        """The processed training set. Records that fail a check are in `skipped` as ("line N", reason),
        in file order, next to any the processor refused."""
        refused: list[Skipped] = []

        def valid() -> Iterator[Conversation]:
            for rec in self.records(Checks(processor=processor, modalities=frozenset(modalities))):
                if rec.conversation is None:
                    refused.append(Skipped(self.record_id(rec.line, rec.index), rec.reason))
                else:
                    yield rec.conversation

        ds = ConversationDataset.build(valid(), processor, desc=f"processing {self.path.name}", progress=progress)
        ds.skipped = sorted(ds.skipped + refused, key=lambda s: record_order(s.id))
        return ds

    def to_record(self, conv: Conversation) -> dict:
        return self.converter.to_record(conv, self.media)


def expand_files(spec) -> list[Path]:
    """data.train_file as paths: one path, a glob (`data/shard-*.jsonl`, its matches sorted by name), or a list of
    either (in the order given); a file named twice is read once."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if any(c in text for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise MMDialogError(f"no data file matches {text!r}")
            out += matches
        else:
            out.append(Path(text))
    seen: set[Path] = set()
    unique = [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]
    if not unique:
        raise MMDialogError("data.train_file names no file")
    return unique


class DataSource:
    """The files of data.train_file read as one training set, in order. With several files a record's id names
    its file ("shard-2.jsonl line 7"; the full path where two files share a name); with one it is "line 7"."""

    def __init__(self, spec, fmt: str = "auto", media_root: str | Path | None = None):
        self.files = [DataFile(p, fmt, media_root=media_root) for p in expand_files(spec)]
        if len(self.files) > 1:
            names = [f.path.name for f in self.files]
            unique = len(set(names)) == len(names)
            for f in self.files:
                f.label = f.path.name if unique else str(f.path)
        self._order = {f.label: i for i, f in enumerate(self.files)}

    def texts(self) -> Iterator[str]:
        for f in self.files:
            yield from f.texts()

    def sort_key(self, record_id: str) -> tuple[int, int, int]:
        """(file, line, record) of a record id, for reporting skipped records in reading order."""
        label = record_id.rpartition("line ")[0].strip()
        return (self._order.get(label, 0), *record_order(record_id))

    def dataset(self, processor: Processor, modalities, progress: bool = True, lazy: bool = False):
        """The training set: every valid record processed up front (ConversationDataset), or with lazy=True
        a LazyDataset that keeps only each valid record's (file, byte offset) and processes it when drawn.
        Either way invalid records are in `skipped` as (id, reason) in reading order."""
        if lazy:
            from mmdialog.data.formats.lazy import LazyDataset

            return LazyDataset.build(self, processor, modalities, progress=progress)
        checks = Checks(processor=processor, modalities=frozenset(modalities))
        refused: list[Skipped] = []

        def valid() -> Iterator[Conversation]:
            for f in self.files:
                for rec in f.records(checks):
                    if rec.conversation is None:
                        refused.append(Skipped(f.record_id(rec.line, rec.index), rec.reason))
                    else:
                        yield rec.conversation

        more = f" (+{len(self.files) - 1} files)" if len(self.files) > 1 else ""
        desc = f"processing {self.files[0].path.name}{more}"
        ds = ConversationDataset.build(valid(), processor, desc=desc, progress=progress)
        ds.skipped = sorted(ds.skipped + refused, key=lambda s: self.sort_key(s.id))
        return ds
