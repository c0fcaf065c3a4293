"""``data.decode=device``: the loader's workers pass JPEGs on undecoded and each batch is decoded in the training
process, on its device (nvjpeg on CUDA). On the CPU the same path runs with the CPU decoder, so these tests hold it
to the pixels, the weights and the skip counts of decoding in the workers."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_reliability import copies, folder_of, train_samples
from test_train import common

from videomask.config import ConfigError, load_config
from videomask.jpeg import EncodedBatch, EncodedFrames, decode_frames
from videomask.train import main as train_main


def jpeg(seed: int, size=(24, 32)) -> bytes:
    arr = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG")
    return b.getvalue()


def cut_after_header(data: bytes) -> bytes:
    """A JPEG whose header reads (its size is known, Validate passes it) and whose image data is gone."""
    return data[:data.index(b"\xff\xc0") + 19]


def test_a_batch_decodes_to_the_workers_pixels_and_layout():
    a, b = [jpeg(i) for i in range(3)], [jpeg(10 + i) for i in range(2)]
    batch = EncodedBatch([EncodedFrames(a), None, EncodedFrames(b)], 3, (24, 32))
    frames, bad = batch.decode("cpu")
    assert bad == {} and frames.shape == (3, 3, 3, 24, 32) and frames.dtype == torch.uint8
    ref = torch.stack([decode_frames(a), torch.zeros(3, 3, 24, 32, dtype=torch.uint8),
                       torch.cat([decode_frames(b), torch.zeros(1, 3, 24, 32, dtype=torch.uint8)])])
    assert torch.equal(frames, ref)
    # the memory layout of the collator's worker-decoded frames (the model's first layers round by it): contiguous
    # when rows are padded, channels last when every row has all its frames
    assert frames.is_contiguous()
    full, _ = EncodedBatch([EncodedFrames(a)] * 2, 3, (24, 32)).decode("cpu")
    assert full.stride() == torch.stack([decode_frames(a)] * 2).stride() and not full.is_contiguous()


def test_a_row_no_decoder_reads_is_named_and_the_others_decode():
    good, broken, half = [jpeg(1), jpeg(2)], [jpeg(3), cut_after_header(jpeg(4))], jpeg(5)
    half = half[:len(half) // 2]  # its scan breaks off half-way
    frames, bad = EncodedBatch([EncodedFrames(good), EncodedFrames(broken), EncodedFrames([jpeg(6), half])],
                               2, (24, 32)).decode("cpu")
    assert sorted(bad) == [1, 2] and "cannot" in bad[1]
    assert torch.equal(frames[0], decode_frames(good)) and not frames[1:].any()


def test_the_workers_pass_jpegs_and_the_loader_decodes_them(scored_shards, tiny_anchors, tmp_path):
    from videomask.collate import MaskingCollator
    from videomask.loader import make_loader
    from videomask.masking import MaskingConfig
    from videomask.model import load_tokenizer

    cfg = load_config([], common(scored_shards, tiny_anchors, tmp_path, "data.decode=device", "data.workers=1"))
    collate = MaskingCollator(load_tokenizer(cfg.model), MaskingConfig("random"), patch_grid=(4, 4))
    loader = make_loader(cfg, cfg.data.train, "train", collate, 0, 1, train=True, device="cpu")
    raw = [b for b in loader.dataloader if "input_ids" in b]  # what leaves the worker: undecoded
    assert raw and all(isinstance(b["frames"], EncodedBatch) for b in raw)
    batches = list(loader)
    assert [b["keys"] for b in batches] == [b["keys"] for b in raw]
    assert all(b["frames"].dtype == torch.uint8 and b["frames"].shape[:2] == b["frame_valid"].shape for b in batches)
    with pytest.raises(ConfigError, match="split_by=shards"):
        load_config([], ["data.decode=device", "data.split_by=samples"])


def test_decode_on_the_device_trains_the_same_weights(scored_shards, tiny_anchors, tmp_path):
    args = ["optim.max_steps=4", "data.batch_size=2"]
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "workers", *args)) == 0
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "device", *args, "data.decode=device",
                             "data.workers=1")) == 0
    a, b = load_file(tmp_path / "workers" / "model.safetensors"), load_file(tmp_path / "device" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="data.decode"):
        load_config([], ["data.decode=gpu"])


@pytest.mark.parametrize("cache", [False, True])
def test_a_frame_that_cannot_be_decoded_is_skipped_and_counted_once(scored_shards, tiny_anchors, tmp_path, capsys,
                                                                     cache):
    """As the workers skip and count it; with the cache (which keeps samples as JPEGs when the device decodes them)
    the bad sample is dropped from the cache, not counted again every epoch (which would fail the run)."""
    damage = lambda m: {**m, "f001.jpg": cut_after_header(m["f001.jpg"])}  # noqa: E731
    folder = folder_of(tmp_path / "data", copies(train_samples(scored_shards), 12, 1, damage))
    for decode in ("workers", "device"):
        out = tmp_path / decode
        assert train_main(common(folder, tiny_anchors, out, "optim.max_steps=7", "data.max_skip_fraction=0.2",
                                 f"data.cache={str(cache).lower()}", f"data.decode={decode}")) == 0
        printed = capsys.readouterr().out
        epochs = [(e["samples_read"], e["samples_skipped"], e.get("skipped_corrupt_frame")) for e in
                  (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()) if "samples_read" in e]
        # the sample named, each time it was read: once with the cache; every epoch without (the last one, which the
        # step limit ended, has no epoch report)
        n = printed.count("skipped (corrupt_frame:")
        assert "-c0" in printed and (n == 1 if cache else n >= len(epochs)), printed
        assert len(epochs) >= 2 and epochs[0] == (12, 1, 1), (decode, epochs)
        assert all(e == ((0, 0, None) if cache else (12, 1, 1)) for e in epochs[1:]), (decode, epochs)
