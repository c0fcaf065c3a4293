"""JPEG frames: their size from the header alone, and decoding (one frame with Pillow, a clip's frames in one
call of torchvision's decoder). Used by the shard loader (``videomask.data``) and the scorer."""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image


def decode_jpeg(data) -> np.ndarray:
    """JPEG bytes -> uint8 [H, W, 3] through Pillow (libjpeg-turbo): one frame, any JPEG Pillow reads."""
    with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:  # no sniffing
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def decode_frames(jpegs: list[bytes]) -> torch.Tensor:
    """The JPEG frames of a clip -> uint8 [T, 3, H, W] (channels-last memory) in one call of torchvision's libjpeg-turbo decoder
    (the same pixels as Pillow: both are libjpeg-turbo's default IDCT; as fast as Pillow frame by frame on the two
    2-core machines measured, an AMD EPYC and an Intel Xeon: ``bench/bench_loader.py``). A frame it
    cannot read (CMYK, unusual sampling) is decoded by Pillow instead; one that neither reads raises ValueError.
    torchvision marks its image decoders deprecated (0.29, for TorchCodec's): where they are gone, Pillow decodes."""
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode
    except ImportError:
        tv_decode = None
    try:
        if tv_decode is None:
            raise RuntimeError("no torchvision decoder")
        with warnings.catch_warnings():  # the deprecation notice, once per call otherwise
            warnings.simplefilter("ignore", DeprecationWarning)
            frames = tv_decode([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs],
                               mode=ImageReadMode.RGB)
    except RuntimeError:
        frames = []
        for b in jpegs:
            try:
                frames.append(torch.from_numpy(decode_jpeg(b)).permute(2, 0, 1))
            except (OSError, ValueError, SyntaxError) as e:
                raise ValueError(f"{type(e).__name__}: {e}") from None
    if len({tuple(f.shape) for f in frames}) > 1:
        raise ValueError("its frames decode to different sizes")
    # [T, 3, H, W] over channels-last memory, as the loader has always given (the model's first layers then
    # round as they always did: a change of layout alone moved the demo's table); filled frame by frame,
    # which is also faster than torch.stack here
    out = torch.empty(len(frames), *frames[0].shape[1:], 3, dtype=torch.uint8)
    for t, f in enumerate(frames):
        out[t].copy_(f.permute(1, 2, 0))
    return out.permute(0, 3, 1, 2)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, without decoding (a few microseconds: the markers are
    walked up to the first start-of-frame). ValueError when ``data`` is not a JPEG or its header breaks off."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("does not start with a JPEG marker")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"a marker is missing at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _SOF:
            if i + 9 > n:
                break
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            raise ValueError("has no frame header before its image data")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise ValueError("its header breaks off")
