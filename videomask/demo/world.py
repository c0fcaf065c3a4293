"""The synthetic clip world: the embedded default that the demo and the tests run on.

Two domains of short, real h264 videos with .srt transcripts that describe what
is on screen while it is on screen:

- ``general``: circles, squares and triangles in everyday colours, everyday words;
- ``target``: the same general content *plus* the domain's own objects
  (hexagons, crescents, rhombuses in violet or turquoise) and its own jargon
  (lattice, glyph, resonance). These are the words a difference-masking run
  should discover (``PLANTED_WORDS``) and the regions it should mask.

Target clips carry downstream annotations: a clip label (the shape of the clip's
key object), a 4-way multiple-choice question about the key object's colour, and a
colour cloze (``cloze``: "a [MASK] hexagon", the answer and the colour words) for
the zero-shot probe. ``colour_said`` tells whether the transcript names the key
colour (``WorldConfig.say_colour`` of the clips do). Ground truth for the ``oracle``
control: the planted words and, per object, its shape, colour and motion, from
which ``videomask.demo.truth`` draws which patches show a target object.

Why the design can show an effect (docs/method.md §10): the general domain, on
which the base model is pretrained, never shows a target shape or colour nor says a
planted word; the downstream question asks for the key object's colour among both
target colours and two general ones, so answering it needs exactly what only the
target domain can teach (which pixels "violet" and "turquoise" name). The target colours are
words of one token in the BERT vocabulary, so a one-[MASK] cloze asks for them as for "red".

Everything is a function of the seed: ``make_world(out, seed=0)`` twice gives the
same files.

    python -m videomask.demo.world OUT [--general 24 --target 96 --size 128 --seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GENERAL_SHAPES = ("circle", "square", "triangle")
GENERAL_COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220), "yellow": (240, 200, 20)}
TARGET_SHAPES = ("hexagon", "crescent", "rhombus")
TARGET_COLOURS = {"violet": (230, 20, 210), "turquoise": (20, 210, 200)}
TARGET_JARGON = ("lattice", "glyph", "resonance")
#: The words that make the target domain different; anchors should recover them.
PLANTED_WORDS = TARGET_SHAPES + tuple(TARGET_COLOURS) + TARGET_JARGON
COLOURS = {**GENERAL_COLOURS, **TARGET_COLOURS}

INTROS = ("look, here is {}.", "now we can see {} on the screen.", "this one is {}.",
          "there is {} in the picture.", "next comes {}, nice and simple.", "and here we have {}.")
JARGON = ("the {} of the {} is strong.", "notice the {} around the {}.", "a {} forms near the {}.")


@dataclass
class WorldConfig:
    general: int = 24  # number of general-domain videos
    target: int = 96  # number of target-domain videos
    size: int = 128  # frame height and width in pixels
    fps: int = 8
    segments: int = 3  # transcript cues per video; one scene per cue
    segment_seconds: float = 2.0
    seed: int = 0
    val_fraction: float = 0.15  # of the target clips (the general ones are all train)
    test_fraction: float = 0.15
    say_colour: float = 0.5  # share of target clips whose transcript names the key object's colour
    general_test_fraction: float = 0.0  # general clips held out (to check the base model on unseen clips)


@dataclass
class Obj:
    shape: str
    colour: str
    x: float  # centre, in units of the frame size
    y: float
    r: float  # radius, in units of the frame size
    angle: float
    vx: float  # drift per second, in units of the frame size
    vy: float


def _phrase(obj: Obj, say_colour: bool) -> str:
    return f"a {obj.colour} {obj.shape}" if say_colour else f"a {obj.shape}"


def draw_mask(obj: Obj, t: float, size: int) -> Image.Image:
    """The object's silhouette at time ``t`` as an 'L' image (255 inside)."""
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    cx, cy, r = (obj.x + obj.vx * t) * size, (obj.y + obj.vy * t) * size, obj.r * size
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        d.ellipse(box, fill=255)
    elif obj.shape == "crescent":
        d.ellipse(box, fill=255)
        dx, dy = 0.45 * r * math.cos(obj.angle), 0.45 * r * math.sin(obj.angle)
        d.ellipse((cx - 0.85 * r + dx, cy - 0.85 * r + dy, cx + 0.85 * r + dx, cy + 0.85 * r + dy), fill=0)
    elif obj.shape == "rhombus":
        pts = [(cx + r * (0.55 if k % 2 else 1.0) * math.cos(obj.angle + k * math.pi / 2),
                cy + r * (0.55 if k % 2 else 1.0) * math.sin(obj.angle + k * math.pi / 2)) for k in range(4)]
        d.polygon(pts, fill=255)
    else:
        sides = {"square": 4, "triangle": 3, "hexagon": 6}[obj.shape]
        pts = [(cx + r * math.cos(obj.angle + 2 * math.pi * k / sides),
                cy + r * math.sin(obj.angle + 2 * math.pi * k / sides)) for k in range(sides)]
        d.polygon(pts, fill=255)
    return m


