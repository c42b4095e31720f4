"""Build small random-weight VLMs locally that behave like the published checkpoints.

Nothing can be downloaded here, so tests and the demo run on models built from scratch. A
build keeps everything the published checkpoint of its family does — the tokenizer's class
and special-token behaviour (BOS/EOS added or not, pad, end-of-turn ids), the chat
template, generation_config, processor and image settings — and shrinks only widths,
depths and the learnt vocabulary. The facts live in `families/<family>.yaml`, each with
its source; `--images reduced` also shrinks the image size, for fast tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_SAMPLES_DIR
from pipeline.families import family, family_names

ARCHS = family_names()
SIZES = ("tiny", "small")
IMAGE_SETTINGS = ("published", "reduced")
# The marker that says a folder holds a finished build of these settings; bumped when the
# build changes, so an old folder is rebuilt rather than reused.
BUILD_VERSION = 3


@dataclass
class TinyModelConfig:
    """`macaroon tiny-model`: build a random-weight VLM for tests and the demo."""

    arch: str = field(default="llava", metadata={"help": f"Model family: {', '.join(ARCHS)}."})
    size: str = field(
        default="tiny",
        metadata={"help": "tiny: builds in seconds, for tests; small: learns templates on CPU."},
    )
    images: str = field(
        default="published",
        metadata={
            "help": "published: the family's image settings (size, tiling, tokens per image); "
            "reduced: a few tokens per image, for fast tests."
        },
    )
    out: str | None = field(
        default=None, metadata={"help": "Output folder (default: outputs/models/ARCH-SIZE)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the random weights."})
    criteria_dir: str = field(
        default=str(DEFAULT_CRITERIA_DIR),
        metadata={"help": "Criteria YAML folder, part of the tokenizer's training text."},
    )
    samples_dir: str = field(
        default=str(DEFAULT_SAMPLES_DIR),
        metadata={"help": "Samples folder (*.json, *.jsonl), part of the tokenizer's text."},
    )
    force: bool = field(default=False, metadata={"help": "Rebuild even if OUT holds a model."})

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"--arch {self.arch!r}: unknown; choose one of {', '.join(ARCHS)}")
        if self.size not in SIZES:
            raise ValueError(f"--size {self.size!r}: unknown; choose one of {', '.join(SIZES)}")
        if self.images not in IMAGE_SETTINGS:
            raise ValueError(f"--images {self.images!r}: choose one of {', '.join(IMAGE_SETTINGS)}")
        if self.out is None:
            suffix = "" if self.images == "published" else f"-{self.images}"
            self.out = f"outputs/models/{self.arch}-{self.size}{suffix}"


def build_tiny_model(cfg: TinyModelConfig) -> Path:
    """Build (or reuse) the model described by `cfg`; returns its folder."""
    out = Path(cfg.out)
    marker = out / "tiny_model.json"
    wanted = {"arch": cfg.arch, "size": cfg.size, "images": cfg.images, "seed": cfg.seed,
              "version": BUILD_VERSION}  # fmt: skip
    if not cfg.force and marker.exists() and json.loads(marker.read_text()) == wanted:
        return out
    import torch

    from pipeline.tiny_model.build import save

    torch.manual_seed(cfg.seed)
    spec = with_image_settings(family(cfg.arch), cfg.images)
    save(spec, cfg.size, corpus(cfg), out)
    marker.write_text(json.dumps(wanted))
    return out


def with_image_settings(spec: dict, images: str) -> dict:
    """`spec` with its `reduced_images` overrides applied when `images` is "reduced"."""
    if images not in IMAGE_SETTINGS:
        raise ValueError(f"--images {images!r}: choose one of {', '.join(IMAGE_SETTINGS)}")
    if images == "published":
        return spec
    reduced = spec.get("reduced_images", {})
    targets = {
        "processor": spec["processor"].setdefault("kwargs", {}),
        "image_processor": spec["processor"]["image_processor"]["kwargs"],
        "video_processor": spec["processor"].get("video_processor", {}).get("kwargs", {}),
        "model": spec["model"]["kwargs"],
        "vision_config": spec["model"]["vision_config"],
    }
    for section, values in reduced.items():
        targets[section].update(values)
    return spec


def corpus(cfg: TinyModelConfig) -> list[str]:
    """Every string in the criteria and sample files: the words the pipeline will use."""
    texts: list[str] = []
    for path in sorted(Path(cfg.criteria_dir).glob("*.y*ml")):
        texts += _strings(yaml.safe_load(path.read_text(encoding="utf-8")))
    for path in sorted(Path(cfg.samples_dir).glob("*.json*")):
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            texts += _strings([json.loads(line) for line in raw.splitlines() if line.strip()])
        else:
            texts += _strings(json.loads(raw))
    # The chat templates' words and the reward tokens must be cheap to encode.
    texts += ["USER: ASSISTANT: User: Assistant: [INST] [/INST] good bad system user "
              "assistant model You are a helpful assistant."] * 50  # fmt: skip
    return texts


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []
