"""OUTDIR: one search at a time, and no trace of a start that failed.

Two `optimize --resume` on the same folder would both replay the journal and append the
same configurations (duplicate measurements, a journal no longer one line per
configuration). So a run holds an exclusive, non-blocking flock on OUTDIR/LOCK_NAME for
its whole life; the second one stops with one line naming the holder's pid. The kernel
drops the lock when the holder dies, even by SIGKILL, so a stale lock file never blocks;
a run that ends (or is refused) removes the file, so OUTDIR holds only results.

A run that fails before it measured anything removes the header-only journal it
created: otherwise the corrected rerun would be refused ("journal exists: pass --resume").
"""
from __future__ import annotations

import os
from pathlib import Path

from graphprune.errors import GraphpruneError

LOCK_NAME = ".graphprune-optimize.lock"
JOURNAL_NAME = "journal.jsonl"


def check_outdir(outdir: str | os.PathLike, model: str | os.PathLike, resume: bool) -> Path:
    """The checks on OUTDIR that need no lock and create nothing."""
    from graphprune.modelio import refuse_overwriting_input
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise GraphpruneError(f"{out}: exists and is not a folder; -o names the output folder")
    refuse_overwriting_input(out / "best.onnx", model)
    if (out / LOCK_NAME).exists():   # busy: say so first, whatever else the folder holds
        OutdirLock(out).release()
    j = out / JOURNAL_NAME
    if not resume and j.exists() and j.stat().st_size > 0:
        raise GraphpruneError(f"{j} exists: pass --resume to continue that search, or choose another output folder")
    return out


class OutdirLock:
    """flock(LOCK_EX | LOCK_NB) on OUTDIR/LOCK_NAME, held until release()."""

    def __init__(self, out: Path):
        import fcntl
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOCK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise GraphpruneError(f"{out} is in use by another graphprune optimize (pid {holder})") from None
        try:
            same = os.path.samestat(os.fstat(self._fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and our flock: it was in use
            os.close(self._fd)
            self._fd = None
            raise GraphpruneError(f"{out} is in use by another graphprune optimize (it just finished or started)")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Remove the lock file, then drop the flock: nothing of ours is left in OUTDIR. A run
        that opened the file just before it went locks a removed file, which __init__ detects."""
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)   # closing the last descriptor drops the flock
            self._fd = None


def drop_if_header_only(journal, created: bool, log) -> None:
    """Remove a journal this run created and never wrote a measurement to."""
    if created and not journal.records and journal.path.exists():
        journal.path.unlink()
        log(f"nothing was measured: removed the new {journal.path.name} so that a corrected rerun starts clean")
