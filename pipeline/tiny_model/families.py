"""The model families: one YAML file (and one chat template) per family under families/.

A family file holds what the published checkpoint does, each fact with its source:
tokenizer behaviour, chat template, generation_config, processor and image settings,
the config's structural facts, the LoRA targets and whether vLLM loads it. Code here only
reads those files and fills in the sizes of sizes.yaml.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml

FAMILIES_DIR = Path(__file__).with_name("families")
SIZES_FILE = Path(__file__).with_name("sizes.yaml")
IMAGE_SETTINGS = ("published", "reduced")


@cache
def _read(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def family_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in FAMILIES_DIR.glob("*.yaml")))


def family(name: str) -> dict:
    """The family's facts (a fresh copy: callers may change it)."""
    path = FAMILIES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"--arch {name!r}: unknown; choose one of {', '.join(family_names())}")
    return copy.deepcopy(_read(path))


@cache
def _by_model_type() -> dict[str, str]:
    import transformers

    table = {}
    for name in family_names():
        config_cls = getattr(transformers, _read(FAMILIES_DIR / f"{name}.yaml")["model"]["config"])
        table[config_cls.model_type] = name
    return table


def family_of(model_type: str | None) -> dict | None:
    """The facts of the family whose config has this `model_type` (None if we have none)."""
    name = _by_model_type().get(model_type or "")
    return family(name) if name else None


def sizes() -> dict:
    return copy.deepcopy(_read(SIZES_FILE))


def chat_template(spec: dict) -> str:
    return (FAMILIES_DIR / spec["chat_template"]).read_text(encoding="utf-8")


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
