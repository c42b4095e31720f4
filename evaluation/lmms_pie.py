"""PIE as an lmms-eval task (evaluation/lmms_tasks/pie/): rows, prompts, our judge, our metrics.

lmms-eval reads the PIE file with its own json loader (`dataset_path: json`, `data_files`);
this module is what the task's `utils.py` calls:

- `process_docs` checks every row as `macaroon eval` does (pipeline/pie.py) and adds the
  image's path (`images/<Image ID>.jpg`, in `MACAROON_PIE_IMAGES` or beside the bundled
  sample file);
- `doc_to_visual` / `doc_to_text` give the image and the question exactly as `macaroon eval`
  sends them;
- `process_results` judges each answer with the rubric judge (pipeline/judge.py: the same
  template, rubric, parser and record keys as `macaroon eval`), its verdicts kept in a record
  store (`MACAROON_JUDGE_RECORDS`), so a rerun on the same answers makes no judge call;
- the aggregations are evaluation/metrics.py's: per-type Align Rate and AAR, both
  conventions, computed exactly as `make eval` computes them.

The judge is configured by environment variables (lmms-eval passes no options to a task):
`MACAROON_JUDGE_MODEL`, `MACAROON_JUDGE_BASE_URL`, `MACAROON_JUDGE_BACKEND`,
`MACAROON_JUDGE_API_KEY_ENV`, `MACAROON_JUDGE_MAX_TOKENS`, `MACAROON_JUDGE_STRUCTURED`,
`MACAROON_JUDGE_CONCURRENCY`; the rubrics and template by `MACAROON_CRITERIA` and
`MACAROON_PROMPTS` (default: the bundled ones).
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from evaluation.metrics import FAILED, UNPARSED, summarize, type_metrics
from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_PROMPTS_DIR, DEFAULT_SAMPLES_DIR
from pipeline.backends import close_backend, open_backend
from pipeline.criteria import QuestionType, load_criteria
from pipeline.images import open_image
from pipeline.judge import (
    Judge,
    JudgeConfig,
    judge_item,
    load_judge_template,
    parse_verdict,
    resolve_judge,
)
from pipeline.pie import PieError, check_row
from pipeline.runner import run_stage
from pipeline.store import RecordStore

TASK_DIR = Path(__file__).resolve().parent / "lmms_tasks"
DEFAULT_RECORDS = "outputs/lmms-eval/pie/judgments.jsonl"
# The judge options an environment variable may set, and how each is read.
JUDGE_ENV = {
    "judge_backend": ("MACAROON_JUDGE_BACKEND", str),
    "judge_model": ("MACAROON_JUDGE_MODEL", str),
    "judge_base_url": ("MACAROON_JUDGE_BASE_URL", str),
    "judge_api_key_env": ("MACAROON_JUDGE_API_KEY_ENV", str),
    "judge_max_tokens": ("MACAROON_JUDGE_MAX_TOKENS", int),
    "judge_concurrency": ("MACAROON_JUDGE_CONCURRENCY", int),
    "judge_structured": ("MACAROON_JUDGE_STRUCTURED", lambda v: v.lower() in ("1", "true")),
}


def criteria_dir() -> Path:
    return Path(os.environ.get("MACAROON_CRITERIA") or DEFAULT_CRITERIA_DIR)


def prompts_dir() -> Path:
    return Path(os.environ.get("MACAROON_PROMPTS") or DEFAULT_PROMPTS_DIR)


def pie_images() -> Path:
    """Where the PIE images are: `MACAROON_PIE_IMAGES`, else the bundled samples'."""
    return Path(os.environ.get("MACAROON_PIE_IMAGES") or DEFAULT_SAMPLES_DIR / "images")


def judge_config_from_env() -> JudgeConfig:
    """JudgeConfig defaults, with what the MACAROON_JUDGE_* variables say."""
    values = {}
    for name, (variable, read) in JUDGE_ENV.items():
        if os.environ.get(variable):
            try:
                values[name] = read(os.environ[variable])
            except ValueError as err:
                raise ValueError(f"${variable}={os.environ[variable]!r}: {err}") from err
    known = {f.name for f in fields(JudgeConfig)}
    return JudgeConfig(**{k: v for k, v in values.items() if k in known})


def process_docs(dataset):
    """Every row checked as `macaroon eval` checks it (all bad rows listed at once), and the
    path of its image added as `image_path`."""
    types = set(load_criteria(criteria_dir()))
    images = pie_images()
    errors = []
    for number, row in enumerate(dataset, start=1):
        _, problem = check_row(row, number, images, types)
        if problem:
            errors.append(f"  row {number}: {problem}")
    if errors:
        listing = "\n".join(errors)
        raise PieError(
            f"PIE task: {len(errors)} bad row(s) (images from {images}; set "
            f"MACAROON_PIE_IMAGES to the PIE images folder):\n{listing}"
        )
    return dataset.map(
        lambda row: {"image_path": str(images / f"{row['Image ID']}.jpg")}, keep_in_memory=True
    )


