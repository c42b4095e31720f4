"""What a model is, for record keys: its content, not its name or folder.

A key must change when the model that made a record changes, and only then (docs/DESIGN.md §6).
Retraining an adapter into the same folder keeps its path but changes its weights; a Hub
branch moves under the same name. So:

- a local folder is identified by the content of its files (weights, config, tokenizer,
  chat template, processor settings), not the run records beside them;
- a Hub id by the commit its revision resolves to (from the local cache when offline);
- an API model by its name and endpoint (nothing more can be known of it).

Hashing a 15 GB checkpoint takes seconds, so file hashes are cached on disk, keyed by
path, size, modification time and inode: a file rewritten in place is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path

# What a model folder holds that decides its outputs. Run records (macaroon.json, the
# trainer's state and arguments, our build marker) and docs are left out: retraining to
# the same weights keeps the key.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt", ".tiktoken")
RUN_RECORDS = {"macaroon.json", "trainer_state.json", "training_args.json", "tiny_model.json"}


def cache_dir() -> Path:
    root = (
        os.environ.get("MACAROON_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "macaroon"
    )
    return Path(root)


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, cached on disk by (path, size, mtime, inode)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    cached = _disk_cache().get(key)
    if cached:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    _remember(key, digest.hexdigest())
    return digest.hexdigest()


def folder_hash(folder: str | Path) -> str:
    """One hash of the files in `folder` (top level) that decide a model's outputs."""
    folder = Path(folder)
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES and p.name not in RUN_RECORDS
    )  # fmt: skip
    if not files:
        raise ValueError(f"{folder}: no model files (safetensors, config) to identify it by")
    blob = json.dumps([[p.name, content_hash(p)] for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def tree_hash(path: str | Path) -> str:
    """One hash of a file's bytes, or of every file under a folder (names and bytes): a
    dataset saved to disk, an image folder, a criteria folder. File hashes are cached."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    blob = json.dumps([[str(p.relative_to(path) if path.is_dir() else p.name), content_hash(p)]
                       for p in files])  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def model_identity(model: str, revision: str | None = None, endpoint: str | None = None) -> dict:
    """What identifies `model` in a record key (see the module docstring)."""
    if is_model_folder(model):
        return {"model": model, "content": folder_hash(model)}
    if endpoint is not None:  # served by an API: its name and where it is served
        return {"model": model, "endpoint": endpoint}
    return {"model": model, "revision": resolve_revision(model, revision)}


def is_model_folder(model: str) -> bool:
    return (Path(model) / "config.json").is_file()


def resolve_revision(model: str, revision: str | None) -> str | None:
    """The commit a Hub revision points to: the local cache's, or the Hub's when online."""
    from huggingface_hub import HfApi, constants

    name = revision or "main"
    ref = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "refs" / name
    if constants.HF_HUB_OFFLINE:
        return ref.read_text().strip() if ref.is_file() else revision
    try:
        return HfApi().model_info(model, revision=revision, timeout=10).sha or revision
    except Exception:  # noqa: BLE001 - no network or no such repo: what the cache says
        return ref.read_text().strip() if ref.is_file() else revision


@cache
def _disk_cache() -> dict[str, str]:
    path = cache_dir() / "file_hashes.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _remember(key: str, value: str) -> None:
    table = _disk_cache()
    table[key] = value
    path = cache_dir() / "file_hashes.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, path)
    except OSError:  # a read-only home: hashes are recomputed next time, nothing else
        pass
