"""What the commands share: the default local model and their positional paths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_MODEL = "outputs/models/llava-tiny"


def ensure_default_model(model: str) -> None:
    """The default model is the local tiny one: build it on first use."""
    if model == DEFAULT_MODEL and not Path(model, "config.json").is_file():
        from pipeline.tiny_model import TinyModelConfig, build_tiny_model

        print(f"building the local tiny model in {model}")
        build_tiny_model(TinyModelConfig(out=model))


def leading_paths(argv: Sequence[str]) -> list[str]:
    paths = []
    for arg in argv:
        if arg.startswith("-"):
            break
        paths.append(arg)
    return paths
