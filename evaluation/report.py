"""Reports: table.md in the paper's layout, plot.png with intervals (pages: compare.py)."""

from __future__ import annotations

from pathlib import Path

from evaluation.metrics import DEFINITIONS


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


# The two conventions of every rate (see evaluation/metrics.py), the paper's one first.
CONVENTIONS = (
    ("_all", "**Over all items**, the original MACAROON code's convention (an unparsed or "
             "failed item counts as not aligned). Comparable to the paper's figures "
             "(MACAROON: AAR 0.84)."),
    ("", "**Over judged items** (unparsed and failed items left out). Not comparable to the "
         "paper."),
)  # fmt: skip


def missing_verdicts(run: dict) -> int:
    """Items of `run` without a verdict (a metrics.json from before `incomplete` existed
    counted them as `failed`)."""
    return int(run.get("missing_verdicts", run.get("failed") or 0))


def incomplete_cell(missing: int) -> str:
    return f"incomplete ({missing} without verdict)"


def incomplete_note(run: dict) -> str | None:
    """What an incomplete run lacks and the command that completes it; None if complete."""
    missing = missing_verdicts(run)
    if not missing:
        return None
    why = run.get("missing") or {}
    parts = [f"{why[k]} {text}" for k, text in (
        ("judge_failed", "judge calls failed"),
        ("no_answer", "without an answer (failed or not generated yet)"),
        ("not_judged", "not judged yet")) if why.get(k)]  # fmt: skip
    because = f" ({', '.join(parts)})" if parts else ""
    retry = run.get("retry") or "macaroon eval ... --retry_failed true (the run's options)"
    return (
        f"{run['name']}: run incomplete: {missing} of {run.get('n', '?')} items have no "
        f"verdict{because}, so no AAR is given in either convention. Complete it with: {retry}"
    )


def table(runs: list[dict], types: list[str]) -> str:
    """Per convention, rows: runs (model/METHOD); columns: the types' Align Rates, then AAR
    (paper Table 1)."""
    lines = []
    for suffix, title in CONVENTIONS:
        lines += [title, "", *_rate_rows(runs, types, suffix), ""]
    notes = ["Align Rate per question type, then AAR; tier II cells also give the Ambiguous "
             "Rate.", ""]  # fmt: skip
    notes += DEFINITIONS.splitlines()
    health = [
        f"- {r['name']}: judge unparsed {r['unparsed']} and failed {r['failed']} of {r['n']}; "
        f"{r.get('truncated', '?')} answers cut off by the token limit"
        for r in runs
    ]
    incomplete = [f"- {note}" for note in map(incomplete_note, runs) if note]
    if incomplete:
        lines = ["**Incomplete runs** (items without a verdict give no number):", "",
                 *incomplete, "", *lines]  # fmt: skip
    return "\n".join(lines + notes + ["", "Health:", *health]) + "\n"


