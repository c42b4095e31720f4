"""`macaroon`: one console script, one subcommand per stage. It only dispatches."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import DEFAULT_CRITERIA_DIR
from pipeline.config import ConfigError, parse_config
from pipeline.criteria import CriteriaError
from pipeline.demo import DemoConfig
from pipeline.lock import LockError, folder_lock


def cmd_tiny_model(argv: Sequence[str]) -> int:
    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    (cfg,) = parse_config([TinyModelConfig], argv, "macaroon tiny-model")
    out = build_tiny_model(cfg)
    print(f"tiny model ({cfg.arch}, {cfg.size}) ready in {out}")
    return 0


@dataclass
class CriteriaConfig:
    """`macaroon criteria`: validate a criteria folder and list its types with their hashes."""

    criteria_dir: str = field(default=str(DEFAULT_CRITERIA_DIR), metadata={"help": "Folder."})


def cmd_criteria(argv: Sequence[str]) -> int:
    from pipeline.criteria import criteria_hash, load_criteria

    (cfg,) = parse_config([CriteriaConfig], argv, "macaroon criteria")
    types = load_criteria(cfg.criteria_dir)
    for name, qtype in types.items():
        print(f"{qtype.tier:>3}  {name:<28} {qtype.content_hash}  {qtype.source}")
    print(f"{len(types)} question types, criteria hash {criteria_hash(types)}")
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from pipeline.demo import run_demo

    return run_demo(argv)


DEFAULT_MODEL = "outputs/models/llava-tiny"


def _ensure_default_model(model: str) -> None:
    """The default model is the local tiny one: build it on first use."""
    if model == DEFAULT_MODEL and not Path(model, "config.json").is_file():
        from pipeline.tiny_model import TinyModelConfig, build_tiny_model

        print(f"building the local tiny model in {model}")
        build_tiny_model(TinyModelConfig(out=model))


def cmd_imagine(
    argv: Sequence[str], prog: str = "macaroon imagine", stages: str | None = None
) -> int:
    from imagination.imagine import ImagineConfig, run_imagine

    (cfg,) = parse_config([ImagineConfig], argv, prog)
    if stages:
        cfg.stages = stages
    with folder_lock(cfg.out):  # before building a model: a refused run does nothing
        _ensure_default_model(cfg.model)
        summary = run_imagine(cfg)
    print(imagine_report(summary))
    failed = sum(s["failed"] + s["skipped_failed"] for s in summary["stages"])
    return 1 if failed else 0  # the exit status says whether every record was made


def imagine_report(summary: dict) -> str:
    from pipeline.runner import StageStats

    lines = ["", "summary:"]
    lines += ["  " + StageStats(**s).line() for s in summary["stages"]]
    dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()) or "none"
    lines.append(
        f"  filter     {summary['pairs']} pairs: {summary['kept']} kept; dropped: {dropped}"
    )
    calls = summary["model_calls"]
    lines.append(f"  model calls: {calls}" + (" (everything was cached)" if calls == 0 else ""))
    if summary["dataset"]:
        rows = ", ".join(f"{k} {v}" for k, v in summary["rows"].items())
        lines.append(f"  dataset: {summary['dataset']} ({rows})")
    else:
        lines.append("  dataset: not written (no pairs kept, or build not among --stages)")
    if summary.get("browse"):
        lines.append(f"  browse: {summary['browse']} (every pair, kept or dropped with why)")
    return "\n".join(lines)


def cmd_build(argv: Sequence[str]) -> int:
    return cmd_imagine(argv, "macaroon build", stages="build")


@dataclass
class BrowseConfig:
    """`macaroon browse OUT`: one HTML page of an imagined set (OUT/browse.html)."""

    page: str | None = field(
        default=None, metadata={"help": "Where to write the page (default OUT/browse.html)."}
    )


def cmd_browse(argv: Sequence[str]) -> int:
    from imagination.browse import write_browse

    folders = _leading_paths(argv)
    (cfg,) = parse_config([BrowseConfig], list(argv)[len(folders) :], "macaroon browse")
    if len(folders) != 1:
        raise ValueError("give one imagine output folder: macaroon browse OUT [--page FILE]")
    page = write_browse(Path(folders[0]), Path(cfg.page) if cfg.page else None)
    print(f"wrote {page}: open it in a browser (no server needed)")
    return 0


@dataclass
class ImportConfig:
    """`macaroon import FILE... --out DIR`: the original MACAROON training files."""

    out: str = field(default="outputs/import", metadata={"help": "Output folder."})
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths start from (default: each file's)."},
    )
    skip_missing_images: bool = field(
        default=False, metadata={"help": "Skip records whose image is missing (counted)."}
    )


def cmd_import(argv: Sequence[str]) -> int:
    from imagination.importer import import_files, save_import

    paths = _leading_paths(argv)
    (cfg,) = parse_config([ImportConfig], list(argv)[len(paths) :], "macaroon import")
    if not paths:
        raise ValueError("give one or more files: macaroon import FILE... --out DIR")
    dataset, summary = import_files(paths, cfg.image_root, cfg.skip_missing_images)
    save_import(dataset, summary, Path(cfg.out))
    rows = ", ".join(f"{name} {len(split)}" for name, split in dataset.items())
    print(f"imported {len(paths)} file(s) into {Path(cfg.out) / 'dataset'}: {rows}")
    return 0


def _leading_paths(argv: Sequence[str]) -> list[str]:
    paths = []
    for arg in argv:
        if arg.startswith("-"):
            break
        paths.append(arg)
    return paths


def cmd_train(argv: Sequence[str]) -> int:
    import torch
    from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig

    from trainers.config import METHODS, MacaroonTrainConfig, RewardJudgeConfig
    from trainers.train import run_train

    method = _peek_method(argv)
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
    _ensure_default_model(model_args.model_name_or_path)
    general = None
    if cfg.general and Path(cfg.general).suffix in (".json", ".jsonl"):
        from imagination.importer import import_files  # the original VLFeedback files

        general, _ = import_files([cfg.general])
    out = run_train(cfg, model_args, args, general, judge[0] if judge else None)
    print(f"adapter ({cfg.method}) saved in {out}")
    return 0


def cmd_eval(argv: Sequence[str], prog: str = "macaroon eval", stages: str | None = None) -> int:
    from evaluation.run import EvalConfig, run_eval

    (cfg,) = parse_config([EvalConfig], argv, prog)
    if stages:
        cfg.stages = stages
    with folder_lock(cfg.out):  # before building a model: a refused run does nothing
        if not cfg.adapter:  # with an adapter the default means the adapter's own base
            _ensure_default_model(cfg.model)
        metrics = run_eval(cfg)
    print(eval_report(metrics, cfg.out))
    failed = sum(s["failed"] + s["skipped_failed"] for s in metrics["stages"])
    return 1 if failed else 0  # a stage with failed items is incomplete


def eval_report(metrics: dict, out: str) -> str:
    from pipeline.runner import StageStats

    lines = ["", "summary:"] + ["  " + StageStats(**s).line() for s in metrics["stages"]]
    lines.append(
        f"  model calls: {metrics['model_calls']}"
        + (" (everything was cached)" if metrics["model_calls"] == 0 else "")
    )
    lines.append("  Align Rate over all items (the paper's convention) / over judged items:")
    for name, m in metrics["types"].items():
        lines.append(
            f"  {name:<28} align {_rate(m['align_rate_all'])} / {_rate(m['align_rate'])}  "
            f"(n {m['n']}, unparsed {m['unparsed']}, failed {m['failed']}, "
            f"cut off {m.get('truncated', 0)})"
        )
    lines.append(
        f"  AAR {_rate(metrics['aar_all'], 3)} over all items (the original code's convention, "
        f"comparable to the paper's 0.84); {_rate(metrics['aar'], 3)} over judged items"
    )
    if metrics.get("truncated"):
        lines.append(
            f"  {metrics['truncated']} of {metrics['n']} answers hit --max_tokens and were "
            "judged as cut off; raise it if that is not what you meant to test"
        )
    lines.append(f"  results in {out} (metrics.json, table.md, plot.png, browse.html)")
    return "\n".join(lines)


def _rate(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


@dataclass
class ReportConfig:
    """`macaroon report RUN_DIR... [--out DIR] [--agreement RUN_DIR|labels.csv]`."""

    out: str | None = field(default=None, metadata={"help": "Where the comparison goes."})
    agreement: str | None = field(
        default=None,
        metadata={"help": "Another judge's run folder or a CSV of human labels (Image ID, "
                  "Question, label): agreement and Cohen's kappa with the first run."},
    )  # fmt: skip


def cmd_report(argv: Sequence[str]) -> int:
    from evaluation.agreement import agreement, agreement_table, load_verdicts
    from evaluation.compare import read_items, write_compare
    from evaluation.report import write_reports

    runs = _leading_paths(argv)
    (cfg,) = parse_config([ReportConfig], list(argv)[len(runs) :], "macaroon report")
    if not runs:
        raise ValueError("give one or more run folders: macaroon report RUN_DIR... [--out DIR]")
    metrics = []
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no metrics.json; run `macaroon eval` there first")
        metrics.append(json.loads(path.read_text()))
    items = [read_items(run) for run in runs]  # before writing anything
    types = list(dict.fromkeys(t for m in metrics for t in m["types"]))
    out = Path(cfg.out or (runs[0] if len(runs) == 1 else "outputs/eval/compare"))
    out.mkdir(parents=True, exist_ok=True)
    write_reports(metrics, types, out)
    write_compare(metrics, items, out / "browse.html", out / "plot.png")
    print((out / "table.md").read_text())
    if cfg.agreement:
        result = agreement(load_verdicts(runs[0]), load_verdicts(cfg.agreement))
        (out / "agreement.json").write_text(json.dumps(result, indent=2))
        (out / "agreement.md").write_text(agreement_table(result))
        print(agreement_table(result))
    print(f"report in {out} (table.md, plot.png, browse.html: the runs side by side)")
    return 0


@dataclass
class DocsConfig:
    """`macaroon docs`: write docs/CONFIG.md (every option) and docs/MODELS.md (families)."""

    out: str = field(default="docs", metadata={"help": "Folder to write them in."})


def command_configs() -> list[tuple[str, type]]:
    """Each command's config dataclass, for docs/CONFIG.md."""
    from evaluation.run import EvalConfig
    from imagination.imagine import ImagineConfig
    from pipeline.tiny_model import TinyModelConfig
    from trainers.config import MacaroonTrainConfig, RewardJudgeConfig

    return [
        ("macaroon imagine / build", ImagineConfig),
        ("macaroon train (ours; then TRL's ModelConfig and SFTConfig, DPOConfig or GRPOConfig)",
         MacaroonTrainConfig),
        ("macaroon train METHOD=grpo: the reward judge", RewardJudgeConfig),
        ("macaroon eval / generate / judge", EvalConfig),
        ("macaroon report", ReportConfig),
        ("macaroon browse", BrowseConfig),
        ("macaroon import", ImportConfig),
        ("macaroon demo", DemoConfig),
        ("macaroon tiny-model", TinyModelConfig),
        ("macaroon criteria", CriteriaConfig),
    ]  # fmt: skip


