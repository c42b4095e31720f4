"""Commands that evaluate: eval (and its stages generate and judge), report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from commands.common import (
    check_backend_model,
    check_judge_model,
    ensure_default_model,
    failure_report,
    leading_paths,
)
from pipeline.config import parse_config
from pipeline.files import read_json_file
from pipeline.lock import folder_lock


def cmd_eval(
    argv: Sequence[str], prog: str = "macaroon eval", stages: str | None = None, shared=None
) -> int:
    """`shared`: a vLLM engine that already holds this run's base and adapter (reproduce)."""
    from evaluation.run import EvalConfig, run_eval

    (cfg,) = parse_config([EvalConfig], argv, prog)
    if stages:
        cfg.stages = stages
    with folder_lock(cfg.out):  # before building a model: a refused run does nothing
        check_eval_models(cfg, "judge" in cfg.stages)
        metrics = run_eval(cfg, shared)
    print(eval_report(metrics, cfg.out))
    failed = sum(s["failed"] + s["skipped_failed"] for s in metrics["stages"])
    # Incomplete: a stage with failed items, or a run meant to judge with verdicts missing.
    return 1 if failed or ("judge" in cfg.stages and metrics.get("incomplete")) else 0


def check_eval_models(cfg, judging: bool) -> None:
    """Every model the run loads is there, before the first one loads."""
    from pipeline.backends import BackendConfig
    from pipeline.model_source import check_adapter

    if cfg.adapter:
        check_adapter(cfg.adapter)
    if not cfg.adapter or cfg.model != BackendConfig.model:
        # With an adapter the default --model means the adapter's own base.
        ensure_default_model(cfg.model)
        check_backend_model(cfg)
    if judging:
        check_judge_model(cfg)


def eval_report(metrics: dict, out: str) -> str:
    from evaluation.report import incomplete_cell, incomplete_note, missing_verdicts
    from pipeline.runner import StageStats

    lines = ["", "summary:"] + ["  " + StageStats(**s).line() for s in metrics["stages"]]
    lines += failure_report(metrics["stages"], metrics.get("retry") or "--retry_failed true")
    lines.append(
        f"  model calls: {metrics['model_calls']}"
        + (" (everything was cached)" if metrics["model_calls"] == 0 else "")
    )
    lines.append("  Align Rate over all items (the paper's convention) / over judged items:")
    for name, m in metrics["types"].items():
        rates = (
            incomplete_cell(missing_verdicts(m))
            if missing_verdicts(m)
            else f"align {_rate(m['align_rate_all'])} / {_rate(m['align_rate'])}"
        )
        lines.append(
            f"  {name:<28} {rates}  (n {m['n']}, unparsed {m['unparsed']}, "
            f"failed {m['failed']}, cut off {m.get('truncated', 0)})"
        )
    note = incomplete_note(metrics)
    if note:
        lines.append(f"  {note}")
    else:
        lines.append(
            f"  AAR {_rate(metrics['aar_all'], 3)} over all items (the original code's "
            f"convention, comparable to the paper's 0.84); {_rate(metrics['aar'], 3)} over "
            "judged items"
        )
    if metrics.get("truncated"):
        lines.append(
            f"  {metrics['truncated']} of {metrics['n']} answers hit --max_tokens and were "
            "judged as cut off; raise it if that is not what you meant to test"
        )
    bench = metrics.get("benchmark")
    if bench:
        figures = ", ".join(f"{k} {_rate(v, 3)}" for k, v in bench.items()
                            if isinstance(v, float) or v is None)  # fmt: skip
        lines.append(f"  {bench['name']} (its own scoring): {figures}")
        lines.append(f"  source: {bench['citation']}")
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


# How to rewrite a run's metrics.json from its stored records (no model calls).
REWRITE = (
    "rewrite it from the stored records: macaroon eval --config {0}/config.json --stages report"
)


def check_metrics(metrics: object, path: Path) -> dict:
    """A metrics.json as `macaroon eval` writes it, or an error naming the file and fix."""
    keys = ("name", "types", "n", "unparsed", "failed")
    if not isinstance(metrics, dict) or not all(k in metrics for k in keys):
        raise ValueError(
            f"{path}: not the metrics.json of a `macaroon eval` run (needs "
            f"{', '.join(keys)}); {REWRITE.format(path.parent)}"
        )
    return metrics


def cmd_report(argv: Sequence[str]) -> int:
    from evaluation.agreement import agreement, agreement_table, load_verdicts
    from evaluation.compare import read_items, write_compare
    from evaluation.report import missing_verdicts, write_reports

    runs = leading_paths(argv)
    (cfg,) = parse_config([ReportConfig], list(argv)[len(runs) :], "macaroon report")
    if not runs:
        raise ValueError("give one or more run folders: macaroon report RUN_DIR... [--out DIR]")
    metrics = []
    for run in runs:
        path = Path(run) / "metrics.json"
        if Path(run).is_file():
            raise ValueError(f"{run}: is a file; give the folder of a `macaroon eval` run")
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no metrics.json; run `macaroon eval` there first")
        metrics.append(check_metrics(read_json_file(path, "metrics", REWRITE.format(run)), path))
    items = [read_items(run) for run in runs]  # before writing anything
    # `make eval-general OUT=RUN` beside `make eval OUT=RUN`: capability next to engagement.
    general = {m["name"]: read_json_file(Path(run) / "general.json", "general", "rerun "
                                         "macaroon eval-general --out " + run)
               for m, run in zip(metrics, runs, strict=True)
               if (Path(run) / "general.json").is_file()}  # fmt: skip
    types = list(dict.fromkeys(t for m in metrics for t in m["types"]))
    out = Path(cfg.out or (runs[0] if len(runs) == 1 else "outputs/eval/compare"))
    out.mkdir(parents=True, exist_ok=True)
    write_reports(metrics, types, out, general)
    write_compare(metrics, items, out / "browse.html", out / "plot.png")
    print((out / "table.md").read_text())
    if cfg.agreement:
        result = agreement(load_verdicts(runs[0]), load_verdicts(cfg.agreement))
        (out / "agreement.json").write_text(json.dumps(result, indent=2))
        (out / "agreement.md").write_text(agreement_table(result))
        print(agreement_table(result))
    print(f"report in {out} (table.md, plot.png, browse.html: the runs side by side)")
    return 1 if any(map(missing_verdicts, metrics)) else 0  # 1: a run it shows is incomplete
