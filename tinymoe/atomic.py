"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

    with atomic_write("run/last.npz", "wb") as f:
        np.savez(f, **arrays)

The data goes to a temporary file beside the target, is flushed to disk (fsync), and is renamed over
the target with os.replace, which is atomic for a same-directory rename on POSIX and Windows. If
anything fails before the rename, the temporary file is removed and the old target is untouched.

Robustness (issue 16): `reserve=` bytes are checked against the file system's free space before
anything is written, and any OS error of the write (ENOSPC, EACCES, ...) becomes one `WriteError`
naming the file. The file gets the permissions a plain open() would give (0666 minus the umask), not
mkstemp's 0600. Temporary names carry the writer's process id, so `remove_stale_temporaries` can delete
the ones a killed process left behind without touching a live writer's. `lock_directory` gives one
process at a time a directory (a run's --out).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


class WriteError(OSError):
    """A file could not be written (no space, no permission, ...); the message names the file and the fix."""


def check_free_space(directory, nbytes: int, what, fix: str = "free some space or write somewhere else") -> None:
    """Raise WriteError if the file system of `directory` has less than `nbytes` (+ 1 MiB) free."""
    free = shutil.disk_usage(directory).free
    if free < nbytes + 2**20:
        raise WriteError(
            f"not enough free space to write {what}: it needs about {nbytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB "
            f"are free in {directory}; {fix}"
        )


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = "utf-8", reserve: int = 0) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit, make it `path` atomically.

    `reserve`: bytes the file will take, checked against the free space before writing (0: no check)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if reserve:
        check_free_space(path.parent, reserve, path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # what open() would give the file, not mkstemp's 0600
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(f"could not write {path}: {exc}; free some space or write somewhere else") from exc
        raise
    _fsync_directory(path.parent)


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .<name>.<pid>.<random>.tmp, as atomic_write names them


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its files
    return True


def remove_stale_temporaries(directory) -> list[Path]:
    """Delete the temporaries of atomic_write in `directory` whose writing process no longer runs (a kill -9
    during a write leaves one behind); return what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


class DirectoryLocked(RuntimeError):
    """Another process holds the lock of a run directory."""


@contextlib.contextmanager
def lock_directory(directory, part: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (a file `.lock` in it), or on one `part` of it (a file
    `.lock-PART`, e.g. a stage folder not created yet), for the duration; refuse at once, with
    DirectoryLocked, if another process holds it. The operating system releases the lock when the process
    ends, however it ends, so a killed run never leaves a stale lock."""
    import fcntl  # POSIX only; tinymoe's command-line runs are tested on Linux

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / (".lock" if part is None else f".lock-{part}")
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            what = directory if part is None else directory / part
            raise DirectoryLocked(
                f"{what} is in use by {holder}: wait for that run to finish, or pass another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}\n")
        f.flush()
        try:
            yield lock_path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def atomic_write_text(path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not possible on every platform or file system."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