def cmd_docs(argv: Sequence[str]) -> int:
    from pipeline.docs import config_reference, models_reference

    (cfg,) = parse_config([DocsConfig], argv, "macaroon docs")
    pages = {"CONFIG.md": config_reference(command_configs()), "MODELS.md": models_reference()}
    for name, text in pages.items():
        path = Path(cfg.out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _peek_method(argv: Sequence[str]) -> str:
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


COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "tiny-model": ("build a small random-weight VLM locally (tests, demo)", cmd_tiny_model),
    "criteria": ("validate the criteria YAML and list the question types", cmd_criteria),
    "imagine": ("self-imagination: images + criteria -> preference dataset", cmd_imagine),
    "build": ("rebuild the dataset from the stored records (no model calls)", cmd_build),
    "browse": ("one HTML page of an imagined set: pairs, drops and why", cmd_browse),
    "import": ("the original MACAROON training files -> our dataset formats", cmd_import),
    "train": (
        "train METHOD=crl|sft|dpo|multiturn|sft_after_multiturn|grpo (TRL + LoRA)",
        cmd_train,
    ),
    "generate": (
        "the model under test answers PIE",
        lambda argv: cmd_eval(argv, "macaroon generate", "generate"),
    ),
    "judge": (
        "judge stored answers by the rubric per type",
        lambda argv: cmd_eval(argv, "macaroon judge", "judge,report"),
    ),
    "report": ("metrics, table, plot; compare runs; judge agreement", cmd_report),
    "eval": ("generate -> judge -> report on PIE", cmd_eval),
    "docs": ("write docs/CONFIG.md and docs/MODELS.md from the code and data", cmd_docs),
    "demo": ("run the main job on the bundled defaults", cmd_demo),
}


def usage() -> str:
    lines = ["usage: macaroon COMMAND [--config FILE.yaml] [--option value ...]", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "macaroon COMMAND --help lists the options of a command."]
    return "\n".join(lines)


# No usage statistics leave this machine (the user may still set these to 0 on purpose).
TELEMETRY_OFF = {"HF_HUB_DISABLE_TELEMETRY": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def main(argv: Sequence[str] | None = None) -> int:
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"macaroon: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][1](rest)
    except (ConfigError, CriteriaError, ValueError, FileNotFoundError) as err:
        # Bad input: one clear line naming the file and the fix, no traceback.
        print(f"macaroon {name}: error: {err}", file=sys.stderr)
        return 2
    except LockError as err:
        # Refused before doing anything, like bad input (2); 1 means a run left work undone.
        print(f"macaroon {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nmacaroon {name}: interrupted; finished records are kept, rerun the same "
            "command to go on from there",
            file=sys.stderr,
        )
        return 130
    except OSError as err:  # read-only folder, full disk, ...: the machine, not the input
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        print(
            f"macaroon {name}: error: cannot write{where}: {err.strerror or err}; free space or "
            "choose a writable output folder (finished records are kept)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
