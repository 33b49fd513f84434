"""A training set read from JSON Lines shards on demand: memory does not grow with the examples.

One validating pass reads every file of data.train_file record by record, runs the checks training runs
(validate.Checks with the model's processor) and the processor itself (whose result is dropped), and keeps,
per valid record, only where it is: a file index and the byte offset of its line (12 bytes a record, in
two numpy arrays). Invalid records are counted and reported with file and line exactly as the eager
dataset reports them. `dataset[i]` seeks to the record, parses, converts and processes it again, so it
gives the same Example the eager ConversationDataset holds for index i. The StepSampler decides which
indices each process draws and resumes mid-epoch; nothing here depends on what was drawn before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from mmdialog.data.dataset import Skipped
from mmdialog.data.formats.validate import Checks
from mmdialog.data.processor import Example, Processor
from mmdialog.errors import MMDialogError

if TYPE_CHECKING:
    from mmdialog.data.formats.reader import DataSource


class _Ids:
    """dataset.ids without storing them: "line N" / "file line N", computed when asked."""

    def __init__(self, ds: "LazyDataset"):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> str:
        return self.ds.files[int(self.ds.file_index[i])].record_id(int(self.ds.lines[i]))


class LazyDataset(Dataset):
    def __init__(self, files, processor: Processor, file_index: np.ndarray, offsets: np.ndarray,
                 lines: np.ndarray, skipped: list[Skipped]):
        self.files, self.processor = files, processor
        self.file_index, self.offsets, self.lines = file_index, offsets, lines
        self.skipped = skipped
        self.ids = _Ids(self)

    @classmethod
    def build(cls, source: "DataSource", processor: Processor, modalities, progress: bool = True) -> "LazyDataset":
        checks = Checks(processor=processor, modalities=frozenset(modalities))
        fidx, offsets, lines, skipped = [], [], [], []
        for fi, f in enumerate(source.files):
            # lists of ints while reading (one per record), packed into numpy below
            for offset, rec in tqdm(f.indexed_records(checks), desc=f"indexing {f.path.name}", disable=not progress,
                                    leave=False):
                rid = f.record_id(rec.line)
                if rec.conversation is None:
                    skipped.append(Skipped(rid, rec.reason))
                    continue
                try:  # what the processor refuses, training would refuse on the draw: refuse it now
                    processor(rec.conversation, where=f"conversation {rid}")
                except MMDialogError as e:
                    skipped.append(Skipped(rid, str(e)))
                    continue
                fidx.append(fi)
                offsets.append(offset)
                lines.append(rec.line)
        return cls(source.files, processor, np.asarray(fidx, np.int32), np.asarray(offsets, np.int64),
                   np.asarray(lines, np.int32), skipped)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Example:
        f = self.files[int(self.file_index[i])]
        rec = f.read_at(int(self.offsets[i]), int(self.lines[i]))
        if rec.conversation is None:
            raise MMDialogError(f"{f.path} line {rec.line} changed after it was checked ({rec.reason}); "
                                "do not edit data files while training reads them")
        return self.processor(rec.conversation, where=f"conversation {rec.conversation.meta['id']}")

    def index_bytes(self) -> int:
        """What the dataset holds per record: its index arrays."""
        return self.file_index.nbytes + self.offsets.nbytes + self.lines.nbytes

    def report(self) -> str:
        where = f"read lazily from {len(self.files)} file(s)"
        if not self.skipped:
            return f"{len(self)} conversations ({where}), none skipped"
        head = "; ".join(f"{s.id}: {s.reason}" for s in self.skipped[:5])
        return (f"{len(self)} conversations ({where}), {len(self.skipped)} skipped "
                f"({head}{' ...' if len(self.skipped) > 5 else ''})")