def _rate_rows(runs: list[dict], types: list[str], suffix: str) -> list[str]:
    header = ["model", *types, "AAR", "AAR (weighted)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run["name"]]
        for name in types:
            metrics = run["types"].get(name) or {}
            if missing_verdicts(metrics):  # no number from verdicts never obtained
                cells.append(incomplete_cell(missing_verdicts(metrics)))
                continue
            # .get: a metrics.json written before both conventions were reported lacks _all.
            cell = _pct(metrics.get("align_rate" + suffix))
            if metrics.get("ambiguous_rate" + suffix) is not None:
                cell += f" (amb. {_pct(metrics['ambiguous_rate' + suffix])})"
            cells.append(cell)
        if missing_verdicts(run):
            cells += [incomplete_cell(missing_verdicts(run)), "–"]
        else:
            # Over judged items a type with no verdict at all drops out of the AAR: say so.
            left_out = not suffix and run.get("aar_types", len(types)) < len(run["types"])
            aar = _pct(run.get("aar" + suffix)) + ("*" if left_out else "")
            cells += [aar, _pct(run.get("aar_weighted" + suffix))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(runs: list[dict], types: list[str], path: Path) -> None:
    """Grouped bars: Align Rate over judged items per type and run, with 95% bootstrap
    intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(types)), 4))
    for i, run in enumerate(runs):
        xs, ys, low, high = [], [], [], []
        for j, name in enumerate(types):
            metrics = run["types"].get(name)
            if not metrics or metrics["align_rate"] is None or missing_verdicts(metrics):
                continue  # no bar from verdicts never obtained
            rate, ci = metrics["align_rate"], metrics["ci95"] or [metrics["align_rate"]] * 2
            xs.append(j + (i - (len(runs) - 1) / 2) * width)
            ys.append(rate)
            low.append(rate - ci[0])
            high.append(ci[1] - rate)
        ax.bar(
            xs,
            ys,
            width,
            yerr=[low, high],
            capsize=3,
            label=f"{run['name']}: {incomplete_cell(missing_verdicts(run))}"
            if missing_verdicts(run)
            else f"{run['name']} (AAR {_pct(run['aar'])} judged, "
            f"{_pct(run.get('aar_all'))} all items)",
        )
    ax.set_xticks(range(len(types)))
    ax.set_xticklabels([t.replace(" ", "\n") for t in types], fontsize=8)
    ax.set_ylim(0, 1)
    # The judged rate shows the judge's reading of what it could read; table.md gives both.
    ax.set_ylabel("Align Rate over judged items (95% bootstrap CI)", fontsize=8)
    ax.set_title("unparsed and failed items left out; table.md has the paper's convention",
                 fontsize=8)  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def general_tasks(general: dict[str, dict]) -> list[str]:
    """The general tasks any run has, in first-seen order."""
    return list(dict.fromkeys(t for g in general.values() for t in g.get("tasks", {})))


def general_table(runs: list[dict], general: dict[str, dict]) -> list[str]:
    """Engagement beside capability: per run its AAR (both conventions), each general task's
    score (lmms-eval's own figure) and the general score (their mean on a 0-1 scale)."""
    tasks = general_tasks(general)
    header = ["model", "AAR (all items)", "AAR (judged)", *tasks, "general score"]
    lines = ["**Engagement and capability** (general tasks: `macaroon eval-general`, "
             "lmms-eval's scoring):", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    for run in runs:
        mine = general.get(run["name"]) or {}
        scores = [_score((mine.get("tasks", {}).get(t) or {}).get("score")) for t in tasks]
        aar = ["–", "–"] if missing_verdicts(run) else [_pct(run.get("aar_all")),
                                                         _pct(run.get("aar"))]  # fmt: skip
        lines.append("| " + " | ".join([run["name"], *aar, *scores,
                                         _pct(mine.get("general_score"))]) + " |")  # fmt: skip
    metrics = ", ".join(f"{t}: {(g['tasks'][t]['metric'])}" for g in general.values()
                        for t in g.get("tasks", {}))  # fmt: skip
    data = sorted({str(g.get("data")) for g in general.values()})
    return [*lines, "", f"Scores: {metrics}; data: {', '.join(data)}.", ""]


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def capability_plot(points: list[tuple[str, float | None, float | None]], path: Path) -> bool:
    """Engagement (AAR over all items) against capability (general score), one point per
    model; False (no file) when no model has both."""
    shown = [(n, x, y) for n, y, x in points if x is not None and y is not None]
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, x, y in shown:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("capability: general score (mean of task scores, 0-1)", fontsize=8)
    ax.set_ylabel("engagement: AAR over all items (PIE)", fontsize=8)
    ax.set_title("up and right: engaged and still capable", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_reports(
    runs: list[dict], types: list[str], out: Path, general: dict[str, dict] | None = None
) -> None:
    """OUT/table.md and OUT/plot.png for `runs` (metrics.json contents); with `general`
    (run name -> general.json), the capability table and OUT/capability.png too."""
    text = table(runs, types)
    if general:
        text += "\n" + "\n".join(general_table(runs, general))
        points = [(r["name"], None if missing_verdicts(r) else r.get("aar_all"),
                   (general.get(r["name"]) or {}).get("general_score")) for r in runs]  # fmt: skip
        capability_plot(points, out / "capability.png")
    (out / "table.md").write_text(text, encoding="utf-8")
    plot(runs, types, out / "plot.png")
