"""Reading and writing gradflow's files safely: atomic writes that keep permissions, capped reads.

* :func:`write_atomic` writes a temporary file next to the target and renames it over the target, so
  readers see the old file or the whole new one. The new file gets the existing file's mode (a 0600 record
  stays 0600) or, for a new file, the mode the process umask gives — read by creating the temporary file
  with 0666, never by changing the umask (which would race with other threads). A read-only target is
  refused, not replaced. Temporaries a killed run left behind (``.<name>.<random>.gradflow.tmp``, older than
  this process) are removed on the next write to the same path; nothing else is touched.
* :func:`check_writable` proves up front that a path can be written (by creating and removing a temporary
  file there), so a long run does not end in a traceback.
* :func:`same_file` tells whether an output would overwrite one of the inputs.
* :func:`read_text_capped` reads at most a fixed number of bytes (``/dev/zero`` never fills memory).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path

from .errors import GradflowError

#: Files gradflow reads (records, specs) are at most this large.
MAX_READ_BYTES = 256 * 1024 * 1024
_TMP_SUFFIX = ".gradflow.tmp"
_STARTED = time.time()


class FileError(GradflowError):
    """A file cannot be read or written as asked (exit code 2 in the CLI)."""


def _temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")


def _remove_stale_temporaries(target: Path) -> None:
    """Remove our own temporaries for ``target`` that a killed run left behind (older than this process)."""
    prefix = f".{target.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent or "."):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
                continue
            middle = name[len(prefix):-len(_TMP_SUFFIX)]
            if len(middle) != 12 or any(c not in "0123456789abcdef" for c in middle):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < _STARTED:
                    os.unlink(entry.path)


def _real_target(path: str | os.PathLike[str]) -> Path:
    """Where a write to ``path`` must land: through symlinks (a link stays a link, its file is updated)."""
    return Path(os.path.realpath(path))


def _refuse_read_only(target: Path) -> int | None:
    """The existing target's permission bits; a read-only target is refused (root would replace it), and so
    is anything that is not a regular file (a device such as /dev/full, a pipe, a socket: renaming a file over
    it would replace the node itself)."""
    try:
        info = target.stat()
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        raise FileError(f"cannot write {target}: it is a directory. Give a file name.")
    if not stat.S_ISREG(info.st_mode):
        raise FileError(f"cannot write {target}: it is not a regular file (a device, pipe or socket). gradflow "
                        "writes its outputs to regular files only; give a file path.")
    if not info.st_mode & stat.S_IWUSR:
        raise FileError(f"cannot write {target}: the file is read-only. Make it writable (chmod u+w) or choose "
                        "another path; nothing was written.")
    return stat.S_IMODE(info.st_mode)


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part.

    Raises:
        FileError: the folder does not exist, the target is read-only or a directory, or writing failed
            (disk full, permissions); nothing is left behind then.
    """
    target = _real_target(path)
    folder = target.parent
    if not folder.is_dir():
        raise FileError(f"cannot write {target}: the folder {folder} does not exist. Create it first.")
    mode = _refuse_read_only(target)
    _remove_stale_temporaries(target)
    tmp = _temporary_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides a new file's mode
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise FileError(f"cannot write {target}: {exc.strerror or exc}; nothing was written.") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


def check_writable(path: str | os.PathLike[str], what: str = "output") -> None:
    """Raise :class:`FileError` now if ``path`` could not be written later (folder, permissions, kind)."""
    target = _real_target(path)
    if target.is_dir():
        raise FileError(f"{what} {target} is a directory; give a file name in it.")
    if not target.parent.is_dir():
        raise FileError(f"{what} {target}: the folder {target.parent} does not exist. Create it first.")
    _refuse_read_only(target)
    probe = _temporary_name(target)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FileError(f"{what} {target}: cannot create files in {target.parent} ({exc.strerror or exc}). Choose a "
                        "writable folder.") from None


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (existing files by identity, others by resolved path)."""
    first, second = Path(a), Path(b)
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    except OSError:
        pass
    return first.resolve() == second.resolve()


def read_text_capped(path: str | os.PathLike[str], cap: int = MAX_READ_BYTES) -> str:
    """The UTF-8 text of ``path``, refusing files larger than ``cap`` bytes (and endless devices).

    Raises:
        FileNotFoundError: the file does not exist.
        FileError: the file is too large, is a directory, or is not UTF-8 text.
    """
    file = Path(path)
    if file.is_dir():
        raise FileError(f"{file} is a directory, not a file.")
    with open(file, "rb") as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise FileError(f"{file} is larger than {cap // (1024 * 1024)} MiB; gradflow reads no file that large.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
