"""The browse and comparison pages, opened from file:// in a real headless Chromium as a user
would: no console errors, filters and search change what is shown, images render."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from commands.cli import main
from evaluation.metrics import summarize, type_metrics
from imagination.browse import write_browse, write_pairs
from imagination.filters import DROP_REASONS

TYPES = ("False Premise", "Subject Ambiguity", "Hidden Human Preferences")
NEEDLE = "zebra-needle-4711"  # in exactly one pair's preferred response
HOSTILE = "<img src=x onerror=\"console.error('injected')\"><!-- <script>boom()</script>"


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.jpg"
        Image.new("RGB", (64 + i, 48), (i * 9 % 256, 80, 200)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def imagined(tmp_path_factory) -> tuple[Path, list[dict], list[str | None]]:
    """An imagine output folder with 10,000 pairs over 40 images, a quarter of them dropped."""
    out = tmp_path_factory.mktemp("imagined")
    images, rng = _images(out / "images", 40), random.Random(0)
    pairs, reasons = [], []
    for i in range(10_000):
        image = images[i % len(images)]
        pairs.append({
            "key": f"k{i}", "image": str(image), "image_hash": f"h{i % 40}",
            "question_type": TYPES[i % 3], "tier": "I", "question": f"Question {i} about it?",
            "preferred": NEEDLE if i == 1234 else f"An engaged answer {i}.",
            "rejected": HOSTILE if i == 7 else f"A passive answer {i}.",
        })  # fmt: skip
        reasons.append(rng.choice(DROP_REASONS) if i % 4 == 1 else None)
    write_pairs(pairs, reasons, out)
    (out / "summary.json").write_text(json.dumps({"model": "tiny"}))
    return out, pairs, reasons


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector(".item")
    return page, errors


def _shown(page) -> int:
    """How many items match, from the page's own count line."""
    text = page.inner_text("#count")
    return 0 if text.startswith("none") else int(text.split(" of ")[1].split()[0])


def _images_render(page) -> None:
    page.wait_for_function(
        "[...document.querySelectorAll('.item img')].slice(0, 3)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )


def test_browse_command_writes_one_self_contained_page(imagined, tmp_path):
    out, _, _ = imagined
    page = tmp_path / "set.html"
    assert main(["browse", str(out), "--page", str(page)]) == 0
    text = page.read_text()
    assert "Q" in text and "<link" not in text and "src='http" not in text  # nothing fetched
    assert HOSTILE not in text  # model text is data inside JSON, never markup
    assert main(["browse", str(tmp_path / "nothing")]) == 2  # clear error, no traceback


def test_browse_page_in_chromium(browser, imagined, tmp_path):
    out, pairs, reasons = imagined
    page, errors = _open(browser, write_browse(out))
    assert _shown(page) == 10_000 and page.locator(".item").count() == 50  # one page drawn
    _images_render(page)

    page.select_option("#type", TYPES[1])
    assert _shown(page) == sum(p["question_type"] == TYPES[1] for p in pairs)
    assert set(page.locator(".item .badge:not(.kept):not(.dropped)").all_inner_texts()) == {
        TYPES[1]
    }
    page.select_option("#type", "")
    page.select_option("#status", "dropped:too_long")
    assert _shown(page) == Counter(reasons)["too_long"] > 0
    assert set(page.locator(".item .badge.dropped").all_inner_texts()) == {"dropped: too_long"}
    page.select_option("#status", "kept")
    assert _shown(page) == reasons.count(None)

    page.select_option("#status", "")
    page.fill("#search", NEEDLE)
    assert _shown(page) == 1 and NEEDLE in page.inner_text(".item .preferred")
    page.fill("#search", "onerror")
    assert _shown(page) == 1 and HOSTILE in page.inner_text(".item .rejected")  # shown as text
    page.fill("#search", "")
    page.click("#next")
    assert page.inner_text("#count").startswith("51-100 of 10000")
    page.screenshot(path=tmp_path / "browse.png")
    assert (tmp_path / "browse.png").stat().st_size > 10_000
    assert errors == []


def _run(folder: Path, name: str, images: list[Path], verdicts: list[str]) -> Path:
    """An evaluation run folder as `macaroon eval` leaves it: metrics.json and items.jsonl."""
    folder.mkdir(parents=True)
    rows = [
        {"image_id": f"img{i:03d}", "image": str(images[i % len(images)]),
         "question": f"PIE question {i}?", "question_type": TYPES[i % 3],
         "response": f"{name} answers {i}", "verdict": verdict,
         "explanation": f"judged {verdict}"}
        for i, verdict in enumerate(verdicts)
    ]  # fmt: skip
    per_type = {t: type_metrics([r["verdict"] for r in rows if r["question_type"] == t], "I")
                for t in TYPES}  # fmt: skip
    metrics = {"name": name, "types": per_type, **summarize(per_type), "n": len(rows),
               "unparsed": 0, "failed": 0}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_report_compares_runs_side_by_side_in_chromium(browser, tmp_path):
    images = _images(tmp_path / "images", 6)
    base_verdicts = ["True" if i % 2 else "False" for i in range(90)]
    crl_verdicts = ["True" if i % 5 else "False" for i in range(90)]
    base = _run(tmp_path / "base", "base", images, base_verdicts)
    crl = _run(tmp_path / "crl", "crl", images, crl_verdicts)
    out = tmp_path / "compare"
    assert main(["report", str(base), str(crl), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"table.md", "plot.png", "browse.html"}

    page, errors = _open(browser, out / "browse.html")
    figures = page.inner_text("table.figures")
    assert "base" in figures and "crl" in figures and TYPES[0] in figures
    assert page.locator("img[alt='Align Rate per type']").evaluate("i => i.naturalWidth") > 0
    _images_render(page)
    assert _shown(page) == 90
    first = page.locator(".item").first
    assert "base answers 0" in first.inner_text() and "crl answers 0" in first.inner_text()

    page.check("#changed")
    changed = sum(a != b for a, b in zip(base_verdicts, crl_verdicts, strict=True))
    assert _shown(page) == changed > 0
    page.select_option("#type", TYPES[2])
    assert _shown(page) == sum(
        a != b and i % 3 == 2
        for i, (a, b) in enumerate(zip(base_verdicts, crl_verdicts, strict=True))
    )
    page.uncheck("#changed")
    page.select_option("#type", "")
    page.fill("#search", "crl answers 17")
    assert _shown(page) == 1
    page.screenshot(path=tmp_path / "compare.png", full_page=True)
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert errors == []


def test_report_names_the_fix_for_a_run_without_items(tmp_path):
    run = _run(tmp_path / "old", "old", _images(tmp_path / "images", 1), ["True"])
    (run / "items.jsonl").unlink()
    assert main(["report", str(run)]) == 2
