"""Model families: what the published checkpoint of each family does, as data.

One YAML file per family in this folder (with our own chat template beside it) holds,
each fact with its source: the tokenizer's class and special tokens, the chat template and
its published renderings, generation_config, the processor and image settings, where the
language model sits (LoRA goes there only), how image tokens are bounded and whether vLLM
loads it. Training, evaluation and the backends read these facts at run time
(`family_of`); the tiny-model builder (pipeline/tiny_model) is one more reader.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml

FAMILIES_DIR = Path(__file__).parent


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


def chat_template(spec: dict) -> str:
    """The family's chat template (our own file, rendering as the published one does)."""
    return (FAMILIES_DIR / spec["chat_template"]).read_text(encoding="utf-8")
