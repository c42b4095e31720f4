"""`macaroon imagine`: questions -> responses -> filter -> build, resumable and cached."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from imagination.browse import write_browse, write_pairs
from imagination.build import dataset_rows, write_dataset
from imagination.filters import (
    UNJUDGEABLE,
    combine,
    pair_up,
    removed_by,
    rule_reasons,
)
from imagination.prompts import load_templates
from imagination.questions import clean_question, question_items, user_questions
from imagination.responses import KINDS, response_items
from imagination.review import (
    Review,
    apply_marks,
    read_marks,
    remember,
    resolve_review,
    set_identity,
)
from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_PROMPTS_DIR, DEFAULT_SAMPLES_DIR
from pipeline.adapters import (
    AdapterConfig,
    ConditionedBackend,
    adapter_base,
    answerer_identity,
    trained_record,
)
from pipeline.backends import (
    Backend,
    BackendConfig,
    Sampling,
    backend_identity,
    close_backend,
    open_backend,
)
from pipeline.backends.trained import open_trained
from pipeline.criteria import criteria_hash, load_criteria
from pipeline.images import list_images
from pipeline.judge import (
    JudgeConfig,
    judge_explanation,
    judge_item,
    load_judge_template,
    parse_verdict,
    resolve_judge,
)
from pipeline.lock import folder_lock
from pipeline.runner import StageStats, pending, run_stage, stored_stats
from pipeline.store import RecordStore


@dataclass
class ImagineConfig(AdapterConfig, BackendConfig, JudgeConfig):
    """`macaroon imagine`: build the contrastive preference set from images and criteria."""

    # With --adapter a trained model imagines (a second round of self-imagination from the
    # CRL model): every prompt gets its conditioning, and every key its identity.

    images: str = field(
        default=str(DEFAULT_SAMPLES_DIR / "images"), metadata={"help": "Image folder."}
    )
    questions: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of your own questions ({image, question, question_type}) instead of "
            "imagined ones; image paths relative to --images."
        },
    )
    criteria: str = field(default=str(DEFAULT_CRITERIA_DIR), metadata={"help": "Criteria."})
    prompts: str = field(default=str(DEFAULT_PROMPTS_DIR), metadata={"help": "Templates."})
    out: str = field(default="outputs/imagine", metadata={"help": "Output folder."})
    questions_per_type: int = field(default=1, metadata={"help": "Questions per image and type."})
    question_max_tokens: int = field(default=64, metadata={"help": "Token limit per question."})
    question_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    response_max_tokens: int = field(default=256, metadata={"help": "Token limit per response."})
    response_temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling (temperature > 0)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (part of every key)."})
    max_response_chars: int = field(default=2000, metadata={"help": "Longer pairs are dropped."})
    drop_truncated: bool = field(
        default=True,
        metadata={"help": "Drop pairs whose response hit --response_max_tokens (cut off "
                  "mid-answer); false keeps them (the demo's random model never stops)."},
    )  # fmt: skip
    judge_filter: bool = field(
        default=False,
        metadata={
            "help": "Keep a pair only if the judge passes the preferred and fails the rejected."
        },
    )
    # The judge's options are JudgeConfig's; here it is, unless told otherwise, the
    # imagining model itself (on its endpoint), and a verdict needs fewer tokens.
    judge_model: str | None = field(
        default=None,
        metadata={"help": "Judge model (default: the imagining model, at --base_url)."},
    )
    judge_max_tokens: int = field(default=128, metadata={"help": "Token limit per verdict."})
    review: str | None = field(
        default=None,
        metadata={"help": "Marks file exported from browse.html: pairs marked drop leave the "
                  "dataset, a keep overrules the judge. Remembered as OUT/review.json, which "
                  "later runs on OUT apply; `none` builds without it and forgets it."},
    )  # fmt: skip
    retry_failed: bool = field(default=False, metadata={"help": "Retry only failed records."})
    stages: str = field(
        default="questions,responses,judge,build",
        metadata={
            "help": "Stages to run, comma-separated; a stage left out only reads what its "
            "record file holds (e.g. `build` alone rebuilds the dataset with no model calls)."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


class _LazyBackend:
    """Opens the backend on first use, so a fully cached run loads no model at all.

    `record`: the trained model's record (ImagineConfig.adapter, or a model folder's own);
    its conditioning goes before every prompt.
    """

    def __init__(self, cfg: BackendConfig, record: dict | None = None):
        self.cfg, self.backend, self.record = cfg, None, record
        self.model_id = cfg.model

    def get(self) -> Backend:
        if self.backend is None:
            adapter = getattr(self.cfg, "adapter", None)
            backend = open_trained(self.cfg, self.record) if adapter else open_backend(self.cfg)
            has_token = self.record and self.record.get("conditioning")
            self.backend = ConditionedBackend(backend, self.record) if has_token else backend
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            close_backend(self.backend)


def run_imagine(cfg: ImagineConfig) -> dict:
    """Run every stage; returns the summary (also written to OUT/summary.json).

    Holds OUT's lock throughout: another run on OUT stops with LockError before any work.
    """
    with folder_lock(cfg.out):
        return _imagine(cfg, Path(cfg.out))


def _imagine(cfg: ImagineConfig, out: Path) -> dict:
    _stages(cfg)  # reject a bad --stages before any work
    review_path = resolve_review(cfg.review, out)
    marks = read_marks(review_path) if review_path else None  # a bad file stops us here
    types = load_criteria(cfg.criteria)
    templates = load_templates(cfg.prompts)
    record = trained_record(cfg)
    lazy = _LazyBackend(cfg, record)
    started = time.monotonic()
    stats: list[StageStats] = []
    try:
        identity = imagining_identity(cfg, record)
        questions = _questions(cfg, types, templates, lazy, out, stats, identity)
        responses = _responses(cfg, types, templates, questions, lazy, out, stats, identity)
    finally:
        lazy.close()
    pairs = pair_up(questions, responses)
    identity = set_identity(pairs, out, criteria_hash(types))
    # Checked before any model call of the judge and before anything is written.
    review = apply_marks(marks, pairs, identity) if marks else None
    rules = rule_reasons(pairs, cfg.max_response_chars, cfg.drop_truncated)
    judgments = _judge(cfg, types, out, stats)(pairs, rules) if cfg.judge_filter else None
    judged = [j and j["reason"] for j in judgments] if judgments else [None] * len(pairs)
    mark = review.marks if review else [None] * len(pairs)
    reasons = [combine(*filters) for filters in zip(rules, judged, mark, strict=True)]
    kept = [pair for pair, reason in zip(pairs, reasons, strict=True) if reason is None]
    dropped = Counter(reason for reason in reasons if reason)
    for i, pair in enumerate(pairs):  # what each filter said, for browse.html
        pair["criteria_hash"] = types[pair["question_type"]].content_hash  # now, not the question's
        pair["rule"], pair["judge"] = rules[i], judgments[i] if judgments else None
        pair["review"] = {"mark": mark[i], "note": review.notes[i]} if mark[i] else None
    write_pairs(pairs, reasons, out)  # every pair, kept or dropped with why: for browsing
    model = f"{adapter_base(cfg, record)}+{cfg.adapter}" if cfg.adapter else cfg.model
    card = {
        "model": model,
        "adapter": cfg.adapter,
        "conditioning": (record or {}).get("conditioning"),
        "backend": cfg.backend,
        "criteria_dir": cfg.criteria,
        "criteria_hash": criteria_hash(types),
        "types": list(types),
        "images": cfg.images,
        "stages": [asdict(s) for s in stats],
        "dropped": dict(dropped),
        "removed_by": removed_by(rules, judged, mark),
        "judge_filter": cfg.judge_filter,
        "review": _review_report(review, rules, judged),
        "set": identity,
        "sampling": {
            "questions": _sampling(cfg, "question"),
            "responses": _sampling(cfg, "response"),
        },
    }
    rows = dataset_rows(kept, types, templates["feedback"], model)
    folder = write_dataset(rows, out, card) if kept and "build" in _stages(cfg) else None
    remember(review_path, out)  # after the build: a failed one changes nothing
    summary = {
        **card,
        "pairs": len(pairs),
        "kept": len(kept),
        "rows": {name: len(items) for name, items in rows.items()},
        "dataset": str(folder) if folder else None,
        "model_calls": sum(s.generated + s.failed for s in stats),
        "seconds": round(time.monotonic() - started, 2),
    }
    summary["browse"] = str(write_browse(out, summary=summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _review_report(review: Review | None, rules: list, judged: list) -> dict | None:
    if review is None:
        return None
    report = review.report()
    # A keep overrules the judge, not the rules: say where it did either.
    pairs = list(zip(review.marks, rules, judged, strict=True))
    report["restored"] = sum(m == "keep" and not r and bool(j) for m, r, j in pairs)
    report["keep_on_rule_dropped"] = sum(m == "keep" and bool(r) for m, r, _ in pairs)
    return report


def imagining_identity(cfg: ImagineConfig, record: dict | None) -> dict:
    """What decides the imagined text, for record keys: the model (an adapter by its weights
    and base, whatever the backend) and the conditioning put before every prompt."""
    identity = answerer_identity(cfg, record) or backend_identity(cfg)
    if record and record.get("conditioning"):
        identity = {**identity, "conditioning": record["conditioning"]}
    return identity


def _judge(cfg: ImagineConfig, types, out: Path, stats: list[StageStats]):
    """Judge both responses of every pair that has two (cached like every stage), the pairs
    the rules drop too, so the page shows where the judge and the rules disagree.

    Returns a function of (pairs, rule reasons) giving per pair its judgment (None where it
    was not judged): {"reason": a JUDGE_REASONS entry or None, "preferred": {"verdict",
    "explanation"}, "rejected": {...}}."""
    template = load_judge_template(cfg.prompts)
    # The imagining model judges without a key unless it is an API model: checked there.
    # With a local adapter, its base judges (--judge_model names another judge).
    runtime = cfg
    if cfg.adapter and cfg.backend != "openai":
        runtime = replace(cfg, model=adapter_base(cfg, trained_record(cfg)))
    resolved = resolve_judge(cfg, runtime, cfg.seed, check=False)

    def judge(pairs: list[dict], rules: list[str | None]) -> list[dict | None]:
        chosen = [i for i, rule in enumerate(rules) if rule not in UNJUDGEABLE]
        items = [
            judge_item(template, types[pairs[i]["question_type"]], pairs[i]["image"],
                       pairs[i]["question"], pairs[i][kind], resolved.identity,
                       resolved.sampling, structured=resolved.structured)
            for i in chosen for kind in KINDS
        ]  # fmt: skip
        lazy = _LazyBackend(resolved.backend)
        try:
            with RecordStore(out / "judgments.jsonl") as store:
                _run("judge", items, lazy, store, cfg, stats)
                records = [store.get(item.key) for item in items]
        finally:
            lazy.close()
        judgments: list[dict | None] = [None] * len(pairs)
        for n, i in enumerate(chosen):
            qtype = types[pairs[i]["question_type"]]
            judgments[i] = _judged(qtype, records[2 * n], records[2 * n + 1])
        return judgments

    return judge


def _judged(qtype, preferred: dict | None, rejected: dict | None) -> dict:
    said = {"preferred": _verdict(qtype, preferred), "rejected": _verdict(qtype, rejected)}
    verdicts = [said[kind]["verdict"] for kind in KINDS]
    if "failed" in verdicts:
        reason = "judge_failed"
    elif None in verdicts:
        reason = "judge_unparsed"
    else:
        reason = None if verdicts == ["True", "False"] else "judge_rejected"
    return {"reason": reason, **said}


def _verdict(qtype, record: dict | None) -> dict:
    """One response's verdict ("failed" when the judge call failed) and the explanation."""
    if not record or record["status"] == "failed":
        why = record.get("error") if record else "no judgment stored"
        return {"verdict": "failed", "explanation": why or ""}
    return {
        "verdict": parse_verdict(record["text"], list(qtype.labels)),
        "explanation": judge_explanation(record["text"]),
    }


