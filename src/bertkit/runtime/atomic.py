"""Writing files and directories so that a crash, a kill or a full disk never leaves a half-written one.

Every writer in bertkit (snapshots, converted checkpoints, records, shards, SQuAD window caches) goes through
`atomic_output`: the body writes to a temporary sibling, `.NAME.tmp-HOST-PID`; on success every file under it and
the folder itself are fsynced, then it is renamed to NAME and the parent folder fsynced, so after a power cut NAME
is either the old whole thing or the new whole thing. A directory that already exists is first renamed aside to
`.NAME.old-HOST-PID` (a directory cannot be replaced by one rename) and removed only once the new one is in place.

A kill -9 leaves the temporary (or, in the instant between the two renames, the `.old-`) sibling behind;
`remove_stale` clears them at the next start: only names of this pattern, only this host's, and only when the
process that wrote them is gone (the host name is in the name because on a shared file system a PID means
nothing elsewhere). An `.old-` directory whose NAME is missing is renamed back, so the previous copy survives.

Errors are `OutputError` (a ValueError: the CLI prints it as one line): a full disk names the directory, the
bytes needed and the bytes free (`DiskFullError`), before writing when the size is known (`check_free_space`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# `.NAME.tmp-HOST-PID` / `.NAME.old-HOST-PID`; HOST may hold dashes and dots, the PID is the last number.
STALE = re.compile(r"^\.(?P<name>.+?)\.(?P<kind>tmp|old)-(?P<host>.+)-(?P<pid>\d+)$")
FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputError(ValueError):
    """A file or directory could not be written (the message names it and says why)."""


class DiskFullError(OutputError):
    """Not enough free space: the message names the directory, the bytes needed and the bytes free."""


def _host() -> str:
    # Dashes are kept (STALE's PID is the last number); a separator in a host name would make a path.
    return socket.gethostname().replace(os.sep, "_") or "localhost"


def temp_name(final: Path, kind: str = "tmp") -> Path:
    """The hidden sibling `final` is written as (kind "tmp") or moved aside to (kind "old")."""
    return final.with_name(f".{final.name}.{kind}-{_host()}-{os.getpid()}")


def _mb(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:,.1f} MiB)"


def free_bytes(directory: Path) -> int:
    """Bytes this user may still write in `directory` (or its nearest existing parent)."""
    d = Path(directory).absolute()
    while not d.exists() and d != d.parent:
        d = d.parent
    return shutil.disk_usage(d).free


def check_free_space(directory: str | os.PathLike, need: int, what: str = "the output") -> None:
    """DiskFullError before any byte is written when `directory` has less than `need` bytes free."""
    free = free_bytes(Path(directory))
    if free < need:
        raise DiskFullError(
            f"not enough space in {directory} for {what}: it needs {_mb(need)}, {_mb(free)} are free; "
            f"free some space or choose another directory"
        )


def open_for_write(path: str | os.PathLike) -> BinaryIO:
    """Open a new file for writing (one function, so that tests can make every writer's writes fail)."""
    return open(path, "wb")  # noqa: SIM115 - the caller closes it


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a directory (the folder entries too: a rename needs them)."""
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(Path(root) / name)
            _fsync(Path(root))
    else:
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; the data itself was synced
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EISDIR):
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def refuse_existing(
    paths, flag: str | None = None, *, overwrite: bool = False, elsewhere: str = "", error: type = ValueError
) -> None:
    """The one overwrite rule: what a command would write over is refused before any work, unless `overwrite`
    (the user passed `flag`). The error names every existing path and the way on: pass `flag`, or (no flag
    replaces them) remove them or choose another `elsewhere` (a flag naming the output)."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if not existing or overwrite:
        return
    one = len(existing) == 1
    them = "it" if one else "them"
    way = f"pass {flag} to replace {them}" if flag else f"remove {them} or choose another {elsewhere or 'output'}"
    raise error(f"{', '.join(existing)} already {'exists' if one else 'exist'}; {way}")


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, *, overwrite: bool = True, need_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary sibling path of `final` (not created: the body makes a file or a folder there); on
    success fsync it and rename it to `final`; on any failure remove it and leave `final` as it was.

    `need_bytes` > 0: check the free space first. `overwrite=False`: an existing `final` is an OutputError.
    An OSError while writing becomes an OutputError naming `final` (DiskFullError when the disk is full).
    """
    final = Path(final)
    if not overwrite:
        refuse_existing([final], "--force", error=OutputError)
    final.parent.mkdir(parents=True, exist_ok=True)
    if need_bytes:
        check_free_space(final.parent, need_bytes, str(final))
    tmp = temp_name(final)
    _remove(tmp)
    kept = f"{final} is unchanged" if final.exists() else f"nothing is left at {final}"
    try:
        yield tmp
        fsync_tree(tmp)
        _replace(tmp, final)
    except OSError as e:
        written = _size(tmp)
        _remove(tmp)
        if e.errno in FULL:
            raise DiskFullError(
                f"no space left in {final.parent} while writing {final.name}: {_mb(written)} written, at least "
                f"{_mb(max(need_bytes, written))} needed, {_mb(free_bytes(final.parent))} free; "
                f"{kept} (the partial copy was removed)"
            ) from None
        if e.filename is not None and not str(e.filename).startswith(str(tmp)):
            raise  # not a write of ours (an input the body reads): its own message says what
        raise OutputError(f"cannot write {final}: {e.strerror or e}; {kept}") from None
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp: Path, final: Path) -> None:
    """Move the whole `tmp` to `final`; a directory in the way (or a file where a directory goes) is moved aside
    first and removed after; a file replaces a file in one rename."""
    if final.exists() and not final.is_symlink() and (final.is_dir() or tmp.is_dir()):
        old = temp_name(final, "old")
        _remove(old)
        os.replace(final, old)  # from here until the next rename the previous copy lives at `old`
        os.replace(tmp, final)
        _fsync(final.parent)
        _remove(old)
    else:
        os.replace(tmp, final)
        _fsync(final.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale(directory: str | os.PathLike) -> list[Path]:
    """Clear what killed writers left in `directory`: this host's `.NAME.tmp-HOST-PID` whose PID is gone are
    removed; an `.NAME.old-HOST-PID` is renamed back to NAME when NAME is missing, else removed. Returns what was
    removed or restored. Other hosts' and running processes' files are left alone."""
    d = Path(directory)
    if not d.is_dir():
        return []
    done = []
    for p in sorted(d.iterdir()):
        m = STALE.match(p.name)
        if not m or m["host"] != _host() or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        final = d / m["name"]
        if m["kind"] == "old" and not final.exists():
            os.replace(p, final)
        else:
            _remove(p)
        done.append(p)
    return done
