"""Files every stage writes the same way: atomic replacement, checksums, shard manifests."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, text: str):
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def split_tallies(shards: list[dict]) -> dict:
    """``{split: {"samples": n, "shards": n}}`` of a manifest's shard list."""
    splits = {}
    for s in shards:
        d = splits.setdefault(s["split"], {"samples": 0, "shards": 0})
        d["samples"] += s["samples"]
        d["shards"] += 1
    return splits


def write_manifest(out: Path, manifest: dict, errors: list[dict] | None = None) -> dict:
    """``out/manifest.json`` (its ``splits`` tallied from its ``shards``) and, when given, ``out/errors.jsonl``,
    both atomically: a reader never sees half of either. Returns the manifest."""
    out = Path(out)
    manifest = {**manifest, "splits": split_tallies(manifest["shards"])}
    if errors is not None:
        atomic_write(out / "errors.jsonl", "".join(json.dumps(e) + "\n" for e in errors))
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
