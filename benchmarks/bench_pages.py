"""Browse page: 10,000 imagined pairs, opened from file:// in headless Chromium.

Prints the time to write the page, its size, the time until the first items are drawn, and
the time a search takes to redraw; the ratio is against a reference-style page (every pair
as a row of one HTML table, as the first report page was) loaded in the same run.
Needs Debian's chromium and the playwright package (the dev extra).
"""

from __future__ import annotations

import html
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import chromium_path  # noqa: E402
from PIL import Image  # noqa: E402

from imagination.browse import write_browse, write_pairs  # noqa: E402
from imagination.filters import DROP_REASONS  # noqa: E402
from pipeline.pages import thumbnail  # noqa: E402

N, N_IMAGES = 10_000, 200


def fixture(out: Path) -> list[dict]:
    rng, images = random.Random(0), []
    (out / "images").mkdir(parents=True)
    for i in range(N_IMAGES):
        path = out / "images" / f"{i}.jpg"
        Image.new("RGB", (640, 480), (i % 256, 90, 160)).save(path)
        images.append(str(path))
    words = "the a mug red box which one do you mean cannot tell image shows".split()
    pairs = [
        {"key": f"k{i}", "image": images[i % N_IMAGES], "image_hash": str(i % N_IMAGES),
         "question_type": f"type {i % 6}", "tier": "I",
         "question": " ".join(rng.choices(words, k=12)) + "?",
         "preferred": " ".join(rng.choices(words, k=60)),
         "rejected": " ".join(rng.choices(words, k=40))}
        for i in range(N)
    ]  # fmt: skip
    reasons = [rng.choice(DROP_REASONS) if i % 4 == 0 else None for i in range(N)]
    write_pairs(pairs, reasons, out)
    return pairs


def reference_page(pairs: list[dict], path: Path) -> None:
    """Every pair as a table row, as the first (one-run) report page was written."""
    rows = [
        f"<tr><td><img src='{thumbnail(p['image'])}' width='160'></td>"
        f"<td><b>{html.escape(p['question_type'])}</b><br>{html.escape(p['question'])}</td>"
        f"<td>{html.escape(p['preferred'])}</td><td>{html.escape(p['rejected'])}</td></tr>"
        for p in pairs
    ]
    path.write_text("<!doctype html><meta charset='utf-8'><table>" + "".join(rows) + "</table>")


def load_seconds(browser, path: Path, ready: str) -> float:
    page = browser.new_page()
    start = time.perf_counter()
    page.goto(path.as_uri(), wait_until="domcontentloaded")
    page.wait_for_selector(ready)
    seconds = time.perf_counter() - start
    page.close()
    return seconds


def main() -> int:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if not executable:
        print("no chromium: apt-get install chromium (Debian)")
        return 1
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as driver:
        out = Path(tmp)
        pairs = fixture(out)
        start = time.perf_counter()
        page_path = write_browse(out)
        write_seconds = time.perf_counter() - start
        reference = out / "reference.html"
        reference_page(pairs, reference)
        browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        ours = min(load_seconds(browser, page_path, ".item") for _ in range(3))
        theirs = min(load_seconds(browser, reference, "tr:last-child img") for _ in range(3))
        page = browser.new_page()
        page.goto(page_path.as_uri())
        page.wait_for_selector(".item")
        start = time.perf_counter()
        page.fill("#search", "mug red box")
        page.wait_for_function(
            "!document.getElementById('count').textContent.includes('10000 shown')"
        )
        search = time.perf_counter() - start
        browser.close()
        print(json.dumps({
            "pairs": N, "images": N_IMAGES, "write_s": round(write_seconds, 2),
            "page_mb": round(page_path.stat().st_size / 2**20, 1),
            "first_items_s": round(ours, 3), "search_redraw_s": round(search, 3),
            "reference_page_mb": round(reference.stat().st_size / 2**20, 1),
            "reference_load_s": round(theirs, 3),
        }))  # fmt: skip
        print(f"browse page, {N} pairs: first items drawn in {ours:.2f} s, "
              f"{theirs / ours:.1f}x faster than one HTML table ({theirs:.2f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
