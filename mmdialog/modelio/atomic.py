"""One way to put a directory on disk: write it whole beside its place, then rename it into place.

A crash while writing leaves the previous directory untouched (and a hidden .NAME.tmp-PID beside it); a crash
between the two renames leaves the previous one as .NAME.old-PID, which load_checkpoint falls back to.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_directory(target: str | Path, shareable: bool = False) -> Iterator[Path]:
    """Yields an empty temporary sibling of `target` to write into. When the block ends without an error, its
    files are made durable (fsync) and it replaces `target` by renames only: the old one aside, the new one in,
    the old one removed. shareable: files and directories readable by everyone the umask allows (safetensors
    writes 0600; an export is meant to be shared)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    yield tmp
    if shareable:
        umask = os.umask(0)
        os.umask(umask)
    for f in [tmp, *tmp.rglob("*")]:  # durable before the rename makes them visible
        if shareable:
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
