"""`mmdialog data check`: dataset files (LLaVA, ShareGPT, OpenAI chat) read record by record with the checks
training applies (with a checkpoint's processor when given); every invalid record named with its line and reason."""

from __future__ import annotations

import json


def main(files, *, fmt: str = "auto", media_root: str | None = None, max_length: int = 0,
         checkpoint: str | None = None, as_json: bool = False) -> int:
    """Print each file's report (as JSON with as_json); 1 when a record is invalid, else 0."""
    from mmdialog.data.formats import Checks, DataFile

    processor, modalities = None, None
    if checkpoint:
        from mmdialog.modelio import load_any

        ck = load_any(checkpoint)
        processor, modalities = ck.processor, frozenset(ck.model.encoders)
    checks = Checks(max_length=max_length, processor=processor, modalities=modalities)
    reports = [DataFile(f, fmt, media_root=media_root).check(checks) for f in files]
    if as_json:
        summary = {"records": sum(r.records for r in reports), "valid": sum(r.valid for r in reports),
                   "invalid": [{"file": r.file, **i} for r in reports for i in r.to_dict()["invalid"]],
                   "files": [r.to_dict() for r in reports]}
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(r.text() for r in reports))
    return 1 if any(r.invalid for r in reports) else 0
