"""Commands that make and inspect data: tiny-model, criteria, imagine, build, browse, import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from commands.common import (
    check_backend_model,
    check_judge_model,
    ensure_default_model,
    failure_report,
    leading_paths,
    retry_command,
)
from pipeline import DEFAULT_CRITERIA_DIR
from pipeline.config import parse_config
from pipeline.lock import folder_lock


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


def cmd_imagine(
    argv: Sequence[str], prog: str = "macaroon imagine", stages: str | None = None
) -> int:
    from imagination.imagine import ImagineConfig, run_imagine

    (cfg,) = parse_config([ImagineConfig], argv, prog)
    if stages:
        cfg.stages = stages
    if cfg.stages.strip() == "build" and not _has_records(Path(cfg.out) / "responses.jsonl"):
        raise ValueError(
            f"--out {cfg.out}: holds no imagined records (responses.jsonl) to build from; "
            f"run `macaroon imagine --out {cfg.out}` first (build makes no model calls)"
        )
    with folder_lock(cfg.out):  # before building a model: a refused run does nothing
        if not cfg.adapter:  # with an adapter the default means the adapter's own base
            ensure_default_model(cfg.model)
            check_backend_model(cfg)
        if cfg.judge_filter:
            check_judge_model(cfg)
        summary = run_imagine(cfg)
    print(imagine_report(summary, retry_command("macaroon imagine", argv)))
    failed = sum(s["failed"] + s["skipped_failed"] for s in summary["stages"])
    return 1 if failed else 0  # the exit status says whether every record was made


def _has_records(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def imagine_report(summary: dict, retry: str = "macaroon imagine --retry_failed true") -> str:
    from pipeline.runner import StageStats

    lines = ["", "summary:"]
    lines += ["  " + StageStats(**s).line() for s in summary["stages"]]
    lines += failure_report(summary["stages"], retry)
    dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()) or "none"
    lines.append(
        f"  filter     {summary['pairs']} pairs: {summary['kept']} kept; dropped: {dropped}"
    )
    lines += review_lines(summary)
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


def review_lines(summary: dict) -> list[str]:
    removed = summary.get("removed_by")
    if not removed:
        return []
    judge = removed["judge"] if summary.get("judge_filter") else "not run"
    review = summary.get("review")
    lines = [f"  removed    rules {removed['rules']}, judge {judge}, review "
             f"{removed['review'] if review else 'none'}"]  # fmt: skip
    if review:
        lines.append(
            f"  review     {review['file']}: {review['applied']} marks applied ({review['drop']} "
            f"drop, {review['keep']} keep, {review['restored']} kept against the judge)"
        )
        if review["keep_on_rule_dropped"]:
            lines.append(
                f"  warning: {review['keep_on_rule_dropped']} keep marks on pairs the rules "
                "drop were not applied (a keep overrules the judge only)"
            )
        if review["stale"]:
            lines.append(
                f"  warning: {review['stale']} marks not applied: their pair no longer exists "
                "(a criteria edit or rerun regenerated its records), e.g.\n    "
                + "\n    ".join(review["stale_examples"])
            )
    return lines


def cmd_build(argv: Sequence[str]) -> int:
    return cmd_imagine(argv, "macaroon build", stages="build")


@dataclass
class BrowseConfig:
    """`macaroon browse OUT`: one HTML page of an imagined set (OUT/browse.html), or with
    `--base OTHER` what changed from OTHER to OUT (OUT/compare.html)."""

    page: str | None = field(
        default=None,
        metadata={"help": "Where to write the page (default OUT/browse.html, with --base "
                  "OUT/compare.html)."},
    )  # fmt: skip
    base: str | None = field(
        default=None,
        metadata={"help": "Another imagined set (e.g. before a criteria edit): the page shows "
                  "per type the new, removed and changed pairs and each set's kept rate."},
    )  # fmt: skip


def cmd_browse(argv: Sequence[str]) -> int:
    from imagination.browse import write_browse
    from imagination.compare import write_compare

    folders = leading_paths(argv)
    (cfg,) = parse_config([BrowseConfig], list(argv)[len(folders) :], "macaroon browse")
    if len(folders) != 1:
        raise ValueError(
            "give one imagine output folder: macaroon browse OUT [--base OTHER] [--page FILE]"
        )
    out, page = Path(folders[0]), Path(cfg.page) if cfg.page else None
    if cfg.base:
        page = write_compare(out, Path(cfg.base), page)
        print(f"wrote {page}: what changed from {cfg.base} to {out}, per type")
    else:
        page = write_browse(out, page)
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

    paths = leading_paths(argv)
    (cfg,) = parse_config([ImportConfig], list(argv)[len(paths) :], "macaroon import")
    if not paths:
        raise ValueError("give one or more files: macaroon import FILE... --out DIR")
    dataset, summary = import_files(paths, cfg.image_root, cfg.skip_missing_images)
    save_import(dataset, summary, Path(cfg.out))
    rows = ", ".join(f"{name} {len(split)}" for name, split in dataset.items())
    print(f"imported {len(paths)} file(s) into {Path(cfg.out) / 'dataset'}: {rows}")
    return 0
