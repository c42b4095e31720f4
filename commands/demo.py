"""`macaroon demo`: the whole pipeline on the bundled samples, on CPU, with a random model.

imagine -> train CRL -> evaluate the base model and the CRL model -> one comparison (table,
plot, page). The judge is the same local model, served once on 127.0.0.1 for both runs; its
replies are constrained to the type's labels as compact JSON (pipeline/serve.py), so every
verdict parses even though the model's text is noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_SAMPLES_DIR, REPO_ROOT
from pipeline.config import parse_config

CONFIGS = REPO_ROOT / "configs"


@dataclass
class DemoConfig:
    """`macaroon demo`: imagine -> train CRL -> evaluate base and CRL -> compare, on CPU."""

    arch: str = field(default="llava", metadata={"help": "Local model family to build."})
    size: str = field(default="small", metadata={"help": "Local model size: tiny or small."})
    images: str = field(
        default=str(DEFAULT_SAMPLES_DIR / "images"), metadata={"help": "Images to imagine on."}
    )
    criteria: str = field(default=str(DEFAULT_CRITERIA_DIR), metadata={"help": "Criteria."})
    pie: str = field(
        default=str(DEFAULT_SAMPLES_DIR / "evaluation_dataset.jsonl"),
        metadata={"help": "PIE file to evaluate on."},
    )
    out: str = field(default="outputs/demo", metadata={"help": "Output folder."})
    max_tokens: int = field(default=48, metadata={"help": "Token limit per generated text."})
    train_steps: int = field(default=60, metadata={"help": "CRL training steps."})


def run_demo(argv: Sequence[str]) -> int:
    """Run every step; the exit status is 1 if any step left work undone."""
    from commands.data import cmd_imagine
    from commands.evaluate import cmd_eval, cmd_report
    from commands.train import cmd_train
    from pipeline.serve import VLLMServer
    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    (cfg,) = parse_config([DemoConfig], argv, "macaroon demo")
    out = Path(cfg.out)
    model, tokens = str(out / "model"), str(cfg.max_tokens)
    print(f"[1/5] building the local {cfg.arch} ({cfg.size}) model in {model}")
    build_tiny_model(TinyModelConfig(arch=cfg.arch, size=cfg.size, out=model,
                                     criteria_dir=cfg.criteria))  # fmt: skip
    print("[2/5] self-imagination: questions, preferred and rejected responses, filter, build")
    status = cmd_imagine(["--model", model, "--images", cfg.images,
                          "--criteria", cfg.criteria, "--out", str(out / "imagine"),
                          "--question_max_tokens", "24", "--response_max_tokens", tokens,
                          # A random model never stops by itself: keep what it wrote.
                          "--drop_truncated", "false"])  # fmt: skip
    print("[3/5] conditional RL training (TRL SFTTrainer, LoRA, reward tokens good/bad)")
    status |= cmd_train(["--config", str(CONFIGS / "train" / "crl.yaml"),
                         "--data", str(out / "imagine" / "dataset"),
                         "--model_name_or_path", model, "--output_dir", str(out / "crl"),
                         "--max_steps", str(cfg.train_steps), "--warmup_steps", "0",
                         "--gradient_accumulation_steps", "1",
                         "--learning_rate", "1e-3", "--gradient_checkpointing", "false",
                         "--save_strategy", "no", "--logging_steps", "10"])  # fmt: skip
    print("[4/5] PIE evaluation of the base and the CRL model; a judge served on 127.0.0.1 rates")
    runs = {"base": [], "crl": ["--adapter", str(out / "crl")]}
    with VLLMServer(model, log=str(out / "logs" / "judge-server.log")) as judge:
        for name, adapter in runs.items():
            status |= cmd_eval(["--model", model, *adapter, "--name", name,
                                "--pie", cfg.pie, "--criteria", cfg.criteria,
                                "--judge_model", model, "--judge_base_url", judge.base_url,
                                "--out", str(out / "eval" / name), "--max_tokens", tokens,
                                "--judge_max_tokens", "64"])  # fmt: skip
    print("[5/5] comparison: base vs CRL")
    report = out / "report"
    status |= cmd_report([*(str(out / "eval" / name) for name in runs), "--out", str(report)])
    print(
        f"\ndemo done{' (with failures: see above)' if status else ''}:\n"
        f"  dataset  {out / 'imagine' / 'dataset'} (browse it: {out / 'imagine' / 'browse.html'})"
        f"\n  adapter  {out / 'crl'}\n"
        f"  report   {report} (table.md, plot.png, browse.html: base vs CRL side by side)\n"
        "The local model has random weights: its text is noise, and so are its scores. The "
        "demo shows the pipeline; README.md gives the commands for a real run."
    )
    return status
