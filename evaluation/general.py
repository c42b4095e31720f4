"""`macaroon eval-general`: capability retention, with lmms-eval's own tasks and scoring.

The model under test (the base model, or a trained adapter with its conditioning) answers
lmms-eval tasks (default POPE, MME and ScienceQA-IMG); their scores go to OUT/general.json,
beside the PIE metrics of `make eval`.

Where the data come from (`--data`):
- `bundled` (default): datasets/samples/general/TASK/test.parquet, a few rows in each
  task's published format, so it runs on a fresh clone with no Hub access;
- a folder holding TASK/SPLIT.parquet (or .jsonl) files in the published format;
- `hub`: lmms-eval's tasks exactly as published (they download their datasets).

For local files, a task YAML is written to OUT/lmms_tasks/TASK.yaml that includes lmms-eval's
own task YAML and replaces only where the rows come from (`dataset_path: parquet` with
`data_files`), so prompts, generation settings and scoring stay lmms-eval's.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline import DEFAULT_SAMPLES_DIR
from pipeline.adapters import AnswerConfig, run_folder, run_name

BUNDLED = DEFAULT_SAMPLES_DIR / "general"
DEFAULT_TASKS = "pope,mme,scienceqa_img"
# The figure that stands for a task, and the maximum of its published scale (a general
# score is the mean of these figures over tasks, each divided by its maximum). MME's
# perception score is a sum of 200 points per perception category; its maximum is
# computed from the categories the run saw.
PRIMARY = {
    "pope": ("pope_accuracy", 1.0),
    "mme": ("mme_perception_score", None),
    "scienceqa_img": ("exact_match", 1.0),
    "macaroon_pie": ("aar_all", 1.0),
}
DATA_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@dataclass
class GeneralConfig(AnswerConfig):
    """`macaroon eval-general`: lmms-eval tasks on the base model or a trained adapter."""

    tasks: str = field(
        default=DEFAULT_TASKS, metadata={"help": "lmms-eval task names, comma-separated."}
    )
    data: str = field(
        default="bundled",
        metadata={"help": "`bundled` (datasets/samples/general), a folder of TASK/SPLIT.parquet "
                  "files in the tasks' published formats, or `hub` (lmms-eval's own datasets)."},
    )  # fmt: skip
    out: str | None = field(default=None, metadata={"help": "Run folder (outputs/general/NAME)."})
    name: str | None = field(default=None, metadata={"help": "Run name in tables and plots."})
    limit: int | None = field(default=None, metadata={"help": "At most this many rows per task."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = run_name(self)
        if self.out is None:
            self.out = run_folder("outputs/general", self.name)
        if not self.task_names():
            raise ValueError("--tasks: give one or more lmms-eval task names (pope,mme,...)")

    def task_names(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


def local_files(data: str | Path, task: str) -> tuple[str, dict[str, str]]:
    """The loader and split files of `task` in the folder `data` (DATA/TASK/SPLIT.ext)."""
    folder = Path(data) / task
    found = sorted(p for p in folder.glob("*") if p.suffix in DATA_SUFFIXES)
    if not found:
        raise FileNotFoundError(
            f"--data {data}: no {task}/SPLIT.parquet (or .jsonl) there; write the task's rows "
            "in its published format there, or use --data hub"
        )
    loaders = {DATA_SUFFIXES[p.suffix] for p in found}
    if len(loaders) > 1:
        raise ValueError(f"{folder}: files of several formats; keep one per task")
    return loaders.pop(), {p.stem: str(p.resolve()) for p in found}


@functools.cache
def lmms_task_index() -> dict[str, dict]:
    """lmms-eval's own tasks by name (type, yaml_path): it walks some 340 task folders, so
    once per process."""
    from lmms_eval.tasks import TaskManager

    return dict(TaskManager(verbosity="ERROR").task_index)


def write_overrides(tasks: list[str], data: str | Path, folder: Path) -> Path:
    """OUT/lmms_tasks/TASK.yaml for each task: lmms-eval's own YAML, the rows from `data`."""
    index = lmms_task_index()
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        if task not in index or index[task]["type"] != "task":
            raise ValueError(
                f"--tasks {task}: not an lmms-eval task (groups and tags are not supported "
                "with local data); `lmms-eval --tasks list` names them"
            )
        loader, files = local_files(data, task)
        override = {
            "include": index[task]["yaml_path"],
            "task": task,
            "dataset_path": loader,
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
        }
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    return folder


