"""Opening the files mono_quant reads: regular files only, never blocking.

Opening a FIFO for reading waits for a writer forever, and a device or a folder is never a
saved model. ``open_regular`` opens without blocking (``O_NONBLOCK``) and checks what it
opened with ``fstat``, so a path swapped after a check cannot slip through either.

>>> with open_regular("model.safetensors") as handle:
...     magic = handle.read(8)
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotARegularFileError(OSError):
    """``path`` exists but is a folder, FIFO, device or socket, not a regular file."""


def open_regular(path: str | os.PathLike[str], what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading; ``FileNotFoundError`` when it does not exist and
    ``NotARegularFileError`` (an OSError) when it is not a regular file. ``what`` names the
    file in messages ("config file").

    >>> open_regular("/dev/null")
    Traceback (most recent call last):
    NotARegularFileError: /dev/null: is a character device, not a regular file; pass the path of a file
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such {what}; check the path") from None
    except IsADirectoryError:  # Windows cannot open a folder
        raise NotARegularFileError(_not_regular(name, "a folder", what)) from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotARegularFileError(_not_regular(name, kind, what))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike[str], what: str = "file") -> None:
    """The errors of ``open_regular`` without opening (``os.stat`` never blocks)."""
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such {what}; check the path") from None
    kind = _kind(mode)
    if kind is not None:
        raise NotARegularFileError(_not_regular(name, kind, what))


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "of an unknown kind")


def _not_regular(name: str, kind: str, what: str) -> str:
    return f"{name}: is {kind}, not a regular file; pass the path of a {what}"


PARTIAL_SUFFIXES = (".partial", ".data.partial")


def remove_stale_partials(dst: str | os.PathLike[str]) -> None:
    """Remove ``<dst>.partial`` and ``<dst>.data.partial``, the scratch files of a save to
    ``dst`` that was killed (SIGKILL, power loss) before it could clean up. A link is removed,
    never written through; a folder in the way is an error that says so.

    >>> remove_stale_partials("model.safetensors")
    """
    for suffix in PARTIAL_SUFFIXES:
        scratch = os.fspath(dst) + suffix
        if os.path.isdir(scratch) and not os.path.islink(scratch):
            raise IsADirectoryError(f"{scratch}: a folder is where the save to {os.fspath(dst)} writes its scratch "
                                    "file; remove or rename it")
        try:
            os.unlink(scratch)
        except FileNotFoundError:
            pass