def doc_to_visual(doc: dict) -> list:
    return [open_image(doc["image_path"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question as `macaroon eval` asks it (the task adds no prompt of its own)."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['Question']}{kwargs.get('post_prompt', '')}"


class PieJudge:
    """One judge for a task run: resolved once, its verdicts in one record store.

    lmms-eval calls process_results from several threads: the store and backend are shared
    under one lock (a judgment already stored is read back without a call)."""

    def __init__(self, records: str | Path | None = None):
        self.types: dict[str, QuestionType] = load_criteria(criteria_dir())
        self.template = load_judge_template(prompts_dir())
        self.judge: Judge = resolve_judge(judge_config_from_env())
        self.store = RecordStore(records or os.environ.get("MACAROON_JUDGE_RECORDS")
                                 or DEFAULT_RECORDS)  # fmt: skip
        self.backend = None
        self.calls = 0
        self._lock = threading.Lock()

    def verdict(self, doc: dict, answer: str) -> str:
        """The answer's verdict label, `unparsed` or `failed` (evaluation/metrics.py)."""
        qtype = self.types[doc["Question Type"]]
        fields_ = {"image_id": doc["Image ID"], "question": doc["Question"],
                   "question_type": doc["Question Type"]}  # fmt: skip
        item = judge_item(
            self.template, qtype, doc["image_path"], doc["Question"], answer,
            self.judge.identity, self.judge.sampling, fields_, self.judge.structured,
        )  # fmt: skip
        with self._lock:
            if not self.store.is_ok(item.key):
                if self.backend is None:
                    self.backend = open_backend(self.judge.backend)
                run_stage("judge", [item], self.backend, self.store, True, False)
                self.store.flush()
                self.calls += 1
            record = self.store.get(item.key)
        if not record or record["status"] != "ok":
            return FAILED
        return parse_verdict(record["text"], list(qtype.labels)) or UNPARSED

    def close(self) -> None:
        with self._lock:
            if self.backend is not None:
                close_backend(self.backend)
                self.backend = None
            self.store.close()


_SESSION: list[PieJudge] = []
_SESSION_LOCK = threading.Lock()


def session() -> PieJudge:
    """The process's judge, opened on first use and closed at exit."""
    with _SESSION_LOCK:
        if not _SESSION:
            _SESSION.append(PieJudge())
            atexit.register(close_session)
        return _SESSION[0]


def close_session() -> None:
    """Close the judge (its server connection and record store); the next use opens anew."""
    with _SESSION_LOCK:
        while _SESSION:
            _SESSION.pop().close()


def metric_names() -> list[str]:
    """The task's metrics: the aggregates, then one Align Rate per bundled question type."""
    return [*AGGREGATES, *(type_metric(name) for name in load_criteria(DEFAULT_CRITERIA_DIR))]


AGGREGATES = ("aar_all", "aar", "aar_weighted_all", "aar_weighted")


def type_metric(name: str) -> str:
    """`False Premise` -> `align_rate_all_false_premise` (the paper's convention)."""
    return "align_rate_all_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def process_results(doc: dict, results: list[str]) -> dict:
    """Judge the answer; every metric receives the same verdict record."""
    answer = results[0] if results else ""
    judge = session()
    verdict = judge.verdict(doc, answer)
    value = {"question_type": doc["Question Type"], "verdict": verdict,
             "tier": judge.types[doc["Question Type"]].tier}  # fmt: skip
    return dict.fromkeys(metric_names(), value)


def pie_metrics(values: list[dict]) -> dict:
    """evaluation/metrics.py over verdict records: per type in criteria order, then the
    summary, as `macaroon eval` computes them."""
    order = list(load_criteria(criteria_dir()))
    by_type: dict[str, list[str]] = {}
    tiers = {}
    for value in values:
        by_type.setdefault(value["question_type"], []).append(value["verdict"])
        tiers[value["question_type"]] = value["tier"]
    per_type = {name: type_metrics(by_type[name], tiers[name]) for name in order if name in by_type}
    return {"types": per_type, **summarize(per_type)}


def _number(value: float | None) -> float:
    # lmms-eval's tables need a number: a figure with no verdict behind it (an incomplete
    # run, metrics.py) is NaN there, never 0.
    return float("nan") if value is None else value


def aggregate(key: str) -> Callable[[list[dict]], float]:
    """The aggregation of one summary figure (`aar_all`, `aar`, ...)."""

    def aggregation(values: list[dict]) -> float:
        return _number(pie_metrics(values)[key])

    aggregation.__name__ = f"pie_{key}"
    return aggregation


def aggregate_type(name: str) -> Callable[[list[dict]], float]:
    """The aggregation of one type's Align Rate over all items (the paper's convention)."""

    def aggregation(values: list[dict]) -> float:
        metrics = pie_metrics(values)["types"].get(name)
        return _number(metrics["align_rate_all"] if metrics else None)

    aggregation.__name__ = type_metric(name)
    return aggregation
