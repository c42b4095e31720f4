"""The reproduction table: every row of a plan on one line, judged alike, the paper beside it.

One line per row: Align Rate per question type, the Ambiguous Rate of tier II types, and
the AAR with its 95% interval, in both conventions (over all items, the original code's,
comparable to the paper; over judged items). Rows judged by different judges (model,
settings, rubrics, template) or on different PIE files are refused, naming them: their
numbers do not measure the same thing. The paper's published figures stand as a reference
row, marked as published and cited, where the plan's base model is the paper's.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

from evaluation.metrics import DEFINITIONS
from evaluation.report import general_tasks, incomplete_note, missing_verdicts

CONVENTIONS = (
    ("_all", "over all items (the original code's convention; comparable to the paper)"),
    ("", "over judged items (unparsed and failed left out)"),
)


class IncomparableRuns(ValueError):
    """Rows that were not judged alike, or not on the same PIE file."""


def check_comparable(runs: dict[str, dict]) -> None:
    """Refuse rows judged by different judges or on different PIE files, naming them."""
    for what, key in (("judge (model, settings, rubrics, template)", "judge"), ("PIE file", "pie")):
        groups: dict[str, list[str]] = {}
        for name, metrics in runs.items():
            groups.setdefault(_fingerprint(metrics, key), []).append(name)
        if len(groups) > 1:
            listed = "; ".join(", ".join(names) for names in groups.values())
            raise IncomparableRuns(
                f"the rows were not judged alike: each group here has another {what}: "
                f"{listed}. Rerun the rows with one judge (the plan's `judge`) and one PIE file"
            )


def _fingerprint(metrics: dict, key: str) -> str:
    if key == "judge":
        return (metrics.get("judge") or {}).get("fingerprint") or "unknown"
    return metrics.get("pie_fingerprint") or "unknown"


def load_published(path: str | Path | None, base_model: str) -> tuple[list[dict], str]:
    """The paper's rows for `base_model` and a note saying what they are (or why none)."""
    if not path:
        return [], "No published figures were given (the plan's `published`)."
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    source = data["source"]
    if base_model != data["base_model"]:
        return [], (
            f"Published figures ({source}) are for {data['base_model']}; this plan's "
            f"base is {base_model}, so they are not shown."
        )
    note = f"Rows marked (published) are the paper's figures: {source}. {data.get('missing', '')}"
    return list(data["rows"]), note.strip()


def _method(metrics: dict) -> str:
    """The row's METHOD as the plan names it (dpo_original trains dpo), else the record's."""
    model = metrics.get("model") or {}
    return model.get("plan_method") or model.get("method") or "base"


def table_rows(
    runs: dict[str, dict],
    types: list[str],
    published: list[dict],
    general: dict[str, dict] | None = None,
) -> list[dict]:
    """One flat record per row and convention: the cells of table.md and table.csv; with
    `general` (row -> general.json), a column per general task and the general score."""
    records = []
    general = general or {}
    tasks = general_tasks(general)
    for name, metrics in runs.items():
        for suffix, _ in CONVENTIONS:
            record = {
                "row": name,
                "method": _method(metrics),
                "convention": "all items" if suffix else "judged items",
                "source": "ours",
            }
            for qtype in types:
                m = metrics["types"].get(qtype) or {}
                record[qtype] = m.get("align_rate" + suffix)
                if m.get("tier") == "II":
                    record[f"{qtype} (ambiguous)"] = m.get("ambiguous_rate" + suffix)
            record["AAR"] = metrics.get("aar" + suffix)
            record["without verdict"] = missing_verdicts(metrics)
            low, high = metrics.get("aar_ci95" + suffix) or (None, None)
            record["AAR 95% low"], record["AAR 95% high"] = low, high
            mine = general.get(name) or {}
            for task in tasks:
                record[f"general: {task}"] = (mine.get("tasks", {}).get(task) or {}).get("score")
            if tasks:
                record["general score"] = mine.get("general_score")
            records.append(record)
    for row in published:
        record = {
            "row": f"{row['name']} (published)",
            "method": row.get("method", ""),
            "convention": "all items",
            "source": row.get("where", "published"),
        }
        for qtype in types:
            record[qtype] = (row.get("types") or {}).get(qtype)
        record["AAR"] = row.get("aar")
        records.append(record)
    return records