def task_manager(cfg: GeneralConfig):
    """lmms-eval's task index for the run: its own tasks (`hub`), or the overrides that read
    local files (written to OUT/lmms_tasks); every task and file checked, no model loaded."""
    from lmms_eval.tasks import TaskManager

    if cfg.data == "hub":
        return TaskManager(verbosity="ERROR")
    data = BUNDLED if cfg.data == "bundled" else Path(cfg.data)
    folder = write_overrides(cfg.task_names(), data, Path(cfg.out) / "lmms_tasks")
    return TaskManager(verbosity="ERROR", include_path=str(folder), include_defaults=False)


def run_general(cfg: GeneralConfig, model=None, manager=None) -> dict:
    """Run the tasks; returns general.json's content (also written to OUT/general.json).

    `model`: an lmms-eval model to use instead of building one from `cfg` (tests);
    `manager`: the task index `task_manager(cfg)` made."""
    from lmms_eval.evaluator import simple_evaluate

    from evaluation.lmms_model import MacaroonLMM

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    tasks = cfg.task_names()
    manager = manager or task_manager(cfg)
    answerer = model or MacaroonLMM(AnswerConfig(**_answer_options(cfg)), seed=cfg.seed)
    started = time.monotonic()
    try:
        results = simple_evaluate(
            model=answerer, tasks=tasks, task_manager=manager, limit=cfg.limit,
            log_samples=True, bootstrap_iters=0, random_seed=cfg.seed,
            process_docs_parallel=1, verbosity="ERROR",
        )  # fmt: skip
    finally:
        if model is None:
            answerer.close()
    report = general_report(cfg, results, time.monotonic() - started)
    report["failed_answers"] = len(getattr(answerer, "failed", []))
    (out / "general.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _answer_options(cfg: GeneralConfig) -> dict:
    known = AnswerConfig.__dataclass_fields__
    return {k: v for k, v in asdict(cfg).items() if k in known}


def general_report(cfg: GeneralConfig, results: dict, seconds: float) -> dict:
    """general.json: per task its metrics, its primary score and the score on a 0-1 scale."""
    tasks = {}
    for task in cfg.task_names():
        metrics = {
            key.split(",")[0]: value
            for key, value in (results["results"].get(task) or {}).items()
            if isinstance(value, int | float) and "," in key and "_stderr" not in key
        }
        samples = (results.get("samples") or {}).get(task) or []
        primary, scale = PRIMARY.get(task, (next(iter(metrics), None), 1.0))
        if task == "mme":
            scale = 200.0 * max(1, len(_mme_perception_categories(samples)))
        score = metrics.get(primary)
        tasks[task] = {
            "metric": primary,
            "score": score,
            "normalized": score / scale if _number(score) and scale else None,
            "metrics": metrics,
            "n": len(samples),
        }
    normalized = [t["normalized"] for t in tasks.values() if t["normalized"] is not None]
    return {
        "name": cfg.name,
        "tasks": tasks,
        # One capability figure per model (the report's x axis): the mean normalized score.
        "general_score": sum(normalized) / len(normalized) if normalized else None,
        "data": cfg.data,
        "model": {
            "model": cfg.model,
            "adapter": cfg.adapter,
            "backend": cfg.backend,
            "conditioning": cfg.conditioning,
        },  # fmt: skip
        "lmms_eval": _version("lmms-eval"),
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _mme_perception_categories(samples: list[dict]) -> set[str]:
    from lmms_eval.tasks.mme.utils import eval_type_dict

    seen = {(s.get("doc") or {}).get("category") for s in samples}
    return seen & set(eval_type_dict["Perception"])


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
