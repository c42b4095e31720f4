"""`macaroon browse OUT --base OTHER`: what changed from one imagined set to another
(OUT/compare.html), e.g. after a criteria edit.

Pairs are matched by their slot: the same image, question type and question. Per type the
page counts the new pairs (in OUT only), the removed ones (in OTHER only), the changed ones
(same slot, another preferred or rejected response, or another filter outcome) and the
same ones, beside each set's kept rate and whether the type's criteria changed; below, the
pairs themselves, the two versions side by side.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

from imagination.browse import read_pairs
from pipeline.pages import images_by_id, write_page

CHANGES = ("changed", "new", "removed", "same")
COMPARED = ("preferred", "rejected", "status", "reason")


def slot(pair: dict) -> tuple[str, str, str]:
    """Where a pair sits: image, type and question (case and spacing aside)."""
    question = " ".join((pair.get("question") or "").lower().split())
    return (pair["image_hash"], pair["question_type"], question)


def compare_pairs(base: list[dict], new: list[dict]) -> list[dict]:
    """Every slot of either set once: {change, base, out, what} (what: the fields that
    differ). Several pairs in one slot (duplicates) are matched in order."""
    slots: dict[tuple, list[list]] = defaultdict(lambda: [[], []])
    for side, pairs in enumerate((base, new)):
        for pair in pairs:
            slots[slot(pair)][side].append(pair)
    rows = []
    for olds, news in slots.values():
        for n in range(max(len(olds), len(news))):
            old = olds[n] if n < len(olds) else None
            now = news[n] if n < len(news) else None
            what = [k for k in COMPARED if old and now and old.get(k) != now.get(k)]
            change = "new" if old is None else "removed" if now is None else (
                "changed" if what else "same")  # fmt: skip
            rows.append({"change": change, "base": old, "out": now, "what": what})
    return rows


def type_figures(base: list[dict], new: list[dict], rows: list[dict]) -> dict[str, dict]:
    """Per type: each set's pairs and kept pairs, its criteria hashes, and the changes."""
    figures: dict[str, dict] = {}
    for side, pairs in (("base", base), ("out", new)):
        for pair in pairs:
            entry = figures.setdefault(pair["question_type"], _empty())
            entry[side]["pairs"] += 1
            entry[side]["kept"] += pair["status"] == "kept"
            entry[side]["criteria"].add(pair.get("criteria_hash"))
    for row in rows:
        pair = row["out"] or row["base"]
        figures[pair["question_type"]][row["change"]] += 1
    return dict(sorted(figures.items()))


def _empty() -> dict:
    side = {"pairs": 0, "kept": 0}
    return {"base": {**side, "criteria": set()}, "out": {**side, "criteria": set()},
            **dict.fromkeys(CHANGES, 0)}  # fmt: skip


def write_compare(out: Path, base: Path, page: Path | None = None) -> Path:
    """Write the comparison page of `base` -> `out`; returns its path."""
    out, base = Path(out), Path(base)
    old, new = read_pairs(base), read_pairs(out)
    rows = compare_pairs(old, new)
    figures = type_figures(old, new, rows)
    order = {change: n for n, change in enumerate(CHANGES)}
    rows.sort(key=lambda r: ((r["out"] or r["base"])["question_type"], order[r["change"]]))
    ids, images = images_by_id([(r["out"] or r["base"])["image"] for r in rows])
    items = [_item(r, ids) for r in rows]
    title = f"Imagined sets compared: {base} → {out}"
    names = _names(base, out)
    data = {"items": items, "images": images, "types": list(figures), "changes": CHANGES,
            "base": names[0], "out": names[1]}  # fmt: skip
    return write_page(page or out / "compare.html", title, _head(figures, base, out, names),
                      _CONTROLS, data, _SCRIPT)  # fmt: skip


def _names(base: Path, out: Path) -> tuple[str, str]:
    """Short labels of the two sets: their folder names, or the paths when those agree."""
    names = (base.resolve().name, out.resolve().name)
    return names if names[0] != names[1] else (str(base), str(out))