def _sampling(cfg: ImagineConfig, stage: str) -> dict:
    return asdict(_stage_sampling(cfg, stage))


def _stage_sampling(cfg: ImagineConfig, stage: str) -> Sampling:
    temperature = getattr(cfg, f"{stage}_temperature")
    return Sampling(
        max_tokens=getattr(cfg, f"{stage}_max_tokens"),
        temperature=temperature,
        top_p=cfg.top_p if temperature > 0 else 1.0,
        seed=cfg.seed,
    )


def _run(name, items, lazy, store, cfg, stats) -> None:
    if name not in _stages(cfg):
        stats.append(stored_stats(name, items, store))
        return
    backend = lazy.get() if pending(items, store, cfg.retry_failed) else None
    stats.append(run_stage(name, items, backend, store, cfg.retry_failed, cfg.progress))


STAGES = ("questions", "responses", "judge", "build")


def _stages(cfg: ImagineConfig) -> set[str]:
    stages = {s.strip() for s in cfg.stages.split(",") if s.strip()}
    unknown = stages - set(STAGES)
    if unknown:
        raise ValueError(f"--stages: unknown {', '.join(sorted(unknown))}; use {', '.join(STAGES)}")
    return stages


def _questions(cfg, types, templates, lazy, out, stats, identity) -> list[dict]:
    if cfg.questions:
        rows = user_questions(cfg.questions, types, cfg.images)
        stats.append(StageStats("questions", total=len(rows), cached=len(rows)))
        return rows
    images = list_images(cfg.images)
    items = question_items(
        images, types, templates["question"], identity, cfg.questions_per_type,
        _stage_sampling(cfg, "question"),
    )  # fmt: skip
    with RecordStore(out / "questions.jsonl") as store:
        _run("questions", items, lazy, store, cfg, stats)
        records = [store.get(item.key) for item in items]
    questions = []
    for record in records:
        if record and record["status"] == "ok":
            questions.append({**record, "question": clean_question(record["text"])})
    return questions


def _responses(cfg, types, templates, questions, lazy, out, stats, identity) -> dict:
    items = response_items(
        [q for q in questions if q["question"]], types, templates, identity,
        _stage_sampling(cfg, "response"),
    )  # fmt: skip
    with RecordStore(out / "responses.jsonl") as store:
        _run("responses", items, lazy, store, cfg, stats)
        records = [store.get(item.key) for item in items]
    return {(r["question_key"], r["kind"]): r for r in records if r and r["status"] == "ok"}
