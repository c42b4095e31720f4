"""A person's review applied to the dataset (`macaroon build --review FILE`), and the marks
files it refuses. The browser side (marking in browse.html, exporting) is in test_pages.py;
here the marks file is written as the page writes it."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import EDITED_TYPE

from commands.cli import main
from imagination.browse import read_pairs
from imagination.compare import compare_pairs, type_figures
from imagination.review import FORMAT, ReviewError, read_marks, set_identity


def marks_file(out: Path, path: Path, marks: dict[str, str], **changes) -> Path:
    """A marks file for the set in `out`, as browse.html exports it: {pair key: mark}."""
    pairs = read_pairs(out)
    by_key = {p["pair_key"]: p for p in pairs}
    rows = [
        {"key": key, "mark": mark, "note": f"note on {key[:6]}",
         "question_type": by_key.get(key, {}).get("question_type", "False Premise"),
         "question": by_key.get(key, {}).get("question", "gone?"), "image": "x.jpg"}
        for key, mark in marks.items()
    ]  # fmt: skip
    data = {FORMAT: 1, "set": set_identity(pairs, out), "exported": "now", "marks": rows}
    path.write_text(json.dumps(data | changes))
    return path


@pytest.fixture
def base(imagined_sets, tmp_path):
    """A copy of the base set, so each test may build into it."""
    source, _, build = imagined_sets
    out = tmp_path / "base"
    shutil.copytree(source, out)
    return out, build


def kept_keys(out: Path) -> dict[str, list[str]]:
    from datasets import load_from_disk

    dataset = load_from_disk(str(out / "dataset"))
    return {name: sorted(set(split["key"])) for name, split in dataset.items()}


def test_drop_and_keep_marks_leave_every_split_and_the_card_counts_each_filter(base, capsys):
    out, build = base
    pairs = read_pairs(out)
    kept = [p for p in pairs if p["status"] == "kept"]
    judged_out = next(p for p in pairs if p["reason"] == "judge_rejected")
    rule_out = next(p for p in pairs if p["rule"])
    marks = {kept[0]["pair_key"]: "drop", kept[1]["pair_key"]: "drop",
             judged_out["pair_key"]: "keep", rule_out["pair_key"]: "keep"}  # fmt: skip
    path = marks_file(out, out.parent / "marks.json", marks)
    assert main(build(out, f"--review={path}")) == 0
    printed = capsys.readouterr().out
    assert "removed    rules 6, judge 2, review 2" in printed
    assert "1 keep marks on pairs the rules drop were not applied" in printed
    expected = sorted({p["key"] for p in kept[2:]} | {judged_out["key"]})
    assert all(keys == expected for keys in kept_keys(out).values())  # every split
    card = (out / "dataset" / "README.md").read_text()
    assert "| rules | 6 |" in card and "| judge (`--judge_filter`) | 2 |" in card
    assert "| review (`--review`) | 2 |" in card and "1 kept against the judge" in card
    rows = {p["pair_key"]: p for p in read_pairs(out)}
    assert rows[kept[0]["pair_key"]]["reason"] == "review_dropped"
    assert rows[kept[0]["pair_key"]]["review"]["note"].startswith("note on")
    assert rows[judged_out["pair_key"]]["status"] == "kept"  # the person overrules the judge
    summary = json.loads((out / "summary.json").read_text())
    assert summary["removed_by"] == {"rules": 6, "judge": 2, "review": 2}

    # Remembered: a later build, and a rerun of imagine with unchanged records (the stub is
    # gone, so any model call would fail), apply OUT/review.json by themselves.
    assert (out / "review.json").read_bytes() == path.read_bytes()
    assert main(build(out)) == 0 and kept_keys(out)["dpo"] == expected
    rerun = build(out)
    rerun[0] = "imagine"
    assert main(rerun) == 0 and kept_keys(out)["dpo"] == expected
    assert "model calls: 0" in capsys.readouterr().out
    # --review none builds without it, and forgets it.
    assert main(build(out, "--review=none")) == 0 and not (out / "review.json").exists()
    assert len(kept_keys(out)["dpo"]) == 9


def test_marks_on_pairs_a_criteria_edit_regenerated_are_reported_not_applied(
    imagined_sets, tmp_path, capsys
):
    source, edited_source, build = imagined_sets
    base = tmp_path / "base"
    shutil.copytree(source, base)
    edited = tmp_path / "edited"
    shutil.copytree(edited_source, edited)
    kept = {t: [p for p in read_pairs(base) if p["status"] == "kept" and p["question_type"] == t]
            for t in ("False Premise", EDITED_TYPE)}  # fmt: skip
    marks = {kept["False Premise"][0]["pair_key"]: "drop", kept[EDITED_TYPE][0]["pair_key"]: "drop"}
    path = marks_file(base, tmp_path / "marks.json", marks)
    assert main(build(edited, f"--review={path}")) == 0  # the set changed: not an error
    printed = capsys.readouterr().out
    assert "1 marks not applied: their pair no longer exists" in printed
    assert EDITED_TYPE in printed.split("not applied")[1]  # an example names the pair
    keys = kept_keys(edited)["dpo"]
    assert kept["False Premise"][0]["key"] not in keys and kept[EDITED_TYPE][0]["key"] in keys
    card = (edited / "dataset" / "README.md").read_text()
    assert "1 marks not applied" in card and "| review (`--review`) | 1 |" in card


def unchanged(out: Path):
    """What a refused build must leave as it was."""
    names = ("pairs.jsonl", "summary.json", "browse.html", "dataset/README.md", "dataset/dpo")
    return {n: (out / n).stat().st_mtime_ns for n in names}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text[: len(text) // 2], "corrupt or truncated marks file (line"),
        (lambda text: "[1, 2]", "not a MACAROON marks file"),
        (lambda text: text.replace('"drop"', '"maybe"'), "`mark` is 'maybe'; use keep or drop"),
        (lambda text: text.replace('"set"', '"sett"'), "does not say which set it is for"),
    ],
)
def test_a_corrupt_marks_file_stops_the_build_and_changes_nothing(base, capsys, damage, message):
    out, build = base
    key = read_pairs(out)[0]["pair_key"]
    path = marks_file(out, out.parent / "marks.json", {key: "drop"})
    path.write_text(damage(path.read_text()))
    before = unchanged(out)
    assert main(build(out, f"--review={path}")) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "export the marks again" in err
    assert unchanged(out) == before and not (out / "review.json").exists()


def test_marks_for_another_set_are_refused(base, tmp_path, capsys):
    out, build = base
    other = tmp_path / "other"
    (other).mkdir()
    (other / "pairs.jsonl").write_text(
        json.dumps({**read_pairs(out)[0], "pair_key": "elsewhere"}) + "\n"
    )
    path = marks_file(other, tmp_path / "other-marks.json", {"elsewhere": "drop"})
    before = unchanged(out)
    assert main(build(out, f"--review={path}")) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "these marks are for another set" in err
    assert str(other) in err and "--review none" in err
    assert unchanged(out) == before
    # A remembered file that went bad is named too, with the way out.
    (out / "review.json").write_text("{")
    assert main(build(out)) == 2
    assert str(out / "review.json") in capsys.readouterr().err
    assert main(build(out, "--review=none")) == 0


def test_read_marks_keeps_the_last_mark_of_a_pair(tmp_path):
    path = tmp_path / "m.json"
    rows = [{"key": "a", "mark": "drop"}, {"key": "a", "mark": "keep", "note": "on second look"}]
    path.write_text(json.dumps({FORMAT: 1, "set": {"pairs_hash": "h"}, "marks": rows}))
    assert read_marks(path).marks["a"]["mark"] == "keep"
    with pytest.raises(ReviewError, match="not found"):
        read_marks(tmp_path / "missing.json")


def test_compare_finds_the_edited_type_only(imagined_sets):
    base, edited, _ = imagined_sets
    old, new = read_pairs(base), read_pairs(edited)
    figures = type_figures(old, new, compare_pairs(old, new))
    assert figures[EDITED_TYPE]["changed"] == 3 and figures[EDITED_TYPE]["same"] == 0
    others = {t: f for t, f in figures.items() if t != EDITED_TYPE}
    assert len(others) == 5 and all(
        (f["changed"], f["new"], f["removed"], f["same"]) == (0, 0, 0, 3) for f in others.values()
    )
