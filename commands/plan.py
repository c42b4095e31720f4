"""A reproduction plan: one base model, one training set, one judge, rows of METHODs.

A plan is a YAML file (configs/reproduce/*.yaml). Every mistake a plan can hold is found
here, before any model loads: an unknown key (with the nearest known one), an unknown
METHOD, a training option that METHOD's configs do not have, a row that starts from a
missing row or from itself through others, a file that is not there, a GRPO row with no
question types to reward.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from pipeline import REPO_ROOT

BASE = "base"  # a row with no training: the base model itself
TRAIN_CONFIGS = REPO_ROOT / "configs" / "train"  # METHOD: one file each (dpo_original too)
# Rows that start from another row's adapter, and the training option that takes it.
STARTS_FROM = {"sft_after_multiturn": "multiturn_adapter", "grpo": "init_adapter"}
DATA_KINDS = ("imagine", "dataset", "import")


class PlanError(ValueError):
    """A bad plan; the message names the file, the key or row, and the fix."""


@dataclass
class Row:
    name: str
    method: str
    train: dict = field(default_factory=dict)  # overrides of configs/train/METHOD.yaml
    start_from: str | None = None  # another row's name (YAML key `from`)


@dataclass
class Plan:
    path: Path
    model: str
    revision: str | None
    data: dict  # exactly one of imagine / dataset / import, plus `options` for imagine
    judge: dict  # JudgeConfig fields (judge_model, judge_base_url, ...)
    pie: str
    rows: list[Row]
    name: str = "reproduce"
    general: str | None = None
    criteria: str = "datasets/criteria"
    prompts: str = "datasets/prompts"
    generation: dict = field(default_factory=dict)  # eval options: backend, max_tokens, ...
    train: dict = field(default_factory=dict)  # overrides for every row
    published: str | None = None  # YAML of the paper's figures, shown beside ours
    # How training stages start when one process is not enough: a launcher's command line
    # (e.g. [accelerate, launch, --config_file, configs/accelerate/zero2.yaml]), to which
    # `-m commands.cli train --config ROW.yaml` is added. Unset: in this process.
    train_launch: list[str] | None = None
    # lmms-eval tasks every row also answers (`macaroon eval-general`): a column each.
    general_tasks: list[str] = field(default_factory=list)
    general_data: str = "bundled"  # bundled | hub | a folder of TASK/SPLIT.parquet

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def order(self) -> list[Row]:
        """Rows with every row after the one it starts from (the plan's order otherwise)."""
        done: list[Row] = []
        while len(done) < len(self.rows):
            for row in self.rows:
                if row not in done and (not row.start_from or self.row(row.start_from) in done):
                    done.append(row)
        return done


PLAN_KEYS = {f.name for f in fields(Plan)} - {"path"}
ROW_KEYS = {"name", "method", "train", "from"}


def load_plan(path: str | Path, overrides: dict | None = None) -> Plan:
    """Read and check the plan at `path`; `overrides` (model, pie, judge_model, ...) from
    the command line replace the plan's values."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(
            f"{path}: plan not found; pass PLAN=configs/reproduce/paper.yaml or another plan file"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise PlanError(f"{path}: not valid YAML ({err}); fix the file") from err
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: expected a mapping of plan keys ({', '.join(sorted(PLAN_KEYS))})")
    _known(raw, PLAN_KEYS, f"{path}")
    for key in ("model", "data", "judge", "pie", "rows"):
        if raw.get(key) in (None, "", [], {}):
            raise PlanError(
                f"{path}: `{key}` is missing; every plan names it (see configs/reproduce/tiny.yaml)"
            )
    raw = dict(raw)
    for key in ("judge", "generation"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise PlanError(f"{path}: `{key}` must be a mapping of options")
    raw["judge"] = dict(raw["judge"])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("judge_"):
            raw["judge"][key] = value
            if key == "judge_model" and "judge_base_url" not in (overrides or {}):
                raw["judge"].pop("judge_base_url", None)  # another judge: not that server
        elif key == "backend":
            raw["generation"] = {**(raw.get("generation") or {}), "backend": value}
        else:
            raw[key] = value
    rows = [_row(item, number, path) for number, item in enumerate(raw["rows"], start=1)]
    plan = Plan(
        path=path,
        rows=rows,
        **{k: v for k, v in raw.items() if k != "rows"} | {"revision": raw.get("revision")},
    )
    _check(plan)
    return plan


def _row(item: object, number: int, path: Path) -> Row:
    if not isinstance(item, dict) or "name" not in item or "method" not in item:
        raise PlanError(f"{path}: row {number}: give each row a `name` and a `method`")
    _known(item, ROW_KEYS, f"{path}: row {item['name']!r}")
    train = item.get("train") or {}
    if not isinstance(train, dict):
        raise PlanError(f"{path}: row {item['name']!r}: `train` must be a mapping of options")
    return Row(str(item["name"]), str(item["method"]), dict(train), item.get("from"))


def _known(raw: dict, keys: set[str], where: str) -> None:
    for key in raw:
        if key not in keys:
            near = difflib.get_close_matches(str(key), sorted(keys), n=1)
            hint = f"did you mean `{near[0]}`?" if near else f"known: {', '.join(sorted(keys))}"
            raise PlanError(f"{where}: unknown key `{key}`; {hint}")


def methods() -> list[str]:
    """What a row's `method` may be: base, or a file of configs/train (as `make train`)."""
    return sorted(p.stem for p in TRAIN_CONFIGS.glob("*.yaml"))


def trainer_method(method: str) -> str:
    """The METHOD a config file trains (dpo_original.yaml trains `dpo`)."""
    data = yaml.safe_load((TRAIN_CONFIGS / f"{method}.yaml").read_text(encoding="utf-8"))
    return (data or {}).get("method", method)


def _check(plan: Plan) -> None:
    where = str(plan.path)
    names = [row.name for row in plan.rows]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise PlanError(f"{where}: row name(s) {', '.join(doubled)} used twice; names are unique")
    for row in plan.rows:
        if row.method != BASE and row.method not in methods():
            raise PlanError(
                f"{where}: row {row.name!r}: unknown method {row.method!r}; choose one of "
                f"{BASE}, {', '.join(methods())} (configs/train/METHOD.yaml)"
            )
        trains = trainer_method(row.method) if row.method != BASE else BASE
        if row.start_from is not None:
            if trains not in STARTS_FROM:
                raise PlanError(
                    f"{where}: row {row.name!r}: METHOD={row.method} does not start from another "
                    f"row's adapter; only {', '.join(STARTS_FROM)} do (remove `from`)"
                )
            if row.start_from not in names:
                raise PlanError(
                    f"{where}: row {row.name!r} starts from {row.start_from!r}, which is not a "
                    f"row of this plan (rows: {', '.join(names)})"
                )
        elif trains == "sft_after_multiturn":
            raise PlanError(
                f"{where}: row {row.name!r}: sft_after_multiturn starts from a "
                "multiturn row: add `from: NAME` naming it"
            )
        if row.method == BASE and row.train:
            raise PlanError(f"{where}: row {row.name!r}: a base row trains nothing; remove `train`")
    _check_cycles(plan)
    _check_general(plan)
    for row in plan.rows:
        if row.method != BASE:
            _check_train_options(plan, row)
    launch = plan.train_launch
    if launch is not None and not (
        isinstance(launch, list) and all(isinstance(a, str) for a in launch)
    ):
        raise PlanError(
            f"{where}: `train_launch` must be a list of words, e.g. [accelerate, "
            "launch, --config_file, configs/accelerate/zero2.yaml]"
        )
    _check_files(plan)
    _check_data(plan)
    _check_types(plan)


def _check_general(plan: Plan) -> None:
    tasks = plan.general_tasks
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise PlanError(
            f"{plan.path}: `general_tasks` must be a list of lmms-eval task names, "
            "e.g. [pope, mme, scienceqa_img]"
        )
    data = plan.general_data
    if tasks and data not in ("bundled", "hub") and not resolve_path(str(data)).is_dir():
        raise PlanError(
            f"{plan.path}: general_data {data}: not found; give bundled, hub or a folder of "
            "TASK/SPLIT.parquet files"
        )


def _check_cycles(plan: Plan) -> None:
    for row in plan.rows:
        seen, current = [row.name], row
        while current.start_from:
            if current.start_from in seen:
                loop = " -> ".join([*seen[seen.index(current.start_from) :], current.start_from])
                raise PlanError(f"{plan.path}: rows start from each other in a circle: {loop}")
            seen.append(current.start_from)
            current = plan.row(current.start_from)


def train_classes(method: str) -> list[type]:
    """The config dataclasses that parse `macaroon train` for METHOD (commands/train.py)."""
    from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig

    from trainers.config import METHODS, MacaroonTrainConfig, RewardJudgeConfig

    trainer = METHODS[trainer_method(method)][1]
    classes = [
        MacaroonTrainConfig,
        ModelConfig,
        {"dpo": DPOConfig, "grpo": GRPOConfig}.get(trainer, SFTConfig),
    ]
    return classes + ([RewardJudgeConfig] if trainer == "grpo" else [])


def _check_train_options(plan: Plan, row: Row) -> None:
    known = {f.name for cls in train_classes(row.method) for f in fields(cls)}
    for scope, options in (("train", plan.train), (f"row {row.name!r}: train", row.train)):
        for key in options:
            if key not in known:
                near = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean `{near[0]}`?" if near else ""
                raise PlanError(
                    f"{plan.path}: {scope}: `{key}` is no option of `macaroon train "
                    f"--method {row.method}`{hint}"
                )


def resolve_path(path: str) -> Path:
    """A plan's path: as given, else from the repository root (bundled files)."""
    given = Path(path)
    return given if given.exists() or given.is_absolute() else REPO_ROOT / given


def _check_files(plan: Plan) -> None:
    wanted = {"pie": plan.pie, "criteria": plan.criteria, "prompts": plan.prompts}
    if plan.general:
        wanted["general"] = plan.general
    if plan.published:
        wanted["published"] = plan.published
    for key, value in wanted.items():
        if not resolve_path(value).exists():
            raise PlanError(
                f"{plan.path}: {key} {value}: not found; fix the path in the plan "
                f"or override it ({key.upper()}=...)"
            )


def _check_data(plan: Plan) -> None:
    data = plan.data
    if not isinstance(data, dict):
        raise PlanError(f"{plan.path}: `data` must be a mapping: one of {', '.join(DATA_KINDS)}")
    _known(data, {*DATA_KINDS, "options"}, f"{plan.path}: data")
    kinds = [k for k in DATA_KINDS if k in data]
    if len(kinds) != 1:
        raise PlanError(
            f"{plan.path}: data: give exactly one of {', '.join(DATA_KINDS)} "
            f"(got {', '.join(kinds) or 'none'})"
        )
    if "options" in data and kinds != ["imagine"]:
        raise PlanError(f"{plan.path}: data: `options` are imagine's; remove them")
    value = data[kinds[0]]
    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(p, str) for p in paths):
        raise PlanError(f"{plan.path}: data: {kinds[0]}: give a path (import: a list of files)")
    for item in paths:
        if not resolve_path(item).exists():
            raise PlanError(f"{plan.path}: data: {kinds[0]} {item}: not found; fix the path")


