"""Importing the original MACAROON training files (imagination/importer.py)."""

import json
import shutil
from pathlib import Path

import pytest

from imagination.importer import ImportFormatError, import_files, save_import

SAMPLES = Path(__file__).resolve().parents[1] / "datasets" / "samples"


def user(text, image=True):
    return {
        "role": "user",
        "content": ([{"type": "image", "text": None}] if image else [])
        + [{"type": "text", "text": text}],
    }


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def record(rid, image, *values):
    turns = [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]
    out = {"image": image, "conversations": turns}
    return {"id": rid, **out} if rid is not None else out


def write(path: Path, records, jsonl=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


@pytest.fixture
def data(tmp_path):
    """A data folder with images/a.jpg and images/b.jpg."""
    (tmp_path / "images").mkdir()
    for name, sample in (("a", "sample_001"), ("b", "sample_002")):
        shutil.copy(SAMPLES / "images" / f"{sample}.jpg", tmp_path / "images" / f"{name}.jpg")
    return tmp_path


def pair(rid, image="images/a.jpg", question="<image>\nWhat is on the table?"):
    return record(rid, image, question, {"preferred": f"good {rid}", "rejected": f"bad {rid}"})


def six_files(folder: Path) -> list[Path]:
    chat = ["<image>\nHow many mugs?", "Two.", "Look again: there are three.", "Three mugs."]
    return [
        write(folder / "preference_dataset.json", [pair("p0"), pair("p1", "images/b.jpg")]),
        write(folder / "VLfeedback_dataset.json", [pair("v0")]),
        write(
            folder / "preference_dataset_seperate.json",
            [
                record("s0", "images/a.jpg", "Q?", {"preferred": "yes"}),
                record("s1", "images/a.jpg", "Q?", {"rejected": "no"}),
            ],
        ),
        write(
            folder / "VLfeedback_dataset_seperate.json",
            [record("vs0", "images/b.jpg", "Q?", {"rejected": "no"})],
        ),
        write(folder / "preference_dataset_multiturn.json", [record("m0", "images/a.jpg", *chat)]),
        write(
            folder / "vlfeedback_nlf_conversations.jsonl",
            [record(None, "images/b.jpg", "Describe it.", "A mug.")] * 2,
            jsonl=True,
        ),
    ]


def test_six_kinds_row_counts(data):
    dd, summary = import_files(six_files(data))
    # pair: 3 records -> 3 sft, 3 dpo, 6 crl; separate: 1 preferred + 2 rejected
    assert summary["rows"] == {"sft": 4, "dpo": 3, "crl": 9, "multiturn": 3}
    assert {name: len(ds) for name, ds in dd.items()} == summary["rows"]
    kinds = [(Path(f["path"]).name, f["kind"], f["records"]) for f in summary["files"]]
    assert kinds == [
        ("preference_dataset.json", "pair", 2),
        ("VLfeedback_dataset.json", "pair", 1),
        ("preference_dataset_seperate.json", "separate", 2),
        ("VLfeedback_dataset_seperate.json", "separate", 1),
        ("preference_dataset_multiturn.json", "multiturn", 1),
        ("vlfeedback_nlf_conversations.jsonl", "multiturn", 2),
    ]
    assert summary["skipped"] == []


def test_sft_and_dpo_rows(data):
    dd, _ = import_files([write(data / "preference_dataset.json", [pair("p0")])])
    sft, dpo = dd["sft"][0], dd["dpo"][0]
    assert sft["messages"] == [user("What is on the table?"), assistant("good p0")]
    assert sft["images"][0].size == (320, 240)
    assert dpo["prompt"] == [user("What is on the table?")]
    assert (dpo["chosen"], dpo["rejected"]) == ([assistant("good p0")], [assistant("bad p0")])
    assert (sft["key"], sft["source"], sft["question_type"]) == (
        "p0",
        "preference_dataset.json#0",
        "",
    )
    assert (sft["model"], sft["tier"], sft["criteria_hash"]) == ("", "", "")


def test_crl_rewards(data):
    files = [
        write(data / "VLfeedback_dataset.json", [pair(None)]),
        write(
            data / "preference_dataset_seperate.json",
            [
                record(7, "images/a.jpg", "Q?", {"rejected": "no"}),
                record(8, "images/a.jpg", "Q?", {"preferred": "yes"}),
            ],
        ),
    ]
    dd, _ = import_files(files)
    crl = dd["crl"].remove_columns("images")
    got = [(r["reward"], r["completion"][0]["content"][0]["text"], r["key"]) for r in crl]
    assert got == [
        ("good", "good None", "VLfeedback_dataset.json#0"),  # no id: the key is the source
        ("bad", "bad None", "VLfeedback_dataset.json#0"),
        ("bad", "no", "7"),
        ("good", "yes", "8"),
    ]
    assert crl["question_type"] == ["general", "general", "", ""]
    # only the separate file's preferred answer (and the pair) become sft rows
    assert [m[1]["content"][0]["text"] for m in dd["sft"]["messages"]] == ["good None", "yes"]


def test_multiturn_rows(data):
    turns = ["<image>\nWhich mug is orange?", "The left one.", "None is orange.", "Right: none."]
    dd, _ = import_files(
        [write(data / "preference_dataset_multiturn.json", [record("m", "images/a.jpg", *turns)])]
    )
    messages = dd["multiturn"][0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0] == user("Which mug is orange?")
    assert messages[2] == user("None is orange.", image=False)
    assert messages[3] == assistant("Right: none.")


def test_image_paths_resolve(data, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("json")
    absolute = str(data / "images" / "b.jpg")
    files = [
        write(data / "preference_dataset.json", [pair("rel")]),  # against the file's folder
        write(elsewhere / "VLfeedback_dataset.json", [pair("abs", image=absolute)]),
    ]
    dd, _ = import_files(files)
    assert len(dd["sft"]) == 2
    with pytest.raises(ImportFormatError, match="record 0 .*image not found"):
        import_files([write(elsewhere / "preference_dataset.json", [pair("rel")])])
    dd, summary = import_files([elsewhere / "preference_dataset.json"], image_root=data)
    assert len(dd["sft"]) == 1 and summary["image_root"] == str(data)


def test_bundled_sample():
    dd, summary = import_files([SAMPLES / "VLfeedback_dataset.json"])
    assert summary["rows"] == {"sft": 8, "dpo": 8, "crl": 16, "multiturn": 0}
    assert set(dd["crl"]["reward"]) == {"good", "bad"}
    assert set(dd["sft"]["question_type"]) == {"general"}


def test_save_import_embeds_images(data, tmp_path_factory):
    from datasets import load_from_disk

    dd, summary = import_files(six_files(data))
    out = tmp_path_factory.mktemp("out")
    save_import(dd, summary, out)
    shutil.rmtree(data / "images")  # the saved dataset must not need the source images
    loaded = load_from_disk(str(out / "dataset"))
    assert {name: len(ds) for name, ds in loaded.items()} == {
        "sft": 4,
        "dpo": 3,
        "crl": 9,
        "multiturn": 3,
    }
    image = loaded["multiturn"][0]["images"][0]
    assert image.convert("RGB").size == (320, 240)
    card = (out / "dataset" / "README.md").read_text()
    assert "original MACAROON training files" in card and "| crl | 9 |" in card
    assert "preference_dataset_seperate.json" in card
    assert json.loads((out / "import_summary.json").read_text())["rows"]["crl"] == 9


BAD_INPUTS = {
    "malformed json": (
        "preference_dataset.json",
        '[{"id": 1,',
        r"preference_dataset.json: not valid JSON at line 1",
    ),
    "not a list": (
        "preference_dataset.json",
        '{"data": []}',
        r"preference_dataset.json: must be a JSON list",
    ),
    "no conversations": (
        "preference_dataset.json",
        json.dumps([pair("ok"), {"id": "x", "image": "images/a.jpg"}]),
        r"preference_dataset.json: record 1 \(id 'x'\): has no 'conversations'",
    ),
    "neither key": (
        "VLfeedback_dataset.json",
        json.dumps([record("abc", "images/a.jpg", "Q?", {"answer": "A"})]),
        r"VLfeedback_dataset.json: record 0 \(id 'abc'\): conversations\[1\].value must hold "
        r"'preferred' and 'rejected', got keys \['answer'\]",
    ),
    "one key in pair file": (
        "VLfeedback_dataset.json",
        json.dumps([pair("a"), record("b", "images/a.jpg", "Q?", {"preferred": "A"})]),
        r"record 1 \(id 'b'\): .*got keys \['preferred'\]",
    ),
    "both keys in separate file": (
        "preference_dataset_seperate.json",
        json.dumps([pair("both")]),
        r"preference_dataset_seperate.json: record 0 \(id 'both'\): .*exactly one of",
    ),
    "empty question": (
        "preference_dataset.json",
        json.dumps([pair("q", question="<image>\n ")]),
        r"record 0 \(id 'q'\): conversations\[0\].value \(the question\) is empty",
    ),
    "missing image": (
        "preference_dataset.json",
        json.dumps([pair("gone", image="images/nope.jpg")]),
        r"record 0 \(id 'gone'\): image not found: .*nope.jpg",
    ),
    "malformed jsonl line": (
        "vlfeedback_nlf_conversations.jsonl",
        json.dumps(record(None, "images/a.jpg", "Q", "A")) + "\n{oops\n",
        r"vlfeedback_nlf_conversations.jsonl: line 2: not valid JSON",
    ),
    "odd multiturn": (
        "vlfeedback_nlf_conversations.jsonl",
        "\n" + json.dumps(record("t", "images/a.jpg", "Q", "A", "Q2")) + "\n",
        r"record 0 \(line 2, id 't'\): conversations must alternate",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_file_and_record(data, case):
    name, text, message = BAD_INPUTS[case]
    (data / name).write_text(text)
    with pytest.raises(ImportFormatError, match=message):
        import_files([data / name])


def test_every_bad_record_reported_at_once(data):
    records = [pair(f"r{i}", image=f"images/missing{i}.jpg") for i in range(25)]
    records.insert(3, {"id": "broken"})
    with pytest.raises(ImportFormatError) as caught:
        import_files([write(data / "preference_dataset.json", records)])
    assert len(caught.value.problems) == 26
    assert "record 3 (id 'broken')" in str(caught.value) and "and 6 more" in str(caught.value)


def test_skip_missing_images(data):
    records = [pair("here"), pair("gone", image="images/nope.jpg")]
    dd, summary = import_files(
        [write(data / "preference_dataset.json", records)], skip_missing_images=True
    )
    assert len(dd["sft"]) == 1 and dd["sft"][0]["key"] == "here"
    stats = summary["files"][0]
    assert (stats["records"], stats["imported"], stats["skipped"]) == (2, 1, 1)
    skipped = summary["skipped"][0]
    assert (skipped["file"], skipped["record"], skipped["id"]) == (
        "preference_dataset.json",
        1,
        "gone",
    )
    assert skipped["reason"].startswith("image not found")
    with pytest.raises(ImportFormatError, match="no rows imported"):
        import_files(
            [write(data / "x" / "preference_dataset.json", records[1:])], skip_missing_images=True
        )


def test_other_names_are_sniffed(data):
    files = [
        write(data / "pairs.json", [pair("p")]),
        write(data / "crl.json", [record("c", "images/a.jpg", "Q?", {"rejected": "no"})]),
        write(data / "chat.jsonl", [record("m", "images/a.jpg", "Q", "A")], jsonl=True),
    ]
    _, summary = import_files(files)
    assert [f["kind"] for f in summary["files"]] == ["pair", "separate", "multiturn"]
    assert summary["rows"] == {"sft": 1, "dpo": 1, "crl": 3, "multiturn": 1}
    with pytest.raises(ImportFormatError, match="unknown.json: cannot tell the file's kind"):
        import_files([write(data / "unknown.json", [record("u", "images/a.jpg", "Q", {"x": 1})])])
