"""`macaroon browse OUT`: one page to see and review what was imagined (OUT/browse.html).

Per question type, each image with its question, the preferred and the rejected response,
what each filter said (the rules' drop reason; the judge's verdicts and explanations where
`--judge_filter` ran) and the kept rate under each filter, so a person sees where the judge
and the rules disagree. The person marks pairs keep or drop with a note; the marks live in
the browser (localStorage, per set) and export as a marks file for `macaroon build
--review FILE` (imagination/review.py). Built from OUT/pairs.jsonl, which `macaroon
imagine` and `build` write.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from imagination.filters import DROP_REASONS, JUDGE_REASONS, pair_key
from imagination.review import FORMAT, VERSION, set_identity
from pipeline.pages import images_by_id, read_rows, write_page

PAIR_FIELDS = ("key", "pair_key", "image", "image_hash", "question_type", "tier",
               "criteria_hash", "question", "preferred", "rejected")  # fmt: skip
NOT_RULES = (*JUDGE_REASONS, "review_dropped")


def write_pairs(pairs: list[dict], reasons: list[str | None], out: Path) -> Path:
    """OUT/pairs.jsonl: every pair, `status` kept or dropped and, if dropped, its `reason`;
    `rule`, `judge` and `review`: what each filter said (imagination.filters)."""
    path = out / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for pair, reason in zip(pairs, reasons, strict=True):
            row = {name: pair.get(name) for name in PAIR_FIELDS}
            row["pair_key"] = row["pair_key"] or pair_key(pair["key"], pair.get("response_keys"))
            rule = pair["rule"] if "rule" in pair else (None if reason in NOT_RULES else reason)
            row |= {"status": "dropped" if reason else "kept", "reason": reason, "rule": rule,
                    "judge": pair.get("judge"), "review": pair.get("review")}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_pairs(out: Path) -> list[dict]:
    rows = read_rows(Path(out) / "pairs.jsonl", f"run `macaroon build --out {out}` (no model "
                     "calls) to write it from the stored records, or `macaroon imagine --out "
                     "DIR` first")  # fmt: skip
    for row in rows:  # written before the filters were told apart: the rules said it all
        row.setdefault("pair_key", pair_key(row["key"], None))
        row.setdefault("rule", row.get("reason"))
    return rows


def write_browse(out: Path, page: Path | None = None, summary: dict | None = None) -> Path:
    """Write the page for the imagined set in `out`; returns its path. `summary`: the run's
    (default: OUT/summary.json)."""
    out = Path(out)
    pairs = sorted(read_pairs(out), key=lambda p: p["question_type"])  # grouped by type
    summary = summary if summary is not None else _summary(out)
    ids, images = images_by_id([p["image"] for p in pairs])
    items = [
        {
            "key": p["pair_key"], "type": p["question_type"], "status": p["status"],
            "reason": p["reason"], "rule": p["rule"], "judge": p.get("judge"),
            "review": p.get("review"), "image": ids[p["image"]], "file": Path(p["image"]).name,
            "question": p["question"], "preferred": p["preferred"], "rejected": p["rejected"],
            "search": " ".join(filter(None, (p["question"], p["preferred"], p["rejected"],
                                             Path(p["image"]).name, *_explanations(p)))),
        }
        for p in pairs
    ]  # fmt: skip
    title = f"Imagined set: {out}"
    reasons = {p["reason"] for p in items}
    identity = set_identity(pairs, out, summary.get("criteria_hash"))
    data = {"items": items, "images": images, "types": sorted({p["type"] for p in items}),
            "reasons": [r for r in DROP_REASONS if r in reasons], "format": FORMAT,
            "version": VERSION, "set": identity, "name": out.resolve().name,
            "judged": any(p["judge"] for p in items)}  # fmt: skip
    return write_page(page or out / "browse.html", title, _head(items, summary), _CONTROLS,
                      data, _SCRIPT)  # fmt: skip


def _explanations(pair: dict) -> list[str]:
    judge = pair.get("judge") or {}
    return [(judge.get(kind) or {}).get("explanation") or "" for kind in ("preferred", "rejected")]


def _summary(out: Path) -> dict:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _head(items: list[dict], summary: dict) -> str:
    """The run in a line, the per-type figures (drawn by the script: they follow the marks)
    and the review bar."""
    model = f"model {html.escape(str(summary['model']))}, " if summary.get("model") else ""
    return (
        f"<style>{_CSS}</style>"
        f"<p class='meta'>{model}{len(items)} pairs, "
        f"{sum(i['status'] == 'kept' for i in items)} kept for training</p>"
        "<div id='figures'></div>"
        "<p class='review'><b>Review</b> <span id='marked' class='meta'></span> "
        "<button id='export'>export marks</button> <span id='stale' class='meta'></span> "
        "<button id='forget' hidden>forget them</button><br><span class='meta'>Marks stay in "
        "this browser for this set. Apply them with <code>macaroon build --review "
        "FILE</code> (or <code>make build REVIEW=FILE</code>): a pair marked drop leaves the "
        "dataset; keep overrules the judge, not the rules.</span></p>"
    )


_CSS = """
.review{background:#f3f6fb;padding:.5em .8em;border-radius:4px}
.judge{font-size:.9em;display:grid;gap:.2em}.verdict{padding:0 .3em;border-radius:3px}
.disagree{outline:2px solid #f9ab00}.disagree-tag{color:#b06000;font-weight:600}
.mark{margin-right:.3em}.mark[aria-pressed=true].keep{background:#137333;color:#fff}
.mark[aria-pressed=true].drop{background:#c5221f;color:#fff}.note{width:28em}
.item.marked-drop{opacity:.7}
"""

_CONTROLS = (
    "<label>type <select id='type' class='ctl'><option value=''>all</option></select></label>"
    "<label>status <select id='status' class='ctl'><option value=''>all</option>"
    "<option value='kept'>kept</option><option value='dropped'>dropped</option></select>"
    "</label>"
    "<label>judge <select id='judge' class='ctl'><option value=''>all</option>"
    "<option value='passed'>passed</option><option value='rejected'>did not pass</option>"
    "<option value='disagree'>disagrees with the rules</option>"
    "<option value='none'>not judged</option></select></label>"
    "<label>review <select id='review' class='ctl'><option value=''>all</option>"
    "<option value='unmarked'>unmarked</option><option value='keep'>marked keep</option>"
    "<option value='drop'>marked drop</option></select></label>"
)

# Marks: {pair key: {mark: "keep"|"drop"|null, note, question_type, question, image}}, in
# localStorage per set folder; the first visit starts from the marks the last build applied.
_SCRIPT = """
const typeSelect = document.getElementById("type");
const statusSelect = document.getElementById("status");
const judgeSelect = document.getElementById("judge");
const reviewSelect = document.getElementById("review");
for (const t of DATA.types) option(typeSelect, t, t);
for (const r of DATA.reasons) option(statusSelect, "dropped:" + r, "dropped: " + r);
const STORE = "macaroon-review:" + DATA.set.out;
const byKey = new Map(DATA.items.map(item => [item.key, item]));
const applied = {};
for (const item of DATA.items) if (item.review) applied[item.key] = {...item.review,
  question_type: item.type, question: item.question, image: item.file};
let marks = load();
function load() {
  try {
    const stored = localStorage.getItem(STORE);
    if (stored) return JSON.parse(stored);
  } catch (err) { /* unreadable storage: start from the applied marks */ }
  return JSON.parse(JSON.stringify(applied));
}
function save() {
  try { localStorage.setItem(STORE, JSON.stringify(marks)); }
  catch (err) { document.getElementById("stale").textContent = "marks not saved: " + err; }
}
const judgePassed = item => item.judge && !item.judge.reason;
// The judge and the rules disagree: one keeps a pair the other drops.
const disagrees = item => !!item.judge && !item.rule === !!item.judge.reason;
const markOf = item => (marks[item.key] || {}).mark || null;
function keptWith(item, mark) {  // imagination.filters.combine, in the page
  if (item.rule) return false;
  if (mark === "drop") return false;
  return mark === "keep" || !(item.judge && item.judge.reason);
}
function matches(item) {
  const t = typeSelect.value, s = statusSelect.value, j = judgeSelect.value;
  const r = reviewSelect.value, mark = markOf(item);
  if (t && item.type !== t) return false;
  if (j === "passed" && !judgePassed(item)) return false;
  if (j === "rejected" && !(item.judge && item.judge.reason)) return false;
  if (j === "disagree" && !disagrees(item)) return false;
  if (j === "none" && item.judge) return false;
  if (r === "unmarked" ? mark : r && mark !== r) return false;
  if (s === "kept" || s === "dropped") return item.status === s;
  return !s || "dropped:" + item.reason === s;
}
function rate(n, of) { return of ? `${n} of ${of} (${Math.round(100 * n / of)}%)` : "–"; }
function figures() {
  const head = ["question type", "pairs", "rules keep", "judge keeps", "judge vs rules",
    "review keeps", "kept (built)", "kept with your marks"];
  const table = el("table", {class: "figures"},
    el("tr", {}, ...head.map(h => el("th", {text: h}))));
  for (const t of [...DATA.types, null]) {
    const mine = DATA.items.filter(i => t === null || i.type === t);
    const judged = mine.filter(i => i.judge), marked = mine.filter(markOf);
    const against = mine.filter(i => disagrees(i) && i.judge.reason).length;
    const rescued = mine.filter(i => disagrees(i) && !i.judge.reason).length;
    const cells = [t === null ? "all" : t, String(mine.length),
      rate(mine.filter(i => !i.rule).length, mine.length),
      DATA.judged ? rate(judged.filter(judgePassed).length, judged.length) : "not run",
      DATA.judged ? `drops ${against} the rules keep, keeps ${rescued} they drop` : "–",
      rate(marked.filter(i => markOf(i) === "keep").length, marked.length),
      rate(mine.filter(i => i.status === "kept").length, mine.length),
      rate(mine.filter(i => keptWith(i, markOf(i))).length, mine.length)];
    table.append(el("tr", {"data-type": t === null ? "" : t},
      ...cells.map((c, n) => el("td", {text: c, class: n === 4 ? "why" : ""}))));
  }
  document.getElementById("figures").replaceChildren(table);
}
function reviewBar() {
  const all = Object.entries(marks).filter(([, m]) => m.mark);
  const here = all.filter(([k]) => byKey.has(k));
  const drop = here.filter(([, m]) => m.mark === "drop").length;
  const unapplied = DATA.items.filter(i => (markOf(i) || null) !==
    ((applied[i.key] || {}).mark || null)).length;
  document.getElementById("marked").textContent = `${here.length} marked (${drop} drop, ` +
    `${here.length - drop} keep); ${unapplied} differ from the review applied at the last build`;
  const stale = all.length - here.length;
  document.getElementById("stale").textContent = stale ? `${stale} marks are on pairs no ` +
    "longer in this set (a rerun changed their records): they are exported, and the build " +
    "reports them" : "";
  document.getElementById("forget").hidden = !stale;
  figures();
}
function setMark(item, change) {
  const m = {...(marks[item.key] || {mark: null, note: ""}), ...change,
    question_type: item.type, question: item.question, image: item.file};
  if (!m.mark && !m.note) delete marks[item.key]; else marks[item.key] = m;
  save(); reviewBar();
}
document.getElementById("forget").addEventListener("click", () => {
  for (const key of Object.keys(marks)) if (!byKey.has(key)) delete marks[key];
  save(); reviewBar();
});
document.getElementById("export").addEventListener("click", () => {
  const rows = Object.entries(marks).filter(([, m]) => m.mark).map(([key, m]) => ({key: key,
    mark: m.mark, note: m.note || "", question_type: m.question_type, question: m.question,
    image: m.image}));
  const file = {[DATA.format]: DATA.version, set: DATA.set,
    exported: new Date().toISOString(), marks: rows};
  const blob = new Blob([JSON.stringify(file, null, 1) + "\\n"], {type: "application/json"});
  const link = el("a", {href: URL.createObjectURL(blob), download: DATA.name + "-review.json"});
  document.body.append(link); link.click(); link.remove();
});
function response(kind, text) {
  return el("div", {class: "box " + kind}, el("b", {text: kind + ": "}),
    text === null ? el("i", {text: "(none)"}) : text);
}
function verdicts(item) {
  const j = item.judge;
  if (!j) return null;
  const said = kind => el("div", {}, el("b", {text: "judge on the " + kind + ": "}),
    el("span", {class: "verdict " + j[kind].verdict, text: j[kind].verdict || "unparsed"}),
    " ", el("span", {class: "meta", text: j[kind].explanation || ""}));
  const outcome = j.reason ? "does not pass (" + j.reason + ")" : "passes";
  return el("div", {class: "judge"}, said("preferred"), said("rejected"),
    el("div", {}, "judge: " + outcome, disagrees(item) ? el("span", {class: "disagree-tag",
      text: item.rule ? " · the rules drop it (" + item.rule + ")" : " · the rules keep it"})
      : null));
}
function reviewControls(item, node) {
  const m = marks[item.key] || {};
  const buttons = ["keep", "drop"].map(mark => el("button", {class: "mark " + mark,
    "aria-pressed": String(m.mark === mark), text: mark}));
  const note = el("input", {class: "note", type: "text", value: m.note || "",
    placeholder: "note (exported with a mark)"});
  function show() {
    const now = markOf(item);
    buttons.forEach(b => b.setAttribute("aria-pressed", String(b.textContent === now)));
    node.classList.toggle("marked-drop", now === "drop");
  }
  for (const button of buttons) button.addEventListener("click", () => {
    setMark(item, {mark: markOf(item) === button.textContent ? null : button.textContent});
    show();
  });
  note.addEventListener("input", () => setMark(item, {note: note.value}));
  return [el("div", {class: "marks"}, ...buttons, note), show];
}
function render(item) {
  const status = el("span", {class: "badge " + item.status,
    text: item.reason ? "dropped: " + item.reason : item.status});
  const node = el("div", {class: "item" + (disagrees(item) ? " disagree" : ""),
    "data-status": item.status, "data-key": item.key});
  const [controls, show] = reviewControls(item, node);
  node.append(
    el("div", {}, image(item.image), el("div", {class: "meta", text: item.file})),
    el("div", {class: "cols"},
      el("div", {}, status, el("span", {class: "badge", text: item.type})),
      el("div", {class: "q", text: item.question}),
      response("preferred", item.preferred), response("rejected", item.rejected),
      verdicts(item), controls));
  show();
  return node;
}
reviewBar();
viewer(DATA.items, matches, render);
"""