def _item(row: dict, ids: dict[str, str]) -> dict:
    pair = row["out"] or row["base"]
    sides = {side: _side(row[side]) for side in ("base", "out")}
    texts = [pair["question"], Path(pair["image"]).name]
    texts += [s[k] or "" for s in sides.values() if s for k in ("preferred", "rejected")]
    return {"type": pair["question_type"], "change": row["change"], "what": row["what"],
            "image": ids[pair["image"]], "file": Path(pair["image"]).name,
            "question": pair["question"], **sides, "search": " ".join(texts)}  # fmt: skip


def _side(pair: dict | None) -> dict | None:
    return {k: pair.get(k) for k in COMPARED} if pair else None


def _head(figures: dict[str, dict], base: Path, out: Path, names: tuple[str, str]) -> str:
    def rate(side: dict) -> str:
        share = f" ({100 * side['kept'] / side['pairs']:.0f}%)" if side["pairs"] else ""
        return f"{side['kept']} of {side['pairs']}{share}"

    head = ["question type", "criteria", f"kept in {names[0]}", f"kept in {names[1]}",
            *(f"{c} pairs" for c in CHANGES)]  # fmt: skip
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for name, f in figures.items():
        edited = f["base"]["criteria"] != f["out"]["criteria"]
        cells = [name, "edited" if edited else "same", rate(f["base"]), rate(f["out"]),
                 *(str(f[c]) for c in CHANGES)]  # fmt: skip
        rows.append(
            f"<tr data-type='{html.escape(name, quote=True)}'>"
            + "".join(f"<td class='n-{c}'>{html.escape(v)}</td>" for c, v in zip(
                ("name", "criteria", "base", "out", *CHANGES), cells, strict=True))
            + "</tr>"
        )  # fmt: skip
    note = (
        f"<p class='meta'>{html.escape(names[0])}: {html.escape(str(base))} (before); "
        f"{html.escape(names[1])}: {html.escape(str(out))} (after). Pairs match when image, "
        "question type and question are the same. changed: another preferred or rejected "
        "response, or another filter outcome; new: only after; removed: only before. "
        "criteria: whether the type's criteria changed.</p>"
    )
    return "<table class='figures'>" + "".join(rows) + "</table>" + note


_CONTROLS = (
    "<label>type <select id='type' class='ctl'><option value=''>all</option></select></label>"
    "<label>pairs <select id='change' class='ctl'><option value=''>all</option>"
    "<option value='different'>new, removed or changed</option></select></label>"
)

_SCRIPT = """
const typeSelect = document.getElementById("type");
const changeSelect = document.getElementById("change");
for (const t of DATA.types) option(typeSelect, t, t);
for (const c of DATA.changes) option(changeSelect, c, c);
function matches(item) {
  if (typeSelect.value && item.type !== typeSelect.value) return false;
  const c = changeSelect.value;
  if (c === "different") return item.change !== "same";
  return !c || item.change === c;
}
function side(name, pair, what) {
  if (!pair) return el("div", {class: "box missing"}, el("b", {text: name + ": "}),
    "(not in this set)");
  const status = pair.reason ? "dropped: " + pair.reason : pair.status;
  const part = (kind, text) => el("div", {class: "box " + kind +
    (what.includes(kind) ? " changed" : "")}, el("b", {text: kind + ": "}),
    text === null ? el("i", {text: "(none)"}) : text);
  return el("div", {class: "cols"}, el("div", {}, el("b", {text: name + " "}),
    el("span", {class: "badge " + pair.status + (what.includes("status") ||
      what.includes("reason") ? " changed" : ""), text: status})),
    part("preferred", pair.preferred), part("rejected", pair.rejected));
}
function render(item) {
  const cols = el("div", {class: "cols", style: "grid-template-columns:1fr 1fr"},
    side(DATA.base, item.base, item.what), side(DATA.out, item.out, item.what));
  return el("div", {class: "item", "data-change": item.change},
    el("div", {}, image(item.image), el("div", {class: "meta", text: item.file})),
    el("div", {}, el("span", {class: "badge change", text: item.change}),
      el("span", {class: "badge", text: item.type}),
      el("div", {class: "q", text: item.question}), cols));
}
viewer(DATA.items, matches, render);
"""
