"""JPEG frames: their size from the header alone, and decoding (one frame with Pillow, a clip's frames in one
call of torchvision's decoder, or a batch's frames on the training device). Used by the shard loader
(``videomask.data``, ``videomask.loader``) and the scorer."""
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
                frames.append(torch.from_numpy(decode_jpeg(b).copy()).permute(2, 0, 1))  # Pillow's array is read-only
            except (OSError, ValueError, SyntaxError) as e:
                raise ValueError(f"{type(e).__name__}: {e}") from None
    if len({tuple(f.shape) for f in frames}) > 1:
        raise ValueError("its frames decode to different sizes")
    # [T, 3, H, W] over channels-last memory, as the loader has always given (the model's first layers then
    # round as they always did: a change of layout alone moved the demo's table); filled frame by frame,
    # which is also faster than torch.stack here
    return _channels_last(frames, torch.empty(len(frames), *frames[0].shape[1:], 3, dtype=torch.uint8))


def _channels_last(frames: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Decoded frames ([3, H, W] each) into ``out`` ([T, H, W, 3]); returns it as [T, 3, H, W]."""
    for t, f in enumerate(frames):
        out[t].copy_(f.permute(1, 2, 0))
    return out.permute(0, 3, 1, 2)


class EncodedFrames:
    """A clip's JPEG frames, not yet decoded (``data.decode=device``): ``shape`` is that of the decoded clip,
    [T, 3, H, W] (from the first frame's header; ``Validate`` checked every frame's), so the collator batches it
    like decoded frames. The frames stay ``bytes``: they leave a DataLoader worker pickled in one piece (a
    tensor per frame would each go through shared memory with a file descriptor of its own: 40x slower)."""

    __slots__ = ("jpegs", "shape")

    def __init__(self, jpegs: list[bytes]):
        w, h = jpeg_size(jpegs[0])
        self.jpegs = [bytes(b) for b in jpegs]
        self.shape = torch.Size((len(jpegs), 3, h, w))


class EncodedBatch:
    """A batch's clips as JPEGs (``EncodedFrames`` or None per row), decoded by ``decode(device)`` in the training
    process: on CUDA by nvjpeg, all the batch's frames in one call (torchvision's batched ``decode_jpeg``), which
    frees the loader's CPU workers of the decoding. Stands in the batch where ``frames`` would be."""

    def __init__(self, rows: list[EncodedFrames | None], frames: int, size: tuple[int, int]):
        self.rows, self.frames, self.size = rows, frames, size

    def __len__(self):
        return len(self.rows)

    def decode(self, device) -> tuple[torch.Tensor, dict[int, str]]:
        """uint8 [B, T, 3, H, W] on ``device`` (zeros where a row has fewer frames or none), and the rows that could
        not be decoded ({row: why}; their frames are zeros: the caller drops them). The memory layout is the
        collator's for decoded frames: channels last when every row has all its frames, else contiguous. A row
        the device's decoder refuses (nvjpeg does not read every JPEG libjpeg-turbo does) is decoded on the CPU
        (``decode_frames``) and copied over, with a warning; only a row neither reads is bad. Running out of device
        memory is raised, not retried. On the CPU the pixels are those of ``decode_frames`` (the same decoder);
        nvjpeg's IDCT may differ from libjpeg-turbo's by a level or two."""
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode

        device = torch.device(device)
        h, w = self.size
        out = torch.zeros(len(self.rows), self.frames, h, w, 3, dtype=torch.uint8, device=device)
        bad: dict[int, str] = {}

        def dec(jpegs):
            with warnings.catch_warnings():  # torchvision's deprecation notice of its image decoders
                warnings.simplefilter("ignore", DeprecationWarning)
                return tv_decode([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs],
                                 mode=ImageReadMode.RGB, device=device)
        flat = [j for r in self.rows if r is not None for j in r.jpegs]
        try:
            decoded = dec(flat) if flat else []
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            decoded = None  # some frame it cannot read: row by row, to find which
        i = 0
        for b, r in enumerate(self.rows):
            if r is None:
                continue
            n = len(r.jpegs)
            try:
                if decoded is not None:
                    frames = decoded[i:i + n]
                else:
                    try:
                        frames = dec(r.jpegs)
                    except torch.OutOfMemoryError:
                        raise
                    except RuntimeError as e:  # e.g. CMYK, which nvjpeg does not read: the CPU decoder's fallbacks
                        frames = list(decode_frames(r.jpegs).to(device))
                        if device.type != "cpu":
                            warnings.warn(f"a clip's JPEGs were decoded on the CPU: the {device.type} decoder refused "
                                          f"them ({str(e)[:150]})", RuntimeWarning, stacklevel=2)
                if any(tuple(f.shape) != (3, h, w) for f in frames):
                    raise ValueError(f"a frame decodes to {tuple(frames[0].shape)}, not (3, {h}, {w})")
                _channels_last(frames, out[b])
            except ValueError as e:
                bad[b] = str(e)[:200]
            i += n
        frames = out.permute(0, 1, 4, 2, 3)
        full = all(r is not None and r.shape[0] == self.frames for r in self.rows)
        return (frames if full else frames.contiguous()), bad


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
