"""Read a dataset file one record at a time, with the line each record starts on.

Two layouts: JSON Lines (one object per line) and one JSON array of objects (LLaVA's layout).
Neither is loaded whole: JSONL is read line by line; the array reader keeps a window of about one
chunk and lets the C JSON decoder read one item at a time from it (~90 MB/s on a LLaVA-style file).
Where the decoder fails (a malformed item, or one the window cuts), a scanner finds the item's end
by its brackets, strings and commas, reading on as needed; so a malformed item is reported with its
line and the items after it are still read.

Every reader yields RawRecord(line, value, error, index): `value` is the parsed JSON value (or None),
`error` the reason it could not be parsed (or None), and `index` the record's place in the file
(1-based), which names it where many records share a line (an array written on one line). An
empty place in an array (`[{...},]`, `[{...},,{...}]`) is invalid JSON and reported as a record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmdialog.errors import MMDialogError

CHUNK = 1 << 20  # characters read at a time by the array reader

# A whole string (escapes included), or a structural character; a lone '"' is a string the buffer cuts off.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|["\[\]{},]', re.S)
_NONBLANK = re.compile(r"\S")
_DECODER = json.JSONDecoder()
NOT_UTF8 = "the bytes are not UTF-8"
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (read with surrogateescape)


@dataclass
class RawRecord:
    line: int  # 1-based line of the file where the record starts
    value: Any = None
    error: str | None = None
    index: int = 0  # 1-based place of the record in the file (the array's items, or JSONL's non-blank lines)


def _parse(line: int, text: str, columns: bool = True) -> RawRecord:
    """Parse one record's text, which starts on `line`; columns: whether the text starts at column 1."""
    if _SURROGATE.search(text):
        return RawRecord(line, error=NOT_UTF8)
    text = text.rstrip() if columns else text.strip()  # leading blanks would shift the line numbers
    try:
        return RawRecord(line, json.loads(text))
    except json.JSONDecodeError as e:
        where = f"line {line + e.lineno - 1}"
        if columns:
            where += f" column {e.colno}"
        return RawRecord(line, error=f"not valid JSON ({e.msg} at {where})")


def _open(path: Path):
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape")
    except FileNotFoundError:
        raise MMDialogError(f"data file not found: {path}") from None
    except OSError as e:
        raise MMDialogError(f"cannot read data file {path}: {e}") from None


def layout(path: str | Path) -> str:
    """'array' when the first non-blank character is '[', 'jsonl' when it is '{'; an error otherwise."""
    path = Path(path)
    with _open(path) as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                first = stripped[0]
                if first == "[":
                    return "array"
                if first == "{":
                    return "jsonl"
                raise MMDialogError(
                    f"{path}: neither a JSON array nor JSON Lines (the first character is {first!r}, expected '[' or '{{')"
                )
    raise MMDialogError(f"{path}: the file is empty")


def iter_jsonl(path: str | Path) -> Iterator[RawRecord]:
    """One record per non-blank line."""
    with _open(Path(path)) as f:
        index = 0
        for n, line in enumerate(f, start=1):
            if line.strip():
                index += 1
                yield _indexed(_parse(n, line), index)  # a line starts at column 1


def _indexed(rec: RawRecord, index: int) -> RawRecord:
    rec.index = index
    return rec


class _ArrayReader:
    """A window on the file: buf holds the text from pos on (and a little before); line counts the
    newlines of everything before buf[counted]."""

    def __init__(self, f, chunk_size: int):
        self.f, self.chunk_size = f, chunk_size
        self.buf, self.pos, self.line, self.counted, self.eof = "", 0, 1, 0, False

    def line_at(self, p: int) -> int:
        self.line += self.buf.count("\n", self.counted, p)
        self.counted = p
        return self.line

    def more(self) -> int | None:
        """Read the next chunk, dropping the text before pos; returns how far positions moved (None at the end)."""
        new = "" if self.eof else self.f.read(self.chunk_size)
        if not new:
            self.eof = True
            return None
        shift = self.pos
        self.line_at(shift)
        self.buf, self.pos, self.counted = self.buf[shift:] + new, 0, 0
        return shift

    def skip_blanks(self) -> str | None:
        """Move pos to the next non-blank character and return it; None at the end of the file."""
        while (m := _NONBLANK.search(self.buf, self.pos)) is None:
            self.pos = len(self.buf)
            if self.more() is None:
                return None
        self.pos = m.start()
        return self.buf[self.pos]

    def item(self) -> RawRecord:
        """The item at pos; afterwards pos is at the ',' or ']' after it, or at the end of the file."""
        line, start = self.line_at(self.pos), self.pos
        try:  # fast path: the C decoder reads the item and says where it ends
            value, end = _DECODER.raw_decode(self.buf, start)
        except json.JSONDecodeError:
            return _parse(line, self.scan(), columns=False)
        after = _NONBLANK.search(self.buf, end)
        # nothing after it: a number at the end of the buffer may go on in the next chunk
        if after is None or self.buf[after.start()] not in ",]":
            return _parse(line, self.scan(), columns=False)
        self.pos = after.start()
        if _SURROGATE.search(self.buf, start, end):
            return RawRecord(line, error=NOT_UTF8)
        return RawRecord(line, value)

    def scan(self) -> str:
        """The item's text, found by its brackets, strings and commas (reading on as needed); for items
        the decoder refused, or that the buffer cuts."""
        i, depth = self.pos, 0
        while True:
            m = _TOKEN.search(self.buf, i)
            if m is None or m.group() == '"':  # the buffer ends, maybe inside a string: read on
                keep = len(self.buf) if m is None else m.start()
                shift = self.more()
                if shift is None:
                    text, self.pos = self.buf[self.pos:], len(self.buf)
                    return text
                i = keep - shift
                continue
            c, i = m.group(), m.end()
            if len(c) > 1:  # a whole string
                continue
            if c in ",]" and depth == 0:
                text, self.pos = self.buf[self.pos:m.start()], m.start()
                return text
            if c in "[{":
                depth += 1
            elif c in "]}" and depth > 0:  # a stray closer at depth 0 stays in the item and fails to parse there
                depth -= 1


