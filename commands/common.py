"""What the commands share: the default local model, model checks, positional paths."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from pipeline.model_source import check_model, is_hub_id

DEFAULT_MODEL = "outputs/models/llava-tiny"


def ensure_default_model(model: str) -> None:
    """The default model is the local tiny one: build it on first use."""
    if model == DEFAULT_MODEL and not Path(model, "config.json").is_file():
        from pipeline.tiny_model import TinyModelConfig, build_tiny_model

        print(f"building the local tiny model in {model}")
        build_tiny_model(TinyModelConfig(out=model))


def check_backend_model(cfg, option: str = "--model") -> None:
    """Before any weights load: the model of a BackendConfig-like `cfg` is there.

    An API model name (openai backend at an endpoint) is the server's business; a local
    folder is checked on every backend (on openai it is served here)."""
    model, backend = cfg.model, cfg.backend
    if backend == "openai" and (cfg.base_url or is_hub_id(model)):
        return
    check_model(model, option, getattr(cfg, "revision", None))


def check_judge_model(cfg) -> None:
    """The judge's model, where it is a model to load here (hf, vllm, or a local folder)."""
    model = cfg.judge_model
    if not model:
        return  # the stage's own model judges
    if cfg.judge_backend == "openai" and (cfg.judge_base_url or is_hub_id(model)):
        return
    check_model(model, "--judge_model")


def retry_command(prog: str, argv: Sequence[str]) -> str:
    """The command line that retries only the failed records of this one."""
    argv, kept, skip = list(argv), [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--retry_failed", "--retry-failed"):
            skip = True
        elif not arg.startswith(("--retry_failed=", "--retry-failed=")):
            kept.append(arg)
    return shlex.join([*prog.split(), *kept, "--retry_failed", "true"])


def failure_report(stages: list[dict], retry: str) -> list[str]:
    """Each stage's failed items by reason, with one example each, then how to retry."""
    from pipeline.runner import StageStats

    lines = []
    for stage in stages:
        lines += ["  " + line for line in StageStats(**stage).failure_lines()]
    if lines:
        lines.append(f"  once the cause is fixed, retry only the failed items: {retry}")
    return lines


def leading_paths(argv: Sequence[str]) -> list[str]:
    paths = []
    for arg in argv:
        if arg.startswith("-"):
            break
        paths.append(arg)
    return paths
