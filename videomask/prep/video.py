"""Video decoding: decord first (fast random access), PyAV where decord is missing.

``open_video(path)`` checks the file and returns a reader with ``info`` and
``frames(indices) -> uint8 [n, H, W, 3]``. Every failure is a ``VideoError``
whose message names the file and what is wrong with it.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

try:  # decord ships wheels for x86-64 only
    import decord
except ImportError:  # pragma: no cover - exercised on platforms without decord
    decord = None

FRAME_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".mov")


class VideoError(DataError):
    """A video that cannot be used; the message names the file and the problem."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


class DecordReader:
    backend = "decord"

    def __init__(self, path: Path):
        self.path = path
        try:
            self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            n, fps = len(self._vr), float(self._vr.get_avg_fps())
            h, w = self._vr[0].shape[:2] if n else (0, 0)
        except Exception as e:  # decord raises its own DECORDError / RuntimeError
            raise VideoError(f"{path}: cannot be opened as a video: not a video file, or truncated or corrupt "
                             f"(decord: {_short(e)})") from None
        self.info = VideoInfo(n, fps, w, h)

    def frames(self, indices: list[int]) -> np.ndarray:
        try:
            return self._vr.get_batch(list(indices)).asnumpy()
        except Exception as e:
            raise VideoError(
                f"{self.path}: frames {indices[0]}..{indices[-1]} cannot be decoded ({_short(e)})") from None


class PyAVReader:
    """PyAV decoder: seeks to the key frame before the first wanted frame, then decodes forward.
    Slower than decord's random access, but everywhere, single-threaded and deterministic."""

    backend = "pyav"

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            with av.open(str(path)) as c:
                if not c.streams.video:
                    raise VideoError(f"{path}: has no video stream")
                s = c.streams.video[0]
                fps = float(s.average_rate or s.guessed_rate or 0)
                n = s.frames or int(round(float(c.duration or 0) / 1e6 * fps))
                w, h = s.codec_context.width, s.codec_context.height
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(f"{path}: cannot be opened as a video: not a video file, or truncated or corrupt "
                             f"(PyAV: {_short(e)})") from None
        self.info = VideoInfo(n, fps, w, h)

    def frames(self, indices: list[int]) -> np.ndarray:
        import av

        wanted, got = set(indices), {}
        try:
            with av.open(str(self.path)) as c:
                s = c.streams.video[0]
                s.codec_context.thread_count = 1  # frame threads report errors out of order
                t0 = s.start_time or 0
                c.seek(t0 + int(min(indices) / self.info.fps / s.time_base), stream=s, backward=True)
                for frame in c.decode(s):
                    i = round(float((frame.pts - t0) * s.time_base) * self.info.fps)
                    if i in wanted:
                        got[i] = frame.to_ndarray(format="rgb24")
                    if i >= max(indices):
                        break
        except Exception as e:
            raise VideoError(
                f"{self.path}: frames {indices[0]}..{indices[-1]} cannot be decoded ({_short(e)})") from None
        missing = sorted(wanted - set(got))
        if missing:
            raise VideoError(f"{self.path}: frames {missing[0]}..{missing[-1]} are missing (truncated video?)")
        return np.stack([got[i] for i in indices])