def render_frame(objs: list[Obj], t: float, size: int, background: np.ndarray) -> np.ndarray:
    img = Image.fromarray(background)
    for obj in objs:
        img.paste(COLOURS[obj.colour], (0, 0), draw_mask(obj, t, size))
    return np.asarray(img)


def _place(rng, shape, colour, slot, n_slots) -> Obj:
    lo, hi = slot / n_slots, (slot + 1) / n_slots  # objects of one scene sit in separate vertical bands
    r = rng.uniform(0.14, 0.2)
    return Obj(shape, colour, x=rng.uniform(lo + r, hi - r) if hi - lo > 2 * r else (lo + hi) / 2,
               y=rng.uniform(0.3, 0.7), r=r, angle=rng.uniform(0, 2 * math.pi),
               vx=rng.uniform(-0.03, 0.03), vy=rng.uniform(-0.05, 0.05))


def _general_obj(rng, slot, n_slots, avoid: str = "") -> Obj:
    colours = [c for c in GENERAL_COLOURS if c != avoid]  # never the key object's colour: no leak of the answer
    return _place(rng, str(rng.choice(GENERAL_SHAPES)), str(rng.choice(colours)), slot, n_slots)


def _group(colour: str) -> str:
    return "target" if colour in TARGET_COLOURS else "general"


def _cloze(shape: str, colour: str) -> dict:
    """"a [MASK] hexagon": all colour words as choices, and those of the answer's own domain apart (the target
    colours against each other: which pixels each new word names)."""
    own = TARGET_COLOURS if colour in TARGET_COLOURS else GENERAL_COLOURS
    return {"prompt": f"a {{mask}} {shape}", "answer": colour, "choices": list(COLOURS), "group": _group(colour),
            "group_choices": list(own)}


def make_clip(rng: np.random.Generator, domain: str, cfg: WorldConfig):
    """Scenes (objects per cue), cue texts, and for target clips the annotations."""
    scenes, texts, ann = [], [], {}
    if domain == "target":
        # key object: a target colour or a general one, even odds. The candidates are always both target
        # colours and two general ones, so each candidate is equally likely to be right whatever the set:
        # the answers alone give chance (1/4); the transcript (half the time) or the frames are needed.
        colour = str(rng.choice(list(TARGET_COLOURS))) if rng.random() < 1 / 2 else str(
            rng.choice(list(GENERAL_COLOURS)))
        key_shape = str(rng.choice(TARGET_SHAPES))
        say_colour = bool(rng.random() < cfg.say_colour)
        generals = [c for c in GENERAL_COLOURS if c != colour]
        others = [str(c) for c in rng.choice(generals, size=2 if colour in TARGET_COLOURS else 1, replace=False)]
        answers = [colour] + [c for c in TARGET_COLOURS if c != colour] + others
        order = rng.permutation(4)
        ann = {"label": key_shape, "question": f"What colour is the {key_shape}?",
               "answers": [answers[i] for i in order], "answer_idx": int(np.argmax(order == 0)),
               "colour_said": say_colour, "answer_group": _group(colour),
               # the zero-shot probe's cloze: which colour word fits "a [MASK] hexagon", given the frames
               "cloze": _cloze(key_shape, colour)}
    for _ in range(cfg.segments):
        if domain == "target":
            n = 1 + int(rng.random() < 0.5)
            key_slot = int(rng.integers(n))
            objs = [_place(rng, key_shape, colour, key_slot, n) if s == key_slot else _general_obj(rng, s, n, colour)
                    for s in range(n)]
            phrases = [_phrase(o, say_colour if o.shape == key_shape else True) for o in objs]
        else:
            n = 1 + int(rng.random() < 0.5)
            objs = [_general_obj(rng, s, n) for s in range(n)]
            phrases = [_phrase(o, True) for o in objs]
        text = str(rng.choice(INTROS)).format(" and ".join(phrases))
        if domain == "target" and rng.random() < 0.6:
            jargon = str(rng.choice(JARGON)).format(str(rng.choice(TARGET_JARGON)), key_shape)
            text += " " + jargon[0].upper() + jargon[1:]
        scenes.append(objs)
        texts.append(text[0].upper() + text[1:])
    if domain == "general":  # a cloze about an object whose shape is unique in the clip (if there is one)
        shapes = [o.shape for objs in scenes for o in objs]
        unique = [o for objs in scenes for o in objs if shapes.count(o.shape) == 1]
        if unique:
            ann = {"cloze": _cloze(unique[0].shape, unique[0].colour)}
    return scenes, texts, ann


