from mmdialog.data.formats import Checks, DataFile

from .conftest import FIXTURES, MEDIA


def test_training_set_skips_invalid_records_with_line_and_reason(tiny):
    model, proc = tiny
    data = DataFile(FIXTURES / "llava.json", media_root=MEDIA)
    ds = data.dataset(proc, modalities=model.encoders.keys(), progress=False)
    # a JSON array: ids name the record's place too (records may share a line)
    assert len(ds) == 5 and ds.ids == ["line 2 (record 1)", "line 12 (record 2)", "line 23 (record 3)",
                                       "line 86 (record 11)", "line 94 (record 12)"]
    assert [s.id for s in ds.skipped] == [f"line {n} (record {i})" for i, n in enumerate((30, 39, 47, 55, 63, 71, 79), 4)]
    assert ds.examples[1].images.shape == (2, 3, 32, 32)  # the two images of line 12, resized
    assert ds.skipped[0].reason.startswith("role order broken")


def test_media_the_model_cannot_encode_is_skipped(tiny):
    model, proc = tiny
    ds = DataFile(FIXTURES / "sharegpt.jsonl", media_root=MEDIA).dataset(proc, model.encoders.keys(), progress=False)
    assert ds.ids == ["line 1", "line 3"]
    assert next(s for s in ds.skipped if s.id == "line 2").reason.startswith("media the model cannot encode")


def test_texts_for_the_tokenizer_and_the_text_report():
    data = DataFile(FIXTURES / "llava.jsonl", media_root=MEDIA)
    texts = list(data.texts())
    assert "\nWhat colour?" in texts and "red" in texts and "hm" not in texts  # line 6 does not convert
    report = data.check(Checks())
    text = report.text(limit=2)
    assert text.splitlines()[0].endswith("6 records read, 2 valid, 4 invalid")
    assert text.splitlines()[1].startswith("  line 3: not valid JSON") and text.endswith("... and 2 more")
    assert report.to_dict()["invalid"][0] == {"line": 3, "record": 3, "reason": report.invalid[0].reason}