class FallbackReader:
    """decord, and PyAV for whatever decord fails on.

    decord's read-ahead thread makes its errors on damaged files racy: the same clip
    decodes in one run and fails in the next. A clip that decord cannot decode is
    decoded again with PyAV, so the outcome depends on the file alone and the
    shards stay identical from run to run.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self.primary = DecordReader(path)
        except VideoError as e:
            try:
                self.primary = PyAVReader(path)
            except VideoError:
                raise e from None
        self.info, self.backend = self.primary.info, self.primary.backend
        self.fallback = None

    def frames(self, indices: list[int]) -> np.ndarray:
        try:
            return self.primary.frames(indices)
        except VideoError:
            if self.primary.backend == "pyav":
                raise
            self.fallback = self.fallback or PyAVReader(self.path)
            return self.fallback.frames(indices)


class FrameFolderReader:
    """A video given as a folder of frames (TVQA's ``frames_hq/<show>_frames/<clip>/00001.jpg``):
    the images in name order, at a frame rate the dataset states (TVQA: 3 fps)."""

    backend = "frames"

    def __init__(self, path: Path, fps: float | None):
        if not fps or fps <= 0:
            raise VideoError(f"{path}: a folder of frames needs its frame rate (manifest field 'fps')")
        self.path = path
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTS)
        if not self.files:
            raise VideoError(f"{path}: the folder holds no frames ({', '.join(FRAME_EXTS)})")
        try:
            with Image.open(self.files[0]) as im:
                w, h = im.size
        except OSError as e:
            raise VideoError(f"{self.files[0]}: not a readable image ({_short(e)})") from None
        self.info = VideoInfo(len(self.files), float(fps), w, h)

    def frames(self, indices: list[int]) -> np.ndarray:
        out = []
        for i in indices:
            try:
                with Image.open(self.files[i]) as im:
                    img = im.convert("RGB")
            except OSError as e:
                raise VideoError(f"{self.files[i]}: frame {i} is not a readable image ({_short(e)})") from None
            if img.size != (self.info.width, self.info.height):
                raise VideoError(f"{self.files[i]}: frame {i} is {img.size[0]}x{img.size[1]}, the first frame "
                                 f"{self.info.width}x{self.info.height}")
            out.append(np.asarray(img))
        return np.stack(out)


def _short(e: Exception) -> str:
    """The first line of a decoder's message, without decord's '[12:00:00] /src/file.cc:42: ' prefixes."""
    msg = str(e).strip().splitlines()
    msg = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", msg[0]) if msg else type(e).__name__
    return msg[:200]


def open_video(path: Path, backend: str = "auto", fps: float | None = None):
    """Open ``path`` with ``auto`` (decord where installed, PyAV for what it fails on), ``decord`` or ``pyav``;
    a folder is read as frames at ``fps``."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderReader(path, fps)
    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    if backend == "decord" or (backend == "auto" and decord is None):
        reader = DecordReader(path) if backend == "decord" else PyAVReader(path)
    else:
        reader = FallbackReader(path) if backend == "auto" else PyAVReader(path)
    info = reader.info
    if info.num_frames <= 0 or info.fps <= 0 or info.width <= 0:
        raise VideoError(f"{path}: no decodable frames (frames={info.num_frames}, fps={info.fps})")
    return reader


def sample_indices(start: float, end: float, num: int, info: VideoInfo) -> list[int]:
    """``num`` frame indices at the centres of ``num`` equal parts of ``[start, end)``."""
    step = (end - start) / num
    return [min(int((start + (k + 0.5) * step) * info.fps), info.num_frames - 1) for k in range(num)]


def resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (Pillow, bilinear, antialiased) and centre-crop a square: uint8
    [size, size, 3]. A frame already at the size is returned as it is (a view, no copy)."""
    h, w = frame.shape[:2]
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        frame = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR))
    left, top = (nw - size) // 2, (nh - size) // 2
    return frame[top:top + size, left:left + size]


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """One uint8 [H, W, 3] frame -> JPEG bytes through Pillow (baseline, 4:2:0, libjpeg-turbo)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_jpegs(frames: list[np.ndarray], quality: int) -> list[bytes]:
    """Frames -> JPEG bytes, **the same bytes as** ``encode_jpeg``: one call of torchvision's encoder where it
    gives Pillow's bytes (both are libjpeg-turbo with the same tables; checked once per process on a probe
    image), else Pillow frame by frame. Why: Pillow's encoder holds the GIL and torchvision's releases it, so
    the build's encoding thread no longer stalls its decoding thread (measured on 2 cores: decord 11.2 ms a
    clip alone, 18.7 ms beside a thread encoding with Pillow, 12.3 ms beside this one). torch is imported
    here, not at the top: the build's worker processes encode with Pillow and need not load it."""
    if frames and _torchvision_encodes_as_pillow(quality):
        import torch
        from torchvision.io import encode_jpeg as tv_encode

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's notice, on every call
                out = tv_encode([torch.from_numpy(np.require(f, np.uint8, ["C", "W"])).permute(2, 0, 1)
                                 for f in frames], quality=quality)
            return [t.numpy().tobytes() for t in out]
        except RuntimeError:  # a frame it refuses: Pillow says what is wrong, or encodes it
            pass
    return [encode_jpeg(f, quality) for f in frames]


_SAME_AS_PILLOW: dict[int, bool] = {}


def _torchvision_encodes_as_pillow(quality: int) -> bool:
    """Does this install's torchvision encoder give Pillow's bytes at ``quality``? Both bundle their own
    libjpeg-turbo, and the shards must not depend on which encoder wrote them."""
    if quality not in _SAME_AS_PILLOW:
        try:
            import torch
            from torchvision.io import encode_jpeg as tv_encode
        except ImportError:
            _SAME_AS_PILLOW[quality] = False
            return False
        g = np.random.default_rng(0)  # texture and flat areas at an odd size: partial blocks and MCUs
        probe = np.clip(np.linspace(0, 255, 37 * 53 * 3).reshape(37, 53, 3) + g.normal(0, 40, (37, 53, 3)), 0, 255)
        probe = probe.astype(np.uint8)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ours = tv_encode(torch.from_numpy(probe).permute(2, 0, 1).contiguous(), quality=quality)
            _SAME_AS_PILLOW[quality] = ours.numpy().tobytes() == encode_jpeg(probe, quality)
        except RuntimeError:
            _SAME_AS_PILLOW[quality] = False
    return _SAME_AS_PILLOW[quality]
