"""Files written whole or not at all, and a full disk told apart from other faults.

Every file a run keeps (checkpoints, its resolved config, its timings, the MNIST cache) is
written under a temporary name in its folder, flushed to the disk and renamed: a reader, or a
`resume=` after a crash or a full disk, sees the complete file or none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# No space left, a file over `ulimit -f`, a quota reached.
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# How the same faults read once SQLite, HDF5 or another library has worded them.
_FULL_WORDS = ("database or disk is full", "no space left on device", "file too large")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an error that led to it) says a disk or a file size limit is full."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(words in str(error).lower() for words in _FULL_WORDS):
            return True
    return False


def where_full(exc: BaseException, folders: list[Path]) -> tuple[str, str]:
    """What filled up, in words, and what the user does about it: the file size limit of the
    process (`ulimit -f`), else the fullest disk among those holding `folders`."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno == errno.EFBIG:
            name = f" writing {error.filename}" if error.filename else ""
            return f"a file grew past this process's size limit (ulimit -f){name}", "raise it"
    free = {}
    for folder in folders:
        with contextlib.suppress(OSError):
            free[folder] = shutil.disk_usage(folder).free
    if not free:
        return "no space left on a disk the run writes to", "free space"
    fullest = min(free, key=free.get)
    return (
        f"no space left on the disk holding {fullest} ({free[fullest] / 2**20:.1f} MiB free now)",
        "free space",
    )


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` (same suffix: Keras checks it) to write to; once the
    block has written it, it is flushed to the disk and renamed to `path`. If the block
    fails, the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_whole(path: Path, text: str) -> None:
    """`path.write_text(text)`, whole or not at all."""
    with written_whole(path) as tmp:
        tmp.write_text(text)
