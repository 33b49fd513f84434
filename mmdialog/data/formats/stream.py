"""Read a dataset file one record at a time, with the line each record starts on.

Two layouts: JSON Lines (one object per line) and one JSON array of objects (LLaVA's layout).
Neither is loaded whole: JSONL is read line by line, and the array reader scans fixed-size chunks
for the commas that separate its items (tracking strings and nesting), then parses one item at a
time. Because the scanner finds item boundaries by itself, a malformed item is reported with its
line and the items after it are still read.

Every reader yields RawRecord(line, value, error): `value` is the parsed JSON value (or None) and
`error` the reason it could not be parsed (or None).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmdialog.errors import MMDialogError

CHUNK = 1 << 20  # characters read at a time by the array reader

_OUTSIDE = re.compile(r'[\[\]{},"\n]')  # what matters between strings
_INSIDE = re.compile(r'["\\\n]')  # what matters inside a string
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (read with surrogateescape)


@dataclass
class RawRecord:
    line: int  # 1-based line of the file where the record starts
    value: Any = None
    error: str | None = None


def _parse(line: int, text: str, columns: bool = True) -> RawRecord:
    """Parse one record's text, which starts on `line`; columns: whether the text starts at column 1."""
    if _SURROGATE.search(text):
        return RawRecord(line, error="the bytes are not UTF-8")
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
        for n, line in enumerate(f, start=1):
            if line.strip():
                yield _parse(n, line)  # a line starts at column 1


def iter_json_array(path: str | Path, chunk_size: int = CHUNK) -> Iterator[RawRecord]:
    """The items of a top-level JSON array, each parsed on its own."""
    path = Path(path)
    line = 1
    opened = closed = False
    in_string = escaped = False
    depth = 0  # nesting inside the current item
    parts: list[str] = []  # text of the current item
    start: int | None = None  # line of the current item's first character

    def item() -> Iterator[RawRecord]:
        nonlocal parts, start
        text = "".join(parts)
        if text.strip():
            yield _parse(start or line, text, columns=False)
        parts, start = [], None

    with _open(path) as f:
        while chunk := f.read(chunk_size):
            i, n = 0, len(chunk)
            while i < n:
                if closed:  # only blanks may follow the closing bracket
                    rest = chunk[i:]
                    if rest.strip():
                        line += rest[: len(rest) - len(rest.lstrip())].count("\n")
                        yield RawRecord(line, error="unexpected text after the array's closing ']'")
                        return
                    line += rest.count("\n")
                    break
                if not opened:
                    j = len(chunk) - len(chunk[i:].lstrip())
                    line += chunk[i:j].count("\n")
                    if j == n:
                        break
                    if chunk[j] != "[":
                        raise MMDialogError(f"{path} line {line}: expected a JSON array starting with '['")
                    opened, i = True, j + 1
                    continue
                if in_string:
                    if escaped:  # the character after a backslash is never structural
                        escaped = False
                        parts.append(chunk[i])
                        if chunk[i] == "\n":
                            line += 1
                        i += 1
                        continue
                    m = _INSIDE.search(chunk, i)
                    if m is None:
                        parts.append(chunk[i:])
                        break
                    j, c = m.start(), m.group()
                    parts.append(chunk[i: j + 1])
                    i = j + 1
                    if c == "\n":
                        line += 1
                    elif c == "\\":
                        escaped = True
                    else:
                        in_string = False
                    continue
                m = _OUTSIDE.search(chunk, i)
                if m is None:
                    if start is None and chunk[i:].strip():
                        start = line
                    parts.append(chunk[i:])
                    break
                j, c = m.start(), m.group()
                pre = chunk[i:j]  # no newline lies in it, so all of it is on this line
                if start is None and (pre.strip() or c in '"[{}'):
                    start = line
                i = j + 1
                if c in ",]" and depth == 0:  # the end of an item
                    parts.append(pre)
                    yield from item()
                    closed = c == "]"
                    continue
                parts.append(pre + c)
                if c == "\n":
                    line += 1
                elif c == '"':
                    in_string = True
                elif c in "[{":
                    depth += 1
                elif c in "]}" and depth > 0:  # a stray closer at depth 0 stays in the item and fails to parse there
                    depth -= 1
    if not opened:
        raise MMDialogError(f"{path}: the file is empty")
    if not closed:
        truncated = "the file ends before the array's closing ']'"
        text = "".join(parts)
        rec = _parse(start or line, text, columns=False) if text.strip() else None
        if rec is not None and rec.error is not None:
            yield RawRecord(rec.line, error=f"{rec.error}; {truncated}")
        else:
            if rec is not None:
                yield rec
            yield RawRecord(line, error=truncated)


def iter_records(path: str | Path) -> Iterator[RawRecord]:
    """JSONL or a JSON array, whichever the file holds."""
    return iter_json_array(path) if layout(path) == "array" else iter_jsonl(path)
