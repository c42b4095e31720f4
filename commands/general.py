"""`macaroon eval-general`: lmms-eval tasks (POPE, MME, ScienceQA-IMG, ...) on the base model
or a trained adapter, scores in OUT/general.json (capability retention)."""

from __future__ import annotations

from collections.abc import Sequence

from commands.common import check_backend_model, ensure_default_model
from pipeline.config import parse_config
from pipeline.lock import folder_lock


def cmd_eval_general(argv: Sequence[str]) -> int:
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        raise ValueError(
            "lmms-eval is not installed; `make setup` installs it (the `lmms` extra), or "
            "pip install -e '.[lmms]'"
        ) from None
    from evaluation.general import GeneralConfig, run_general, task_manager
    from pipeline.backends import BackendConfig
    from pipeline.model_source import check_adapter

    (cfg,) = parse_config([GeneralConfig], argv, "macaroon eval-general")
    with folder_lock(cfg.out):  # before any model loads: a refused run does nothing
        manager = task_manager(cfg)  # every task and data file checked first
        if cfg.adapter:
            check_adapter(cfg.adapter)
        if not cfg.adapter or cfg.model != BackendConfig.model:
            ensure_default_model(cfg.model)
            check_backend_model(cfg)
        report = run_general(cfg, manager=manager)
    print(general_summary(report, cfg.out))
    return 1 if report["failed_answers"] else 0


def general_summary(report: dict, out: str) -> str:
    lines = ["", f"general tasks ({report['data']} data), {report['name']}:"]
    for task, result in report["tasks"].items():
        score = result["score"]
        shown = "–" if score is None else f"{score:.4g}"
        lines.append(f"  {task:<16} {result['metric']} {shown}  (n {result['n']})")
    general = report["general_score"]
    lines.append(
        "  general score (mean of the scores on a 0-1 scale): "
        + ("–" if general is None else f"{general:.3f}")
    )
    if report["failed_answers"]:
        lines.append(
            f"  {report['failed_answers']} answers failed and were scored as empty; see the log"
        )
    lines.append(f"  results in {out}/general.json")
    return "\n".join(lines)
