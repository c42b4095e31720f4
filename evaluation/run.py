"""`macaroon eval` = generate -> judge -> report, each stage resumable and cached."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from types import ModuleType

from evaluation.compare import write_compare
from evaluation.metrics import (
    FAILED,
    UNPARSED,
    aar_ci,
    summarize,
    type_metrics,
    verdict_flags,
)
from evaluation.report import write_reports
from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_PROMPTS_DIR, DEFAULT_SAMPLES_DIR
from pipeline.adapters import (
    AdapterConfig,
    adapter_base,
    answerer_identity,
    conditioned,
    run_folder,
    run_name,
    trained_record,
)
from pipeline.backends import (
    Backend,
    BackendConfig,
    Request,
    Sampling,
    backend_identity,
    close_backend,
    on_executor,
    open_backend,
)
from pipeline.backends.trained import SharedEngine, open_trained
from pipeline.criteria import load_criteria
from pipeline.judge import (
    JudgeConfig,
    judge_explanation,
    judge_fingerprint,
    judge_item,
    load_judge_template,
    parse_verdict,
    resolve_judge,
)
from pipeline.lock import folder_lock
from pipeline.model_source import check_adapter
from pipeline.pie import find_pie_file, load_pie
from pipeline.runner import Item, StageStats, pending, run_stage, stored_stats
from pipeline.store import RecordStore, file_hash, record_key

STAGES = ("generate", "judge", "report")


@dataclass
class EvalConfig(AdapterConfig, BackendConfig, JudgeConfig):
    """`macaroon eval`: the model under test on PIE, judged by a rubric per question type."""

    pie: str = field(
        default=str(DEFAULT_SAMPLES_DIR / "evaluation_dataset.jsonl"),
        metadata={"help": "PIE file (images in images/ beside it)."},
    )
    benchmark: str = field(
        default="pie",
        metadata={"help": "pie, or an engagement benchmark read in its published format "
                  "(evaluation/benchmarks/): mmupd, vizwiz."},
    )  # fmt: skip
    data: str | None = field(
        default=None,
        metadata={"help": "The --benchmark's file (mmupd: an mm*_*.tsv; vizwiz: val.json); "
                  "default: its bundled sample."},
    )  # fmt: skip
    criteria: str = field(default=str(DEFAULT_CRITERIA_DIR), metadata={"help": "Rubrics."})
    prompts: str = field(default=str(DEFAULT_PROMPTS_DIR), metadata={"help": "Judge template."})
    out: str | None = field(default=None, metadata={"help": "Run folder (outputs/eval/NAME)."})
    name: str | None = field(default=None, metadata={"help": "Run name in tables and plots."})
    max_tokens: int = field(default=512, metadata={"help": "Token limit per answer."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy answers."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (part of every key)."})
    stages: str = field(default="generate,judge,report", metadata={"help": "Stages to run."})
    retry_failed: bool = field(default=False, metadata={"help": "Retry only failed records."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        JudgeConfig.__post_init__(self)
        if self.name is None:
            self.name = run_name(self)
        if self.out is None:
            self.out = run_folder("outputs/eval", self.name)
        unknown = {s.strip() for s in self.stages.split(",")} - set(STAGES)
        if unknown:
            raise ValueError(
                f"--stages: unknown {', '.join(sorted(unknown))}; use {', '.join(STAGES)}"
            )


def run_eval(cfg: EvalConfig, shared: SharedEngine | None = None) -> dict:
    """Run the selected stages; returns the metrics (also in OUT/metrics.json).

    Holds OUT's lock throughout: another run on OUT stops with LockError before any work.
    `shared`: the vLLM engine that answers (run_evals), instead of one of the run's own.
    """
    with folder_lock(cfg.out):
        return _eval(cfg, Path(cfg.out), shared)


def run_evals(cfgs: Sequence[EvalConfig]) -> list[dict]:
    """Evaluate the base model and several of its adapters, one run each (own OUT).

    On --backend vllm one engine, started when the first answer is needed, holds the base
    weights once and every adapter as a LoRA (multi-LoRA): a reproduction's eight rows load
    one base. Its settings (context, memory) are the first run's. Elsewhere, or when the
    runs do not share a base, each run opens its own backend.
    """
    shared = shared_engine(cfgs)
    try:
        return [run_eval(cfg, shared) for cfg in cfgs]
    finally:
        if shared is not None:
            shared.close()


def shared_engine(cfgs: Sequence[EvalConfig]) -> SharedEngine | None:
    """One vLLM engine for every run of `cfgs` (the base and its adapters as LoRAs), or
    None where they cannot share one (another backend, Ray, different bases)."""
    if not cfgs or any(c.backend != "vllm" or c.executor != "local" for c in cfgs):
        return None
    records = {c.adapter: conditioning_record(c) for c in cfgs if c.adapter}
    bases = {adapter_base(c, records[c.adapter]) if c.adapter else c.model for c in cfgs}
    if len(bases) != 1:
        return None
    return SharedEngine(cfgs[0], bases.pop(), records)


def load_items(cfg: EvalConfig, out: Path) -> tuple[list, ModuleType | None, Path]:
    """The items under test (every row checked before any model call), the benchmark's
    module (None for PIE) and the data file."""
    types = load_criteria(cfg.criteria)
    if cfg.benchmark == "pie":
        return load_pie(cfg.pie, set(types)), None, find_pie_file(cfg.pie)
    from evaluation.benchmarks import benchmark

    module = benchmark(cfg.benchmark)
    data = Path(cfg.data or module.DEFAULT_DATA)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: {cfg.benchmark} file not found")
    items = module.load(data, out / "benchmark")
    unknown = {i.question_type for i in items} - set(types) - {None}
    if unknown:
        raise ValueError(f"--criteria {cfg.criteria}: no rubric for {', '.join(sorted(unknown))}")
    return items, module, data


def _eval(cfg: EvalConfig, out: Path, shared: SharedEngine | None = None) -> dict:
    types = load_criteria(cfg.criteria)
    everything, bench, data = load_items(cfg, out)
    # Items of a question type are judged; a benchmark's control items only answered.
    items = [i for i in everything if i.question_type]
    # The config holds the name of the key's variable, never a key.
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    stages = {s.strip() for s in cfg.stages.split(",")}
    # Resolved first: a judge that cannot be reached as configured is refused before the
    # model under test spends time answering.
    judge = resolve_judge(cfg, cfg, cfg.seed, check="judge" in stages)
    stats: list[StageStats] = []
    answers = _generate(cfg, everything, out, stats, "generate" in stages, shared)
    verdicts = _judge(cfg, judge, types, items, answers, out, stats, "judge" in stages)
    metrics = _metrics(cfg, judge, types, items, answers, verdicts, stats)
    metrics["pie_fingerprint"] = file_hash(data)
    if bench is not None:
        metrics["pie"] = str(data)
        metrics["benchmark"] = bench.score(
            everything,
            {k: a["text"] for k, a in answers.items() if a and a["status"] == "ok"},
            {f"{i.image_id}\0{i.question}": verdict_of(types, i, answers, verdicts)
             for i in items},
        )  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if "report" in stages:
        write_reports([metrics], list(types), out)
        rows = [{"image_id": item.image_id, **row}
                for item, row in zip(items, _browse_rows(types, items, answers, verdicts),
                                     strict=True)]  # fmt: skip
        with open(out / "items.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        write_compare([metrics], [rows], out / "browse.html", out / "plot.png")
    return metrics


def conditioning_record(cfg) -> dict | None:
    """The training record of the model under test, its `conditioning` as this run uses it
    (pipeline/adapters.py); a missing adapter folder is "not found", not "no macaroon.json".

    `cfg`: any config with `model`, `adapter` and `conditioning` (lmms_model.AnswerConfig too).
    """
    if cfg.adapter:
        check_adapter(cfg.adapter)
    return trained_record(cfg)


def answer_backend(cfg, shared: SharedEngine | None = None) -> Backend:
    """The model under test on its backend: an adapter on every backend (hf: PEFT; vllm: a
    LoRA, merged once where it cannot be one; openai: served by name); its messages are
    left to the caller to condition with `conditioned`. Shared with evaluation/lmms_model.py."""
    if shared is not None:
        return shared.backend(cfg.adapter)
    if not cfg.adapter:
        return open_backend(cfg)
    opener = partial(open_trained, replace(cfg, executor="local"), conditioning_record(cfg))
    return on_executor(cfg, opener)


def _generate(cfg, items, out, stats, run, shared=None) -> dict[str, dict]:
    record = conditioning_record(cfg)
    # An adapter is keyed by its weights and its base, not by the backend: hf, vllm and a
    # served adapter share their answers.
    answerer = answerer_identity(cfg, record) or backend_identity(cfg)
    sampling = Sampling(max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed)
    work = []
    for item in items:
        content = [{"type": "image"}, {"type": "text", "text": item.question}]
        messages = conditioned([{"role": "user", "content": content}], record)
        key = record_key(
            stage="generate", model=answerer, image=file_hash(item.image), messages=messages,
            sampling=sampling.__dict__,
        )  # fmt: skip
        fields = {
            "image_id": item.image_id, "question": item.question,
            "question_type": item.question_type, "image": str(item.image), "model": cfg.model,
            "adapter": cfg.adapter, "method": (record or {}).get("method"),
            "backend": cfg.backend, "sampling": sampling.__dict__,
        }  # fmt: skip
        work.append(Item(key, Request(messages, (item.image,), sampling), fields))
    with RecordStore(out / "generations.jsonl") as store:
        _stage("generate", work, lambda: answer_backend(cfg, shared), store, cfg, stats, run)
        return {
            f"{i.image_id}\0{i.question}": store.get(w.key)
            for i, w in zip(items, work, strict=True)
        }


def _judge(cfg, judge, types, items, answers, out, stats, run) -> dict[str, dict]:
    template = load_judge_template(cfg.prompts)
    work, owners = [], []
    for item in items:
        answer = answers.get(f"{item.image_id}\0{item.question}")
        if not answer or answer["status"] != "ok":
            continue
        qtype = types[item.question_type]
        fields = {"image_id": item.image_id, "question": item.question,
                  "question_type": item.question_type, "response_key": answer["key"]}  # fmt: skip
        owners.append(f"{item.image_id}\0{item.question}")
        work.append((qtype, item, answer, fields))
    work = [
        judge_item(template, qtype, item.image, item.question, answer["text"], judge.identity,
                   judge.sampling, fields, judge.structured)
        for qtype, item, answer, fields in work
    ]  # fmt: skip
    with RecordStore(out / "judgments.jsonl") as store:
        _stage("judge", work, lambda: open_backend(judge.backend), store, cfg, stats, run)
        return {owner: store.get(w.key) for owner, w in zip(owners, work, strict=True)}


def _stage(name, work, opener, store, cfg, stats, run) -> None:
    if not run:
        stats.append(stored_stats(name, work, store))
        return
    backend = opener() if pending(work, store, cfg.retry_failed) else None
    try:
        stats.append(run_stage(name, work, backend, store, cfg.retry_failed, cfg.progress))
    finally:
        if backend is not None:
            close_backend(backend)


def verdict_of(types, item, answers, verdicts) -> str:
    key = f"{item.image_id}\0{item.question}"
    answer, judgment = answers.get(key), verdicts.get(key)
    if not answer or answer["status"] != "ok" or not judgment or judgment["status"] != "ok":
        return FAILED
    return parse_verdict(judgment["text"], list(types[item.question_type].labels)) or UNPARSED


def _metrics(cfg, judge, types, items, answers, verdicts, stats) -> dict:
    per_type, verdict_lists = {}, []
    for name, qtype in types.items():
        mine = [i for i in items if i.question_type == name]
        if mine:
            listed = [verdict_of(types, i, answers, verdicts) for i in mine]
            per_type[name] = type_metrics(listed, qtype.tier)
            verdict_lists.append(listed)
    usage = [v.get("usage") or [0, 0] for v in verdicts.values() if v]
    record = conditioning_record(cfg) or {}
    # Answers cut off by --max_tokens are judged as they are, and counted here.
    for name, metrics in per_type.items():
        mine = [answers.get(f"{i.image_id}\0{i.question}") for i in items
                if i.question_type == name]  # fmt: skip
        metrics["truncated"] = sum(1 for a in mine if a and a.get("finish_reason") == "length")
    summary = summarize(per_type)
    # An incomplete run has no AAR, and so no interval around one.
    intervals = {"aar_ci95": None, "aar_ci95_all": None}
    if not summary.get("incomplete"):
        intervals = {f"aar_ci95{suffix}": aar_ci([verdict_flags(v, over_all=bool(suffix))
                                                  for v in verdict_lists])
                     for suffix in ("", "_all")}  # fmt: skip
    return {
        "name": cfg.name,
        "types": per_type,
        **summary,
        **intervals,
        "n": len(items),
        "unparsed": sum(m["unparsed"] for m in per_type.values()),
        "failed": sum(m["failed"] for m in per_type.values()),
        "truncated": sum(m["truncated"] for m in per_type.values()),
        "model": {"model": cfg.model, "adapter": cfg.adapter, "method": record.get("method"),
                  "conditioning": record.get("conditioning"), "backend": cfg.backend,
                  "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "seed": cfg.seed},
        "judge": {**judge.describe(), "structured": cfg.judge_structured,
                  # Rows judged alike share this: judge, its settings, rubrics, template.
                  "fingerprint": judge_fingerprint(judge, types, cfg.prompts),
                  "prompt_tokens": sum(u[0] for u in usage),
                  "completion_tokens": sum(u[1] for u in usage)},
        "missing": missing_breakdown(items, answers, verdicts),
        "retry": retry_command(cfg.out),
        "stages": [asdict(s) for s in stats],
        "model_calls": sum(s.generated + s.failed for s in stats),
        "pie": cfg.pie,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip


def retry_command(out: str | Path) -> str:
    """The command that completes a run: its own settings, failed records retried."""
    return shlex.join(["macaroon", "eval", "--config", str(Path(out) / "config.json"),
                       "--retry_failed", "true"])  # fmt: skip


def missing_breakdown(items, answers, verdicts) -> dict[str, int]:
    """Why items have no verdict: no answer, a judge call that failed, or not judged yet."""
    counts = {"no_answer": 0, "judge_failed": 0, "not_judged": 0}
    for item in items:
        key = f"{item.image_id}\0{item.question}"
        answer, judgment = answers.get(key), verdicts.get(key)
        if not answer or answer["status"] != "ok":
            counts["no_answer"] += 1
        elif not judgment:
            counts["not_judged"] += 1
        elif judgment["status"] != "ok":
            counts["judge_failed"] += 1
    return counts


def _browse_rows(types, items, answers, verdicts) -> list[dict]:
    rows = []
    for item in items:
        key = f"{item.image_id}\0{item.question}"
        answer, judgment = answers.get(key) or {}, verdicts.get(key) or {}
        text = judgment.get("text") or judgment.get("error") or answer.get("error") or ""
        rows.append({
            "image": str(item.image), "question": item.question,
            "question_type": item.question_type, "response": answer.get("text"),
            "verdict": verdict_of(types, item, answers, verdicts),
            "explanation": judge_explanation(text),
        })  # fmt: skip
    return rows
