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


VIEWPORT = {"width": 1200, "height": 900}


def _open(browser, path: Path):
    """A new page (in `browser`, or in a browser context) at `path`, and its errors."""
    in_context = not hasattr(browser, "new_context")
    page = browser.new_page() if in_context else browser.new_page(viewport=VIEWPORT)
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


def test_review_in_the_page_then_build_drops_exactly_the_marked_pairs(
    browser, imagined_sets, tmp_path, capsys
):
    """Judge verdicts and kept rates in the page; mark two pairs drop, export, build."""
    import shutil

    from datasets import load_from_disk

    source, _, build = imagined_sets
    out = tmp_path / "set"
    shutil.copytree(source, out)
    pairs = {p["pair_key"]: p for p in map(json.loads, (out / "pairs.jsonl").open())}
    context = browser.new_context(accept_downloads=True, viewport=VIEWPORT)
    page, errors = _open(context, out / "browse.html")
    figures = page.inner_text("#figures")  # kept rate per filter and type
    assert "judge keeps" in figures and "drops 3 the rules keep, keeps 3 they drop" in figures
    page.select_option("#judge", "disagree")
    assert _shown(page) == 6 and page.locator(".item.disagree").count() == 6
    assert "scripted: false" in page.inner_text("#list")  # the judge's explanations
    page.select_option("#judge", "")
    page.select_option("#status", "kept")
    items = page.locator(".item")
    marked = [items.nth(n).get_attribute("data-key") for n in (0, 4)]
    items.nth(0).locator("button.mark.drop").click()
    items.nth(4).locator("button.mark.drop").click()
    items.nth(4).locator("input.note").fill("asks about the wrong object")
    items.nth(1).locator("button.mark.keep").click()
    items.nth(1).locator("button.mark.keep").click()  # pressed again: unmarked
    assert "2 marked (2 drop, 0 keep)" in page.inner_text("#marked")

    page.reload()  # marks persist in the browser
    page.wait_for_selector(".item")
    page.select_option("#review", "drop")
    assert sorted(page.locator(".item").evaluate_all("n => n.map(i => i.dataset.key)")) == sorted(
        marked
    )
    notes = page.locator(".item input.note").evaluate_all("n => n.map(i => i.value)")
    assert sorted(notes) == ["", "asks about the wrong object"]
    with page.expect_download() as download:
        page.click("#export")
    path = tmp_path / "marks.json"
    download.value.save_as(path)
    exported = json.loads(path.read_text())
    assert {m["key"]: m["mark"] for m in exported["marks"]} == dict.fromkeys(marked, "drop")
    assert "asks about the wrong object" in {m["note"] for m in exported["marks"]}

    assert main(build(out, f"--review={path}")) == 0
    assert "review 2" in capsys.readouterr().out
    dataset = load_from_disk(str(out / "dataset"))
    gone = {pairs[k]["key"] for k in marked}
    before = {p["key"] for p in pairs.values() if p["status"] == "kept"}
    for name, split in dataset.items():
        assert set(split["key"]) == before - gone, name  # exactly those two, every split
    card = (out / "dataset" / "README.md").read_text()
    assert "| review (`--review`) | 2 |" in card and "2 marks applied (2 drop" in card

    page, more_errors = _open(context, out / "browse.html")  # the rebuilt page agrees
    assert "0 differ from the review applied" in page.inner_text("#marked")
    page.screenshot(path=tmp_path / "review.png", full_page=True)
    context.close()
    assert errors == more_errors == []


def test_a_criteria_edit_shows_in_the_comparison_page_for_that_type_only(
    browser, imagined_sets, tmp_path
):
    from conftest import EDITED_TYPE, PIE_TYPES

    base, edited, _ = imagined_sets
    page_path = tmp_path / "compare.html"
    argv = ["browse", str(edited), "--base", str(base), "--page", str(page_path)]
    assert main(argv) == 0
    page, errors = _open(browser, page_path)
    for qtype in PIE_TYPES:
        row = page.locator(f"table.figures tr[data-type='{qtype}']")
        changed, criteria = row.locator("td.n-changed").inner_text(), row.locator("td.n-criteria")
        assert (changed, criteria.inner_text()) == (
            ("3", "edited") if qtype == EDITED_TYPE else ("0", "same")
        ), qtype
        assert [row.locator(f"td.n-{c}").inner_text() for c in ("new", "removed")] == ["0", "0"]
        assert "%" in row.locator("td.n-base").inner_text()  # each set's kept rate
    page.select_option("#change", "different")
    assert _shown(page) == 3
    assert set(page.locator(".item .badge:not(.change):not(.kept):not(.dropped)")
               .all_inner_texts()) == {EDITED_TYPE}  # fmt: skip
    assert page.locator(".item .box.preferred.changed").count() == 6  # both sides marked
    page.screenshot(path=tmp_path / "compare.png", full_page=True)
    assert errors == []
