"""Reading the model repository's files as untrusted input.

Anything may lie in a version folder: a FIFO that would block open() for ever, a device that
never ends, a symbolic link leading anywhere, a file rewritten while it is read. Only regular
files are read, never through a symbolic link, each under a size limit, in one pass, and the
bytes returned are the ones that were read: hashing and loading them checks and serves the same
bytes. Failures raise UnsafeFile with a one-line reason that names the file, not the disk path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

CHUNK = 64 << 20


class UnsafeFile(Exception):
    """A file of the repository that is not read; the message says why, in one line."""


def describe(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def read(path: Path, limit: int) -> bytes:
    """The whole content of the regular file at `path`, at most `limit` bytes."""
    name = path.name
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise UnsafeFile(f"{name} is missing") from None
    except OSError as error:
        raise UnsafeFile(f"{name} cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(before.st_mode):
        raise UnsafeFile(f"{name} is {describe(before.st_mode)}, not a regular file")
    if before.st_size > limit:
        raise UnsafeFile(f"{name} is larger than the limit of {limit} bytes")
    try:
        # O_NONBLOCK and O_NOFOLLOW: should the name be swapped for a FIFO or a link since the
        # lstat, open() returns at once or fails instead of blocking or following it.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFile(f"{name} is a symbolic link, not a regular file") from None
        raise UnsafeFile(f"{name} cannot be read ({error.strerror})") from None
    try:
        opened = os.fstat(descriptor)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino) or opened.st_size > limit:
            raise UnsafeFile(f"{name} changed while it was read")
        chunks, left = [], min(opened.st_size, limit) + 1  # one byte more tells a file that grew
        while left > 0:
            chunk = os.read(descriptor, min(left, CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        after = os.fstat(descriptor)
    except OSError as error:
        raise UnsafeFile(f"{name} cannot be read ({error.strerror})") from None
    finally:
        os.close(descriptor)
    if len(data) != opened.st_size or (after.st_size, after.st_mtime_ns) != (len(data), opened.st_mtime_ns):
        raise UnsafeFile(f"{name} changed while it was read")
    return data
