"""The shard reader's tar parser against Python's tarfile, on every layout tarfile writes."""
import io
import tarfile

import pytest

from videomask import tarstream


def write(path, fmt, compress=""):
    with tarfile.open(path, f"w:{compress}", format=fmt) as tar:
        def add(name, data=None, kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        add("a.json", b'{"k": 1}')
        add("a.f000.jpg", bytes(range(256)) * 3)  # not a multiple of 512: padding
        add("b.txt", b"")  # empty member
        add("dir/" + "x" * 120 + ".txt", b"long name")  # a long name: prefix, GNU long name or pax path
        add("d" * 90 + "/" + "e" * 90 + ".txt", b"needs a prefix")
        add("caf\u00e9.txt", "été".encode())
        add("c.lnk", kind=tarfile.SYMTYPE, link="a.json")
        add("c.hard", kind=tarfile.LNKTYPE, link="a.json")
        add("folder", kind=tarfile.DIRTYPE)
        add("pipe", kind=tarfile.FIFOTYPE)
        add("z.bin", b"\xff" * 1024)
    return path


def reference(path):
    out = []
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            out.append((m.name, m.isreg(), tar.extractfile(m).read() if m.isreg() else None))
    return out


@pytest.mark.parametrize("fmt,compress", [(tarfile.USTAR_FORMAT, ""), (tarfile.GNU_FORMAT, ""),
                                          (tarfile.PAX_FORMAT, ""), (tarfile.PAX_FORMAT, "gz")])
def test_members_equal_tarfile(tmp_path, fmt, compress):
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold a 124-character file name: the rest still must agree
        path = tmp_path / "s.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            for name, data in [("a.json", b"{}"), ("d" * 90 + "/" + "e" * 90 + ".txt", b"prefix"), ("b", b"")]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        path = write(tmp_path / "s.tar", fmt, compress)
    got = [(n, p is None, d) for n, p, d in tarstream.members(path)]
    assert got == reference(path)
    kinds = {n: p for n, p, _ in tarstream.members(path)}
    if fmt != tarfile.USTAR_FORMAT:
        assert kinds["c.lnk"] == "symbolic link" and kinds["c.hard"] == "hard link"
        assert kinds["folder"] == "folder" and kinds["pipe"] == "device or fifo"


def test_broken_files(tmp_path):
    path = write(tmp_path / "s.tar", tarfile.GNU_FORMAT)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:512 + 100])  # inside the first member's data
    with pytest.raises(tarfile.ReadError, match="ends inside a member"):
        list(tarstream.members(cut))
    cut.write_bytes(data[:1024 + 300])  # inside the second header
    it = tarstream.members(cut)
    assert next(it)[0] == "a.json"
    with pytest.raises(tarfile.ReadError, match="ends inside a member header"):
        list(it)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:1024] + bytes([data[1024] ^ 1]) + data[1025:])  # a flipped bit in the second header
    with pytest.raises(tarfile.ReadError, match="corrupt"):
        list(tarstream.members(bad))
    text = tmp_path / "t.tar"
    text.write_bytes(b"not a tar at all\n" * 100)
    with pytest.raises(tarfile.ReadError, match="not a tar file"):
        list(tarstream.members(text))
    empty = tmp_path / "e.tar"
    empty.write_bytes(b"")
    with pytest.raises(tarfile.ReadError, match="empty"):
        list(tarstream.members(empty))
    empty.write_bytes(bytes(1024))  # an archive with no members
    assert list(tarstream.members(empty)) == []