def data_kind(plan: Plan) -> str:
    return next(k for k in DATA_KINDS if k in plan.data)


def _check_types(plan: Plan) -> None:
    """GRPO rewards an answer by its question type's rubric: the original MACAROON files
    carry no type, so a GRPO row on them needs its own typed prompts."""
    grpo = [
        r
        for r in plan.rows
        if r.method != BASE and trainer_method(r.method) == "grpo" and not r.train.get("data")
    ]
    if not grpo or data_kind(plan) != "import":
        return
    files = plan.data["import"]
    untyped = sum(
        _records(resolve_path(f)) for f in (files if isinstance(files, list) else [files])
    )
    raise PlanError(
        f"{plan.path}: row(s) {', '.join(r.name for r in grpo)}: METHOD=grpo rewards each "
        f"answer by its question type's rubric, and the original MACAROON files carry no "
        f"question type ({untyped} of {untyped} records untyped). Give such a row typed "
        "prompts: `train: {data: QUESTIONS.jsonl}` (PIE layout: Image ID, Question, Question "
        "Type; images/ beside it) or an imagined set (`data: {imagine: ...}`)"
    )


def _records(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return sum(1 for line in text.splitlines() if line.strip())
        data = json.loads(text)
        return len(data) if isinstance(data, list) else 1
    except (OSError, ValueError):
        return 0
