"""Datasets of processed conversations. A sample that fails to process is counted and reported, not dropped silently."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset
from tqdm import tqdm

from mmdialog.data.conversation import Conversation
from mmdialog.data.processor import Example, Processor
from mmdialog.errors import MMDialogError


@dataclass
class Skipped:
    id: str
    reason: str


def report_skipped(skipped: list[Skipped], path: Path, show: int = 20, log=print) -> None:
    """Records left out of training, never silently: a count, the first reasons, all of them in a file."""
    if not skipped:
        return
    with open(path, "w") as f:
        for s in skipped:
            f.write(json.dumps({"record": s.id, "reason": s.reason}) + "\n")
    log(f"skipped {len(skipped)} record(s) (all in {path}):")
    for s in skipped[:show]:
        log(f"  {s.id}: {s.reason}")
    if len(skipped) > show:
        log(f"  ... and {len(skipped) - show} more")


@dataclass
class ConversationDataset(Dataset):
    """Processes every conversation once up front (the world is small; the CPU is the bottleneck in training)."""

    examples: list[Example] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def build(cls, conversations: list[Conversation], processor: Processor, desc: str = "processing", progress: bool = True):
        ds = cls()
        if processor.reader is not None:  # the reader reads them all first: a generator must be read only once
            conversations = list(conversations)
            processor.warm(conversations, progress=progress)
        for conv in tqdm(conversations, desc=desc, disable=not progress, leave=False):
            cid = str(conv.meta.get("id", len(ds.ids) + len(ds.skipped)))
            try:
                ds.examples.append(processor(conv, where=f"conversation {cid}"))
                ds.ids.append(cid)
            except MMDialogError as e:
                ds.skipped.append(Skipped(cid, str(e)))
        return ds

    def report(self) -> str:
        if not self.skipped:
            return f"{len(self.examples)} conversations, none skipped"
        head = "; ".join(f"{s.id}: {s.reason}" for s in self.skipped[:5])
        return f"{len(self.examples)} conversations, {len(self.skipped)} skipped ({head}{' ...' if len(self.skipped) > 5 else ''})"

    def __len__(self) -> int:
        return len(self.examples)

    def lengths(self) -> list[int]:
        """Each conversation's token count (train.group_by_length)."""
        return [len(e.input_ids) for e in self.examples]

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]
