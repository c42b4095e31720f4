"""Self-contained HTML pages: the data as JSON inside the page, rendered a page at a time.

One file that opens from file:// with no server: inline CSS and JS, images as inline JPEG
thumbnails stored once per image. The items are drawn from the embedded JSON 50 at a time
(filters and search run over the data, not the DOM), so 10,000 items load as fast as 50.
Every text from a model goes in with textContent, never as HTML.
"""

from __future__ import annotations

import base64
import html
import io
import json
from functools import lru_cache
from pathlib import Path

from pipeline.files import InputFileError, read_text_file

PAGE_SIZE = 50

_CSS = """
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.2em}
table.figures{border-collapse:collapse;margin:.5em 0}
table.figures td,table.figures th{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.figures td:first-child,table.figures th:first-child,
table.figures td.why{text-align:left}
.controls{position:sticky;top:0;background:#fff;padding:.6em 0;border-bottom:1px solid #ccc;
  display:flex;gap:1em;flex-wrap:wrap;align-items:center}
.controls input[type=search]{width:22em}
.item{display:grid;grid-template-columns:200px 1fr;gap:1em;padding:.8em 0;
  border-bottom:1px solid #ddd}
.item img{max-width:192px;max-height:192px}
.cols{display:grid;gap:.6em}
.box{padding:.4em .6em;border-radius:4px;white-space:pre-wrap;word-break:break-word}
.meta{color:#555;font-size:.9em}.q{font-weight:600;margin:.3em 0}
.preferred,.True{background:#e6f4ea}.rejected,.False{background:#fce8e6}
.Ambiguous{background:#fef7e0}.unparsed,.failed,.missing{background:#eee}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em;
  border:1px solid #bbb;margin-right:.4em}
.dropped{border-color:#c5221f;color:#c5221f}.kept{border-color:#137333;color:#137333}
.changed{outline:2px solid #f9ab00}
"""

# Shared by every page: el() builds DOM nodes from data; viewer() filters, counts and pages.
_JS = """
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
function el(tag, props, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid);
  return node;
}
function image(id) {
  const src = DATA.images[id];
  return src ? el("img", {src: src, alt: id, loading: "lazy"}) : el("div", {class: "meta",
    text: "(image not readable)"});
}
function option(select, value, label) { select.append(el("option", {value: value,
  text: label})); }
function viewer(items, matches, render) {
  for (const item of items) item._text = (item.search || "").toLowerCase();
  const list = document.getElementById("list"), count = document.getElementById("count");
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  let page = 0, shown = items;
  function draw() {
    const pages = Math.max(1, Math.ceil(shown.length / DATA.page_size));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * DATA.page_size;
    list.replaceChildren(...shown.slice(start, start + DATA.page_size).map(render));
    const end = Math.min(start + DATA.page_size, shown.length);
    count.textContent = shown.length ? `${start + 1}-${end} of ${shown.length} shown ` +
      `(${items.length} in all), page ${page + 1} of ${pages}` :
      `none of ${items.length} matches`;
    prev.disabled = page === 0; next.disabled = page >= pages - 1;
  }
  function refresh() {
    const query = document.getElementById("search").value.trim().toLowerCase();
    shown = items.filter(item => (!query || item._text.includes(query)) && matches(item));
    page = 0; draw();
  }
  for (const control of document.querySelectorAll(".ctl"))
    control.addEventListener("input", refresh);
  prev.addEventListener("click", () => { page -= 1; draw(); window.scrollTo(0, 0); });
  next.addEventListener("click", () => { page += 1; draw(); window.scrollTo(0, 0); });
  refresh();
}
"""

CONTROLS = (
    "<input type='search' id='search' class='ctl' placeholder='search the text'>"
    "<button id='prev'>previous</button><button id='next'>next</button>"
    "<span id='count' class='meta'></span>"
)


def write_page(path: Path, title: str, head: str, controls: str, data: dict, script: str) -> Path:
    """One page: `head` (HTML above the list), `controls` (the page's own filters, each an
    element of class `ctl`), `data` (embedded as JSON: `items`, `images`, ...) and `script`,
    which calls viewer(items, matches, render)."""
    payload = json.dumps({**data, "page_size": PAGE_SIZE}, ensure_ascii=False)
    # "</script>" or "<!--" in a model's text would end or bend the <script> element: no
    # "<" at all ("<" occurs only inside JSON strings, where \\u003c is the same text).
    payload = payload.replace("<", "\\u003c")
    page = (
        "<!doctype html><html lang='en'><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<h1>{html.escape(title)}</h1>{head}"
        f"<div class='controls'>{controls}{CONTROLS}</div><div id='list'></div>"
        f"<script type='application/json' id='data'>{payload}</script>"
        f"<script>{_JS}{script}</script></html>"
    )
    # errors="replace": a lone surrogate in a record's text must not cost the whole page.
    path.write_text(page, encoding="utf-8", errors="replace")
    return path


@lru_cache(maxsize=4096)
def thumbnail(image_path: str, size: int = 192) -> str:
    """The image as an inline JPEG no larger than `size` pixels ("" when unreadable)."""
    from PIL import Image

    try:
        with Image.open(image_path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def inline_png(path: Path) -> str:
    """A PNG file (a plot) as a data URL, "" when absent."""
    if not path.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def images_by_id(paths: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Thumbnails once per image: (path -> id, id -> data URL)."""
    ids = {path: f"i{n}" for n, path in enumerate(dict.fromkeys(paths))}
    return ids, {ident: thumbnail(path) for path, ident in ids.items()}


def read_rows(path: Path, fix: str) -> list[dict]:
    """The rows of a page's JSONL source; a missing file names the command (`fix`) that
    writes it."""
    if path.parent.is_file():
        raise FileNotFoundError(f"{path.parent}: is a file; give the run's output folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {fix}")
    rows = []
    for number, line in enumerate(read_text_file(path, "page source"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputFileError(f"{path}: line {number} is not JSON ({err.msg}); {fix}") from err
        if not isinstance(row, dict):
            raise InputFileError(f"{path}: line {number} is not a JSON object; {fix}")
        rows.append(row)
    return rows
