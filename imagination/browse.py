"""`macaroon browse OUT`: one page to see what was imagined (OUT/browse.html).

Per question type, each image with its question, the preferred and the rejected response,
and the pairs the filter dropped with their reasons; filters by type and status, and text
search. Built from OUT/pairs.jsonl, which `macaroon imagine` and `build` write.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

from imagination.filters import DROP_REASONS
from pipeline.pages import images_by_id, read_rows, write_page

PAIR_FIELDS = ("key", "image", "image_hash", "question_type", "tier", "question", "preferred",
               "rejected")  # fmt: skip


def write_pairs(pairs: list[dict], reasons: list[str | None], out: Path) -> Path:
    """OUT/pairs.jsonl: every pair, `status` kept or dropped and, if dropped, its `reason`."""
    path = out / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for pair, reason in zip(pairs, reasons, strict=True):
            row = {name: pair.get(name) for name in PAIR_FIELDS}
            row |= {"status": "dropped" if reason else "kept", "reason": reason}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_pairs(out: Path) -> list[dict]:
    return read_rows(Path(out) / "pairs.jsonl", f"run `macaroon build --out {out}` (no model "
                     "calls) to write it from the stored records, or `macaroon imagine --out "
                     "DIR` first")  # fmt: skip


def write_browse(out: Path, page: Path | None = None, summary: dict | None = None) -> Path:
    """Write the page for the imagined set in `out`; returns its path. `summary`: the run's
    (default: OUT/summary.json)."""
    out = Path(out)
    pairs = sorted(read_pairs(out), key=lambda p: p["question_type"])  # grouped by type
    ids, images = images_by_id([p["image"] for p in pairs])
    items = [
        {
            "type": p["question_type"], "status": p["status"], "reason": p["reason"],
            "image": ids[p["image"]], "file": Path(p["image"]).name, "question": p["question"],
            "preferred": p["preferred"], "rejected": p["rejected"],
            "search": " ".join(filter(None, (p["question"], p["preferred"], p["rejected"],
                                             Path(p["image"]).name))),
        }
        for p in pairs
    ]  # fmt: skip
    summary = summary if summary is not None else _summary(out)
    title = f"Imagined set: {out}"
    reasons = {p["reason"] for p in items}
    data = {"items": items, "images": images, "types": sorted({p["type"] for p in items}),
            "reasons": [r for r in DROP_REASONS if r in reasons]}  # fmt: skip
    return write_page(page or out / "browse.html", title, _head(items, summary), _CONTROLS,
                      data, _SCRIPT)  # fmt: skip


def _summary(out: Path) -> dict:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _head(items: list[dict], summary: dict) -> str:
    """Per type: pairs kept and dropped, with the reasons."""
    rows = []
    for qtype in sorted({i["type"] for i in items}):
        mine = [i for i in items if i["type"] == qtype]
        reasons = Counter(i["reason"] for i in mine if i["reason"])
        why = ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "–"
        kept = sum(i["status"] == "kept" for i in mine)
        rows.append(
            f"<tr><td>{html.escape(qtype)}</td><td>{kept}</td><td>{len(mine) - kept}</td>"
            f"<td class='why'>{html.escape(why)}</td></tr>"
        )
    model = f"model {html.escape(str(summary['model']))}, " if summary.get("model") else ""
    return (
        f"<p class='meta'>{model}{len(items)} pairs, "
        f"{sum(i['status'] == 'kept' for i in items)} kept for training</p>"
        "<table class='figures'><tr><th>question type</th><th>kept</th><th>dropped</th>"
        "<th>why dropped</th></tr>" + "".join(rows) + "</table>"
    )


_CONTROLS = (
    "<label>type <select id='type' class='ctl'><option value=''>all</option></select></label>"
    "<label>status <select id='status' class='ctl'><option value=''>all</option>"
    "<option value='kept'>kept</option><option value='dropped'>dropped</option></select>"
    "</label>"
)

_SCRIPT = """
const typeSelect = document.getElementById("type");
const statusSelect = document.getElementById("status");
for (const t of DATA.types) option(typeSelect, t, t);
for (const r of DATA.reasons) option(statusSelect, "dropped:" + r, "dropped: " + r);
function matches(item) {
  const t = typeSelect.value, s = statusSelect.value;
  if (t && item.type !== t) return false;
  if (s === "kept" || s === "dropped") return item.status === s;
  return !s || "dropped:" + item.reason === s;
}
function response(kind, text) {
  return el("div", {class: "box " + kind}, el("b", {text: kind + ": "}),
    text === null ? el("i", {text: "(none)"}) : text);
}
function render(item) {
  const status = el("span", {class: "badge " + item.status,
    text: item.reason ? "dropped: " + item.reason : item.status});
  return el("div", {class: "item", "data-status": item.status},
    el("div", {}, image(item.image), el("div", {class: "meta", text: item.file})),
    el("div", {class: "cols"},
      el("div", {}, status, el("span", {class: "badge", text: item.type})),
      el("div", {class: "q", text: item.question}),
      response("preferred", item.preferred), response("rejected", item.rejected)));
}
viewer(DATA.items, matches, render);
"""
