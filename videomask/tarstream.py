"""Reading a tar shard member by member, in order, with few Python objects per member.

``tarfile`` builds a ``TarInfo`` per member and parses every header field in Python (about 60 us a member,
a fifth of the loader's time next to JPEG decoding). ``members`` parses only what a shard reader needs:
the name (ustar prefix, GNU long names and pax ``path`` included), the size (octal, base-256 or pax) and
the type, and checks each header's checksum. Compressed tars (gzip, bzip2, xz) go through ``tarfile``.

A member that is not a regular file (link, folder, device, fifo, sparse file, unknown type) comes out with
a ``problem`` and no data, so a reader can refuse it by name instead of dropping it unseen. A file that is
not a tar, or that breaks off inside a header or member, raises ``tarfile.ReadError`` after the members
before the break.
"""
from __future__ import annotations

import tarfile
from collections.abc import Iterator

from . import urls

BLOCK = 512
#: the largest member read into memory (a frame, a transcript, a score grid: megabytes); a header that claims more
#: is refused by name and its data skipped, never allocated
MAX_MEMBER = 1 << 30
REGULAR = (b"0", b"\0", b"7")  # file, old-style file, contiguous file (read as a file, as tarfile does)
KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "device or fifo", b"4": "device or fifo",
         b"5": "folder", b"6": "device or fifo", b"S": "sparse file"}
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def members(path) -> Iterator[tuple[str, str | None, bytes | None]]:
    """``(name, problem, data)`` of each member of the tar at ``path`` (a path or a ``videomask.urls`` URL): ``problem`` None and ``data`` its bytes
    for a regular file; otherwise what the member is (``"symbolic link"`` ...) and None."""
    with urls.open_read(path) as f:  # a local file, or a stream (pipe:, http(s)://, s3:// ...)
        if f.peek(6)[:6].startswith(COMPRESSED):
            yield from _with_tarfile(f)
        else:
            yield from _ustar(f)


def _ustar(f) -> Iterator[tuple[str, str | None, bytes | None]]:
    long_name = pax = None
    first = True
    while True:
        header = f.read(BLOCK)
        if not header and first:
            raise tarfile.ReadError("the file is empty")
        if not header:  # a stream cut between two members would otherwise pass for a whole shard
            raise tarfile.ReadError("the file ends without the tar's end-of-archive blocks: cut short?")
        if header == bytes(BLOCK):  # the end (tarfile also stops at the first zero block)
            return
        if len(header) < BLOCK:
            raise tarfile.ReadError("the file ends inside a member header")
        if not _checksum_ok(header):
            raise tarfile.ReadError("not a tar file" if first else "a member header is corrupt (bad checksum)")
        first = False
        kind = header[156:157]
        size = _number(header[124:136])
        if pax and "size" in pax:
            size = int(pax["size"])
        if kind in (b"x", b"g", b"L", b"K"):  # extended headers: their data describes the next member
            if size > MAX_MEMBER:
                raise tarfile.ReadError(f"an extended header claims {size:,} bytes")
            data = _data(f, size)
            if kind == b"x":
                pax = _pax(data)
            elif kind == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX: a prefix holds the name's folders
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        name = name.decode("utf-8", "surrogateescape")
        name = (pax or {}).get("path") or long_name or name
        long_name = pax = None
        if kind in REGULAR and size > MAX_MEMBER:
            _skip(f, size)
            yield name, f"a member of {size:,} bytes, more than the limit of {MAX_MEMBER:,}", None
        elif kind in REGULAR:
            yield name, None, _data(f, size)
        else:
            _skip(f, size)
            yield name.rstrip("/") if kind == b"5" else name, KINDS.get(kind, f"unknown member type {kind!r}"), None


def _data(f, size: int) -> bytes:
    data = f.read(size)
    pad = -size % BLOCK
    if len(data) < size or (pad and len(f.read(pad)) < pad):
        raise tarfile.ReadError("the file ends inside a member")
    return data


def _skip(f, size: int, chunk: int = 1 << 20):
    """Read past ``size`` bytes of member data and its padding, a chunk at a time."""
    left = size + (-size % BLOCK)
    while left:
        got = len(f.read(min(chunk, left)))
        if not got:
            raise tarfile.ReadError("the file ends inside a member")
        left -= got


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256, for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise tarfile.ReadError(f"a member header has a size that is not a number ({field!r})") from None


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _number(header[148:156])
    except tarfile.ReadError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)  # old tars: signed bytes
    return stored == signed


def _pax(data: bytes) -> dict:
    """``"%d key=value\\n"`` records."""
    out, i = {}, 0
    while i < len(data):
        length, _, rest = data[i:].partition(b" ")
        if not length.isdigit():
            raise tarfile.ReadError("a pax header is corrupt")
        record = data[i:i + int(length)]
        key, _, value = record[len(length) + 1:].rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i += int(length)
    return out


def _with_tarfile(f) -> Iterator[tuple[str, str | None, bytes | None]]:
    with tarfile.open(fileobj=f, mode="r|*") as tar:
        for m in tar:
            if m.isreg() and m.size > MAX_MEMBER:
                yield m.name, f"a member of {m.size:,} bytes, more than the limit of {MAX_MEMBER:,}", None
            elif m.isreg():
                yield m.name, None, tar.extractfile(m).read()
            else:
                kind = ("symbolic link" if m.issym() else "hard link" if m.islnk() else "folder" if m.isdir()
                        else "device or fifo" if m.isdev() or m.isfifo() else f"member type {m.type!r}")
                yield m.name, kind, None
