"""data.train_file over several JSONL shards: globs and lists, invalid records counted with file and line, and
the lazy dataset (only (file, byte offset) per record) giving exactly the eager dataset's examples."""

import json

import numpy as np
import pytest
import torch

from mmdialog.data.formats import DataSource, expand_files
from mmdialog.data.formats.lazy import LazyDataset
from mmdialog.data.formats.stream import iter_jsonl, iter_jsonl_offsets, read_jsonl_at
from mmdialog.data.processor import Example, Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError
from tests.data.formats.conftest import MEDIA


def good(i: int, image: bool = False) -> dict:
    q = f"What is {i} plus {i + 1}?"
    picture = {"type": "image_url", "image_url": {"url": "images/red.png"}}
    content = [picture, {"type": "text", "text": q}] if image else q
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": str(2 * i + 1)}]}


BAD = {  # line in its shard -> (text, reason)
    "shard-1.jsonl": {3: ('{"messages": [', "not valid JSON")},
    "shard-2.jsonl": {
        2: (json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}), "role order broken"),
        5: (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}),
            "empty reply"),
    },
    "shard-3.jsonl": {},
}


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    n = 0
    for name, bad in BAD.items():
        lines = []
        for line in range(1, 7):
            if line in bad:
                lines.append(bad[line][0])
            else:
                lines.append(json.dumps(good(n, image=n % 3 == 0)))
                n += 1
        (d / name).write_text("\n".join(lines) + "\n")
    (d / "notes.txt").write_text("not data")
    return d


@pytest.fixture
def processor(shards):
    texts = [good(i)["messages"][0]["content"] for i in range(20)] + [str(i) for i in range(40)]
    return Processor(ChatTokenizer.train(texts, 300), image_size=32, image_tokens=4)


def build(shards, processor, lazy):
    return DataSource(str(shards / "shard-*.jsonl"), "openai", media_root=MEDIA).dataset(
        processor, modalities={"image"}, progress=False, lazy=lazy)


def test_globs_and_lists_expand_in_order(shards):
    names = [p.name for p in expand_files(str(shards / "shard-*.jsonl"))]
    assert names == ["shard-1.jsonl", "shard-2.jsonl", "shard-3.jsonl"]
    three = str(shards / "shard-3.jsonl")
    listed = expand_files([three, str(shards / "shard-[12].jsonl"), three])
    assert [p.name for p in listed] == ["shard-3.jsonl", "shard-1.jsonl", "shard-2.jsonl"]  # a file named twice: once
    with pytest.raises(MMDialogError, match="no data file matches"):
        expand_files(str(shards / "nothing-*.jsonl"))


@pytest.mark.parametrize("lazy", [False, True])
def test_shards_count_and_report_invalid_records_with_file_and_line(shards, processor, lazy):
    ds = build(shards, processor, lazy)
    assert len(ds) == 18 - 3
    got = [(s.id, s.reason.split(":")[0].split(" (")[0]) for s in ds.skipped]
    assert got == [(f"{name} line {line}", reason) for name, bad in BAD.items() for line, (_, reason) in bad.items()]
    assert ds.ids[0] == "shard-1.jsonl line 1" and ds.ids[len(ds) - 1] == "shard-3.jsonl line 6"
    assert "3 skipped (shard-1.jsonl line 3: not valid JSON" in ds.report()


def test_lazy_and_eager_give_identical_examples(shards, processor):
    eager, lazy = build(shards, processor, False), build(shards, processor, True)
    assert isinstance(lazy, LazyDataset) and len(lazy) == len(eager)
    assert [lazy.ids[i] for i in range(len(lazy))] == eager.ids
    assert [(s.id, s.reason) for s in lazy.skipped] == [(s.id, s.reason) for s in eager.skipped]
    for i in reversed(range(len(eager))):  # any order: each draw reads its own record
        a, b = eager[i], lazy[i]
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert (a.images is None) == (b.images is None)
        assert a.images is None or torch.equal(a.images, b.images)
    assert sum(lazy[i].images is not None for i in range(len(lazy))) >= 4  # media records were among them


def test_lazy_dataset_holds_no_examples(shards, processor):
    """The memory proxy: what the lazy dataset keeps is three index arrays, 16 bytes a record, and the skipped list."""
    lazy = build(shards, processor, True)
    assert lazy.index_bytes() == 16 * len(lazy)
    held = [v for v in vars(lazy).values()]
    assert not any(isinstance(v, (list, tuple)) and any(isinstance(x, Example) for x in v) for v in held)
    arrays = [v for v in held if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == lazy.index_bytes() and len(arrays) == 3
    assert not hasattr(lazy, "examples")


def test_lazy_refuses_a_json_array(tmp_path, processor):
    (tmp_path / "a.json").write_text(json.dumps([good(1), good(2)]))
    with pytest.raises(MMDialogError, match="JSON Lines only"):
        DataSource(str(tmp_path / "a.json"), "openai").dataset(processor, {"image"}, progress=False, lazy=True)


def test_offsets_reader_reads_what_iter_jsonl_reads(tmp_path):
    raw = ('\ufeff{"a": 1}\r\n\n  \n{"b": "é"}\r{"c": 3}\n{bad\n'.encode() + b'{"d": "\xff"}\n' + b'{"e": 5}')
    (tmp_path / "x.jsonl").write_bytes(raw)
    plain = [(r.line, r.value, r.error) for r in iter_jsonl(tmp_path / "x.jsonl")]
    indexed = list(iter_jsonl_offsets(tmp_path / "x.jsonl"))
    assert [(r.line, r.value, r.error) for _, r in indexed] == plain
    assert [r.line for _, r in indexed] == [1, 4, 5, 6, 7, 8]
    for offset, r in indexed:
        again = read_jsonl_at(tmp_path / "x.jsonl", offset, r.line)
        assert (again.line, again.value, again.error) == (r.line, r.value, r.error)