def iter_json_array(path: str | Path, chunk_size: int = CHUNK) -> Iterator[RawRecord]:
    """The items of a top-level JSON array, each parsed on its own, in a window of about chunk_size
    characters (more only while one item is longer)."""
    path = Path(path)
    truncated = "the file ends before the array's closing ']'"
    with _open(path) as f:
        r = _ArrayReader(f, chunk_size)
        c = r.skip_blanks()
        if c is None:
            raise MMDialogError(f"{path}: the file is empty")
        if c != "[":
            raise MMDialogError(f"{path} line {r.line_at(r.pos)}: expected a JSON array starting with '['")
        r.pos += 1
        index, after = 0, "["  # after: the last structural character read, '[' or ','; "" after an item
        while True:
            c = r.skip_blanks()
            if c is None:
                yield RawRecord(r.line_at(len(r.buf)), error=truncated, index=index + 1)
                return
            if c in ",]" and after and (c == "," or after == ","):  # a place without an item: invalid JSON
                index += 1
                what = {("[", ","): "a ',' right after the array's '['", (",", ","): "two ',' in a row",
                        (",", "]"): "a ',' before the array's closing ']'"}[after, c]
                yield RawRecord(r.line_at(r.pos), error=f"not valid JSON ({what}: an empty item at line "
                                                        f"{r.line_at(r.pos)})", index=index)
            if c == "]":
                break
            if c == ",":
                r.pos += 1
                after = ","
                continue
            rec, after = r.item(), ""
            index += 1
            rec.index = index
            if r.skip_blanks() is None:  # the file ends inside the array
                if rec.error is not None:
                    yield RawRecord(rec.line, error=f"{rec.error}; {truncated}", index=index)
                else:
                    yield rec
                    yield RawRecord(r.line_at(len(r.buf)), error=truncated, index=index + 1)
                return
            yield rec
        r.pos += 1
        if r.skip_blanks() is not None:
            yield RawRecord(r.line_at(r.pos), error="unexpected text after the array's closing ']'")


def iter_records(path: str | Path) -> Iterator[RawRecord]:
    """JSONL or a JSON array, whichever the file holds."""
    return iter_json_array(path) if layout(path) == "array" else iter_jsonl(path)


# ----------------------------------------------------------------------------- JSONL by byte offset

_BOM = b"\xef\xbb\xbf"


def _logical_lines(raw: bytes, offset: int):
    """The lines of one b'\\n'-terminated chunk as text mode splits them (universal newlines: a lone '\\r'
    ends a line too), each with the byte offset where it starts. '\\r' and '\\n' never occur inside a UTF-8
    sequence, so splitting the bytes is splitting the text."""
    start = 0
    while start < len(raw):
        cr, nl = raw.find(b"\r", start), raw.find(b"\n", start)
        ends = [e for e in (cr, nl) if e >= 0]
        if not ends:
            yield offset + start, raw[start:]
            return
        end = min(ends)
        yield offset + start, raw[start:end]
        start = end + (2 if raw[end:end + 2] == b"\r\n" else 1)


def iter_jsonl_offsets(path: str | Path) -> Iterator[tuple[int, RawRecord]]:
    """What iter_jsonl yields (the same lines, values and errors), each with the byte offset where its line
    starts, so `read_jsonl_at` can read that record again without reading the file."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise MMDialogError(f"data file not found: {path}") from None
    except OSError as e:
        raise MMDialogError(f"cannot read data file {path}: {e}") from None
    n = index = 0
    with f:
        offset = 0
        for chunk in f:
            first = offset == 0 and chunk.startswith(_BOM)
            for at, raw in _logical_lines(chunk[3:] if first else chunk, offset + (3 if first else 0)):
                n += 1
                text = raw.decode("utf-8", errors="surrogateescape")
                if text.strip():
                    index += 1
                    yield at, _indexed(_parse(n, text), index)
            offset += len(chunk)


def read_jsonl_at(path: str | Path, offset: int, line: int) -> RawRecord:
    """The record whose line starts at byte `offset` (found by iter_jsonl_offsets), as line `line`."""
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.readline()
    cut = [e for e in (raw.find(b"\r"), raw.find(b"\n")) if e >= 0]
    raw = raw[:min(cut)] if cut else raw
    return _parse(line, raw.decode("utf-8", errors="surrogateescape"))
