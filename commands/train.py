"""`macaroon train`: METHOD picks the TRL config that parses the rest of the options."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from commands.common import DEFAULT_MODEL, ensure_default_model
from pipeline.config import parse_config
from pipeline.model_source import check_adapter, check_model


def cmd_train(argv: Sequence[str]) -> int:
    import torch
    from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig

    from trainers.config import METHODS, MacaroonTrainConfig, RewardJudgeConfig
    from trainers.train import run_train

    method = peek_method(argv)
    if method not in METHODS:
        raise ValueError(f"METHOD {method!r}: unknown; choose one of {', '.join(METHODS)}")
    trainer = METHODS[method][1]
    classes = [MacaroonTrainConfig, ModelConfig,
               {"dpo": DPOConfig, "grpo": GRPOConfig}.get(trainer, SFTConfig)]  # fmt: skip
    if trainer == "grpo":
        classes.append(RewardJudgeConfig)
    defaults = {"model_name_or_path": DEFAULT_MODEL, "output_dir": f"outputs/train/{method}"}
    if not torch.cuda.is_available():
        defaults["bf16"] = False  # transformers refuses bf16 without a GPU
    cfg, model_args, args, *judge = parse_config(classes, argv, "macaroon train", defaults)
    ensure_default_model(model_args.model_name_or_path)
    check_model(model_args.model_name_or_path, "--model_name_or_path", model_args.model_revision)
    for option in ("init_adapter", "multiturn_adapter"):
        if getattr(cfg, option):
            check_adapter(getattr(cfg, option), f"--{option}", contents=False)
    general = None
    if cfg.general and Path(cfg.general).suffix in (".json", ".jsonl"):
        from imagination.importer import import_files  # the original VLFeedback files

        general, _ = import_files([cfg.general])
    out = run_train(cfg, model_args, args, general, judge[0] if judge else None)
    print(f"adapter ({cfg.method}) saved in {out}")
    return 0


def peek_method(argv: Sequence[str]) -> str:
    """METHOD decides which TRL config parses the rest: from --method, else the YAML file."""
    argv = list(argv)
    if "--method" in argv and argv.index("--method") + 1 < len(argv):
        return argv[argv.index("--method") + 1]
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        import yaml

        path = Path(argv[argv.index("--config") + 1])
        if path.is_file():
            return (yaml.safe_load(path.read_text()) or {}).get("method", "crl")
    return "crl"