def table_md(
    runs: dict[str, dict],
    types: list[str],
    published: list[dict],
    note: str,
    general: dict[str, dict] | None = None,
) -> str:
    records = table_rows(runs, types, published, general)
    tasks = general_tasks(general or {})
    extra = [f"general: {t}" for t in tasks] + (["general score"] if tasks else [])
    lines = ["# Reproduction: every row, one judge", ""]
    for suffix, title in CONVENTIONS:
        convention = "all items" if suffix else "judged items"
        mine = [r for r in records if r["convention"] == convention]
        if not mine:
            continue
        header = ["row", "method", *types, "AAR [95% CI]", *extra]
        lines += [
            f"## Align Rate {title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for r in mine:
            cells = [r["row"], r["method"]]
            for qtype in types:
                cell = _num(r.get(qtype))
                if f"{qtype} (ambiguous)" in r:
                    cell += f" (amb. {_num(r[f'{qtype} (ambiguous)'])})"
                cells.append(cell)
            interval = (
                f" [{_num(r['AAR 95% low'])}, {_num(r['AAR 95% high'])}]"
                if r.get("AAR 95% low") is not None
                else ""
            )
            if r.get("without verdict"):  # no number from verdicts never obtained
                cells.append(f"incomplete ({r['without verdict']} without verdict)")
            else:
                cells.append(_num(r.get("AAR")) + interval)
            cells += [_general(r.get(column)) for column in extra]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    judge = next(iter(runs.values())).get("judge", {}) if runs else {}
    lines += [
        f"Judge: {judge.get('model')} ({judge.get('backend')}, max_tokens "
        f"{judge.get('max_tokens')}, structured {judge.get('structured')}); every row "
        f"shares its fingerprint {judge.get('fingerprint')}.",
        "",
        note,
        "",
        "A cell '–' has no figure (no verdict, or none published).",
        *(
            [
                "Columns `general: TASK` are lmms-eval's own score of each general task "
                "(`macaroon eval-general`: POPE accuracy, MME perception score, ScienceQA-IMG "
                "exact match, ...); `general score` is their mean, each on a 0-1 scale "
                "(capability.png plots it against the AAR).",
            ]
            if tasks
            else []
        ),
        "",
        *DEFINITIONS.splitlines(),
    ]
    health = [
        f"- {name}: {m['n']} items; judge unparsed {m['unparsed']}, failed {m['failed']}; "
        f"{m.get('truncated', 0)} answers cut off"
        for name, m in runs.items()
    ]
    notes = [note for m in runs.values() if (note := incomplete_note(m))]
    return "\n".join([*lines, "", "Health:", *health, *notes]) + "\n"


def table_csv(
    runs: dict[str, dict],
    types: list[str],
    published: list[dict],
    general: dict[str, dict] | None = None,
) -> str:
    records = table_rows(runs, types, published, general)
    columns = list(dict.fromkeys(k for r in records for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if r.get(k) is None else r[k] for k in columns} for r in records])
    return buffer.getvalue()


def plot(runs: dict[str, dict], types: list[str], published: list[dict], path: Path) -> None:
    """Left: the AAR of every row with its 95% interval (both conventions; the published
    figure as a hollow marker). Right: Align Rate per type and row, over all items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(6 + 1.4 * len(types), 4.2), gridspec_kw={"width_ratios": [1, 2]}
    )
    for offset, (suffix, label) in zip((-0.15, 0.15), CONVENTIONS, strict=True):
        xs, ys, err = [], [], [[], []]
        for i, name in enumerate(names):
            value = runs[name].get("aar" + suffix)
            if value is None:
                continue
            low, high = runs[name].get("aar_ci95" + suffix) or (value, value)
            xs.append(i + offset)
            ys.append(value)
            err[0].append(value - low)
            err[1].append(high - value)
        left.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=label.split(" (")[0])
    for row in published:
        method = row.get("method")
        for i, name in enumerate(names):
            if _method(runs[name]) == method and row.get("aar"):
                left.scatter(
                    [i],
                    [row["aar"]],
                    marker="D",
                    facecolors="none",
                    edgecolors="black",
                    label=f"{row['name']} (published)",
                )
    left.set_xticks(range(len(names)))
    left.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    left.set_ylim(0, 1)
    left.set_ylabel("AAR (95% CI)", fontsize=8)
    left.legend(fontsize=7)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ys = [(runs[name]["types"].get(t) or {}).get("align_rate_all") or 0 for t in types]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(types))]
        right.bar(xs, ys, width, label=name)
    right.set_xticks(range(len(types)))
    right.set_xticklabels([t.replace(" ", "\n") for t in types], fontsize=7)
    right.set_ylim(0, 1)
    right.set_ylabel("Align Rate over all items", fontsize=8)
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _general(value: float | None) -> str:
    # lmms-eval's scales differ (MME's perception score runs to 2000): 3 significant digits.
    return "–" if value is None else f"{value:.3g}"
