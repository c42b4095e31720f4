"""The page of one or more evaluation runs side by side (browse.html).

Each PIE question once, with every run's answer, verdict and the judge's explanation;
per-type figures and the plot on top; filters by type and by "verdict changed", and text
search. One run's page (`macaroon eval`) is the same page with one column.
"""

from __future__ import annotations

import html
from pathlib import Path

from evaluation.report import CONVENTIONS, incomplete_cell, incomplete_note, missing_verdicts
from pipeline.pages import images_by_id, inline_png, read_rows, write_page


def read_items(run: str | Path) -> list[dict]:
    """A run's items.jsonl (written by the eval's report stage)."""
    fix = (
        f"run `macaroon eval --config {run}/config.json --stages report` (no model calls) to "
        "write it from the stored records"
    )
    return read_rows(Path(run) / "items.jsonl", fix)


def write_compare(runs: list[dict], items: list[list[dict]], path: Path, plot: Path | None) -> Path:
    """`runs`: each run's metrics.json; `items`: each run's items.jsonl rows, same order."""
    names = [run["name"] for run in runs]
    questions = _join(items)
    ids, images = images_by_id([q["image"] for q in questions.values()])
    rows = []
    for q in questions.values():
        answers = q["answers"]
        verdicts = {a["verdict"] for a in answers if a}
        texts = [q["question"], q["image_id"]]
        texts += [a.get(k) or "" for a in answers if a for k in ("response", "explanation")]
        rows.append({
            "type": q["question_type"], "question": q["question"], "image": ids[q["image"]],
            "image_id": q["image_id"], "answers": answers,
            "changed": len(runs) > 1 and (len(verdicts) > 1 or None in answers),
            "search": " ".join(texts),
        })  # fmt: skip
    title = "Evaluation: " + " vs ".join(names)
    types = list(dict.fromkeys(r["type"] for r in rows))
    head = _figures(runs, types) + _plot(plot)
    controls = _CONTROLS + (_CHANGED if len(runs) > 1 else "")
    data = {"items": rows, "images": images, "runs": names, "types": types}
    return write_page(path, title, head, controls, data, _SCRIPT)


def _join(items: list[list[dict]]) -> dict[tuple[str, str], dict]:
    """Each (image, question) once, in the first run's order, with one answer per run."""
    questions: dict[tuple[str, str], dict] = {}
    for n, rows in enumerate(items):
        for row in rows:
            key = (str(row["image_id"]), row["question"])
            entry = questions.setdefault(key, {**row, "answers": [None] * len(items)})
            entry["answers"][n] = {k: row.get(k) for k in ("response", "verdict", "explanation")}
    return questions


def _figures(runs: list[dict], types: list[str]) -> str:
    """Align Rate per type and run, over all items (the paper's convention) / judged."""
    head = "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs)
    lines = [f"<table class='figures'><tr><th>Align Rate: all / judged items</th>{head}</tr>"]
    for name in types:
        cells = "".join(f"<td>{_cell(r['types'].get(name) or {})}</td>" for r in runs)
        lines.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    aar = "".join(f"<td><b>{_aar(r)}</b></td>" for r in runs)
    health = "".join(
        f"<td>{r.get('unparsed', 0)} / {r.get('failed', 0)} of {r.get('n', 0)}</td>" for r in runs
    )
    lines += [f"<tr><td><b>AAR</b></td>{aar}</tr>",
              f"<tr><td>judge unparsed / failed</td>{health}</tr></table>"]  # fmt: skip
    notes = " ".join(html.escape(text.replace("**", "")) for _, text in CONVENTIONS)
    incomplete = "".join(f"<p><b>{html.escape(n)}</b></p>" for n in map(incomplete_note, runs) if n)
    return incomplete + "".join(lines) + f"<p class='meta'>{notes}</p>"


def _aar(run: dict) -> str:
    if missing_verdicts(run):
        return html.escape(incomplete_cell(missing_verdicts(run)))
    return f"{_rate(run.get('aar_all'))} / {_rate(run.get('aar'))}"


def _cell(metrics: dict) -> str:
    if not metrics:
        return "–"
    if missing_verdicts(metrics):
        return html.escape(incomplete_cell(missing_verdicts(metrics)))
    return f"{_rate(metrics.get('align_rate_all'))} / {_rate(metrics.get('align_rate'))}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _plot(plot: Path | None) -> str:
    src = inline_png(plot) if plot else ""
    if not src:
        return ""
    return f"<p><img src='{src}' alt='Align Rate per type' style='max-width:100%'></p>"


_CONTROLS = (
    "<label>type <select id='type' class='ctl'><option value=''>all</option></select></label>"
)
_CHANGED = "<label><input type='checkbox' id='changed' class='ctl'> verdict changed</label>"

_SCRIPT = """
const typeSelect = document.getElementById("type"), changed = document.getElementById("changed");
for (const t of DATA.types) option(typeSelect, t, t);
function matches(item) {
  if (typeSelect.value && item.type !== typeSelect.value) return false;
  return !(changed && changed.checked) || item.changed;
}
function answer(run, a) {
  if (!a) return el("div", {class: "box missing"}, el("b", {text: run + ": "}),
    "(not in this run)");
  return el("div", {class: "box " + a.verdict}, el("b", {text: run + ": " + a.verdict}),
    el("div", {text: a.response || ""}), el("div", {class: "meta", text: a.explanation || ""}));
}
function render(item) {
  const cols = el("div", {class: "cols",
    style: `grid-template-columns:repeat(${DATA.runs.length}, 1fr)`});
  item.answers.forEach((a, i) => cols.append(answer(DATA.runs[i], a)));
  return el("div", {class: "item" + (item.changed ? " changed" : "")},
    el("div", {}, image(item.image), el("div", {class: "meta", text: item.image_id})),
    el("div", {}, el("span", {class: "badge", text: item.type}),
      el("div", {class: "q", text: item.question}), cols));
}
viewer(DATA.items, matches, render);
"""