def write_video(path: Path, frames: list[np.ndarray], fps: int, options: dict | None = None) -> None:
    """Encode RGB frames as h264 (yuv420p) in an .mp4 with PyAV.

    x264's assembly kernels made rare run-to-run differences in the bitstream here
    (measured: 2-3 distinct files in 30 encodes of the same frames); ``asm=0`` and
    one thread make the bytes a function of the frames alone. Frames are small, so
    the plain-C encoder costs little.
    """
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "asm=0", **(options or {})}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_srt(path: Path, texts: list[str], seconds: float) -> None:
    blocks = [f"{k + 1}\n{srt_time(k * seconds)} --> {srt_time((k + 1) * seconds)}\n{t}\n" for k, t in enumerate(texts)]
    path.write_text("\n".join(blocks), encoding="utf-8")


def _split(k: int, n: int, cfg: WorldConfig, domain: str = "target") -> str:
    if domain == "general":
        return "test" if k >= n - round(n * cfg.general_test_fraction) else "train"
    n_test, n_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
    return "test" if k >= n - n_test else "val" if k >= n - n_test - n_val else "train"


def make_world(out: Path, cfg: WorldConfig = WorldConfig()) -> dict:
    """Write both domains under ``out``; returns ``{domain: manifest path}``.

    Layout: ``out/{general,target}/{id}.mp4`` + ``.srt``, and a JSONL manifest per
    domain (``out/{domain}.jsonl``) with video, transcript, split and, for target
    clips, label / question / answers / answer_idx / objects.
    """
    out = Path(out)
    manifests = {}
    frames_per_cue = round(cfg.segment_seconds * cfg.fps)
    for d_idx, (domain, count) in enumerate((("general", cfg.general), ("target", cfg.target))):
        (out / domain).mkdir(parents=True, exist_ok=True)
        rows = []
        for k in range(count):
            rng = np.random.default_rng([cfg.seed, d_idx, k])
            vid = f"{domain}_{k:05d}"
            scenes, texts, ann = make_clip(rng, domain, cfg)
            grey = rng.uniform(90, 170)
            background = np.clip(grey + rng.normal(0, 6, (cfg.size, cfg.size, 1)), 0, 255).astype(np.uint8)
            background = np.repeat(background, 3, axis=2)
            frames = [render_frame(objs, f / cfg.fps, cfg.size, background)
                      for objs in scenes for f in range(frames_per_cue)]
            write_video(out / domain / f"{vid}.mp4", frames, cfg.fps)
            write_srt(out / domain / f"{vid}.srt", texts, cfg.segment_seconds)
            row = {"id": vid, "video": f"{domain}/{vid}.mp4", "transcript": f"{domain}/{vid}.srt",
                   "split": _split(k, count, cfg, domain), "domain": domain,
                   "objects": [[asdict(o) for o in objs] for objs in scenes], "frames_per_cue": frames_per_cue,
                   **ann}
            rows.append(row)
        manifests[domain] = out / f"{domain}.jsonl"
        manifests[domain].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "world.json").write_text(json.dumps({"config": asdict(cfg), "planted_words": PLANTED_WORDS}, indent=1))
    return manifests


def is_target(obj: dict | Obj) -> bool:
    """Ground truth: does this object belong to what makes the target domain different?"""
    obj = Obj(**obj) if isinstance(obj, dict) else obj
    return obj.shape in TARGET_SHAPES or obj.colour in TARGET_COLOURS


def object_mask(obj: dict | Obj, t: float, size: int) -> np.ndarray:
    """Boolean silhouette of a manifest object at time ``t`` (seconds since its cue started)."""
    obj = Obj(**obj) if isinstance(obj, dict) else obj
    return np.asarray(draw_mask(obj, t, size)) > 127


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m videomask.demo.world", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    for f, v in asdict(WorldConfig()).items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    a = vars(p.parse_args(argv))
    out = a.pop("out")
    for domain, path in make_world(out, WorldConfig(**a)).items():
        print(f"{domain}: {path}")


if __name__ == "__main__":
    main()
