import io
import tarfile

import pytest
import torch

from videomask import data


def test_loader_tensors(tiny_shards):
    got = list(data.dataset(tiny_shards["general"]))
    assert len(got) == 4
    s = got[0]
    assert s["frames"].dtype == torch.uint8 and s["frames"].shape == (4, 3, 64, 64)
    assert isinstance(s["text"], str) and s["words"] and s["meta"]["split"] == "train"


def test_split_filter_and_empty_split(tiny_shards):
    n = {split: len(list(data.dataset(tiny_shards["target"], split))) for split in ("train", "val", "test")}
    assert sum(n.values()) == 8 and all(v >= 1 for v in n.values())
    with pytest.raises(FileNotFoundError, match="for split 'nope'"):
        data.dataset(tiny_shards["target"], "nope")


def _insert_member(src, dst, name, payload):
    """Copy the shard ``src`` to ``dst`` with one more member ``name``, placed with its sample's files."""
    key = name.split(".")[0]
    with tarfile.open(src) as t_in, tarfile.open(dst, "w") as t_out:
        members = t_in.getmembers()
        last = max(k for k, m in enumerate(members) if m.name.startswith(key + "."))
        for k, m in enumerate(members):
            t_out.addfile(m, t_in.extractfile(m))
            if k == last:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                t_out.addfile(info, io.BytesIO(payload))


def test_pickle_member_is_refused(tiny_shards, tmp_path):
    src = sorted(tiny_shards["general"].glob("*.tar"))[0]
    first_key = tarfile.open(src).getnames()[0].split(".")[0]
    bad = tmp_path / "evil.tar"
    # a pickle that would run a shell command if it were ever unpickled
    _insert_member(src, bad, f"{first_key}.pyd", b"cos\nsystem\n(S'touch /tmp/videomask-pwned'\ntR.")
    with pytest.raises(data.UnsafeMemberError, match=r"'\.pyd'.*refuses to decode"):
        list(data.dataset(bad, handler=data.ErrorCounter(strict=True)))
    counter = data.ErrorCounter(verbose=False)
    got = [s["key"] for s in data.dataset(bad, handler=counter)]
    assert counter.counts == {"unsafe_member": 1}
    assert got == [s["key"] for s in data.dataset(src)][1:]  # only the poisoned sample is dropped


def test_truncated_tar_is_skipped_and_counted(tiny_shards, tmp_path):
    shards = sorted(tiny_shards["target"].glob("train-*.tar"))
    assert len(shards) >= 2
    whole = [s["key"] for s in data.dataset([str(p) for p in shards])]
    cut = tmp_path / shards[0].name
    raw = shards[0].read_bytes()
    # cut inside a member's data (a cut between members, or inside a header, reads as a clean end)
    middle = tarfile.open(shards[0]).getmembers()[-4]
    cut.write_bytes(raw[: middle.offset_data + middle.size // 2])
    urls = [str(cut)] + [str(p) for p in shards[1:]]
    with pytest.raises(Exception):
        list(data.dataset(urls, handler=data.ErrorCounter(strict=True)))
    counter = data.ErrorCounter(verbose=False)
    got = [s["key"] for s in data.dataset(urls, handler=counter)]
    assert counter.skipped >= 1
    assert set(got) < set(whole) and len(got) >= len(whole) - 3  # only the cut shard's tail is lost
    assert all(k in whole for k in got)


def test_dataloader_workers_see_each_sample_once(tiny_shards):
    pipe = data.dataset(tiny_shards["target"])
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=2)
    keys = [s["key"] for s in loader]
    assert len(keys) == len(set(keys)) == 8


def test_resampled_mode_never_runs_dry(tiny_shards):
    pipe = data.dataset(tiny_shards["general"], resampled=True, seed=3)
    it = iter(pipe)
    keys = [next(it)["key"] for _ in range(25)]
    assert len(keys) == 25 and set(keys) <= {s["key"] for s in data.dataset(tiny_shards["general"])}


def test_missing_shards_are_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        data.dataset(tmp_path)
