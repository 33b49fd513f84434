import json

import pytest

from mmdialog.data.formats.stream import iter_json_array, iter_jsonl, iter_records, layout
from mmdialog.errors import MMDialogError

RECORDS = [{"id": i, "text": 'tricky: , ] } { [ " \\ \n' + "x" * i, "nested": [1, {"a": [2, {}]}]} for i in range(25)]


def write_array(path, records, indent=2):
    text = "\ufeff \n[\n" + ",\n".join(json.dumps(r, indent=indent) for r in records) + "\n]\n\n"
    path.write_text(text, encoding="utf-8")
    return text.lstrip("\ufeff").split("\n")


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_array_items_and_their_lines_whatever_the_chunk_size(tmp_path, chunk):
    lines = write_array(tmp_path / "a.json", RECORDS)
    got = list(iter_json_array(tmp_path / "a.json", chunk_size=chunk))
    assert [r.value for r in got] == RECORDS and all(r.error is None for r in got)
    assert all(lines[r.line - 1].strip() == "{" for r in got)  # each record's line is where its '{' is


def test_a_bad_item_is_reported_and_the_next_ones_are_read(tmp_path):
    (tmp_path / "b.json").write_text('[\n{"a": 1},\n{"a": 2,},\n  {"a" 3},\n{"a": 4}, 5\n]\n')
    got = [(r.line, r.value, r.error) for r in iter_json_array(tmp_path / "b.json", chunk_size=3)]
    assert got[0] == (2, {"a": 1}, None)
    assert got[1][0] == 3 and got[1][2].startswith("not valid JSON") and "line 3" in got[1][2]
    assert got[2][0] == 4 and got[2][2].startswith("not valid JSON")
    assert got[3:] == [(5, {"a": 4}, None), (5, 5, None)]


def test_truncated_and_trailing_text_are_reported(tmp_path):
    (tmp_path / "t.json").write_text('[{"a": 1},\n{"a": 2')
    got = list(iter_records(tmp_path / "t.json"))
    assert got[0].value == {"a": 1} and got[1].line == 2 and "ends before the array's closing ']'" in got[1].error
    (tmp_path / "u.json").write_text('[{"a": 1}\n')
    assert [r.error for r in iter_records(tmp_path / "u.json")] == [None, "the file ends before the array's closing ']'"]
    (tmp_path / "v.json").write_text('[{"a": 1}]\n\n[2]')
    got = list(iter_records(tmp_path / "v.json"))
    assert got[1].line == 3 and "after the array's closing ']'" in got[1].error


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_bad_bytes_in_an_array_item(tmp_path, chunk):
    (tmp_path / "a.json").write_bytes(b'[{"a": "\xff"},\n {"a": 2}, 12345]')
    got = [(r.line, r.value, r.error) for r in iter_json_array(tmp_path / "a.json", chunk_size=chunk)]
    assert got == [(1, None, "the bytes are not UTF-8"), (2, {"a": 2}, None), (2, 12345, None)]


def test_jsonl_lines_blank_lines_and_bad_bytes(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"a": 1}\n\n{"a": "\xff"}\n{"a"\n  {"b": 2}\r\n')
    got = [(r.line, r.value, r.error) for r in iter_jsonl(tmp_path / "a.jsonl")]
    assert got == [(1, {"a": 1}, None), (3, None, "the bytes are not UTF-8"),
                   (4, None, "not valid JSON (Expecting ':' delimiter at line 4 column 5)"), (5, {"b": 2}, None)]


def test_layout_and_file_errors(tmp_path):
    (tmp_path / "a.json").write_text("\n  [1]")
    (tmp_path / "b.jsonl").write_text('{"a": 1}')
    (tmp_path / "c.txt").write_text("hello")
    (tmp_path / "d.json").write_text("  \n")
    assert layout(tmp_path / "a.json") == "array" and layout(tmp_path / "b.jsonl") == "jsonl"
    with pytest.raises(MMDialogError, match=r"c\.txt: neither a JSON array nor JSON Lines"):
        layout(tmp_path / "c.txt")
    with pytest.raises(MMDialogError, match=r"d\.json: the file is empty"):
        layout(tmp_path / "d.json")
    with pytest.raises(MMDialogError, match="data file not found"):
        list(iter_records(tmp_path / "nope.json"))


@pytest.mark.parametrize("kind", ["array", "jsonl"])
def test_records_are_read_as_the_file_is_read_not_after(tmp_path, kind):
    """Streaming: records come while the file is being read. Emptying the file after the first record
    leaves the reader only what its buffers already held: a whole-file reader would still yield all."""
    n = 5000
    path = tmp_path / "big.json"
    if kind == "array":
        path.write_text("[" + ",\n".join(json.dumps({"i": i}) for i in range(n)) + "]")
    else:
        path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(n)))
    reader = iter_json_array(path, chunk_size=256) if kind == "array" else iter_jsonl(path)
    assert next(reader).value == {"i": 0}
    path.write_text("")  # truncates the file the reader still has open
    rest = list(reader)
    assert len(rest) < n // 4


@pytest.mark.parametrize("text,what", [('[{"a": 1},]', "a ',' before the array's closing ']'"),
                                       ('[{"a": 1},,{"a": 2}]', "two ',' in a row"),
                                       ('[,{"a": 1}]', "a ',' right after the array's '['")])
def test_an_empty_place_in_an_array_is_invalid_json(tmp_path, text, what):
    (tmp_path / "e.json").write_text(text)
    got = list(iter_json_array(tmp_path / "e.json"))
    assert [r.value for r in got if r.error is None] == [{"a": 1}] + ([{"a": 2}] if '"a": 2' in text else [])
    bad = [r for r in got if r.error is not None]
    assert len(bad) == 1 and bad[0].error.startswith("not valid JSON") and what in bad[0].error


def test_records_on_one_line_are_named_by_their_place(tmp_path):
    from mmdialog.data.formats import Checks, DataFile

    (tmp_path / "one.json").write_text('[{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
                                       '"content": "yo"}]}, {"messages": 5},, {"messages" 1}]')
    got = list(iter_json_array(tmp_path / "one.json"))
    assert [(r.line, r.index) for r in got] == [(1, 1), (1, 2), (1, 3), (1, 4)]
    report = DataFile(tmp_path / "one.json", "openai").check(Checks(media=False))
    assert (report.records, report.valid) == (4, 1)
    lines = report.text().splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == ["  line 1 (record 2)", "  line 1 (record 3)", "  line 1 (record 4)"]
    assert "two ',' in a row" in lines[1] and lines[2].split(": ", 1)[1].startswith("not valid JSON")
    assert [i["record"] for i in report.to_dict()["invalid"]] == [2, 3, 4]
