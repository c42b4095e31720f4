"""The `macaroon` console script: commands that exist work; bad input exits 2 with a reason."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CRITERIA, PIE_TYPES

from commands.cli import COMMANDS, main


def test_console_script_lists_only_working_commands():
    script = Path(sys.executable).parent / "macaroon"  # installed beside the interpreter
    assert script.is_file()
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_documents_its_options(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0 and "--config" not in capsys.readouterr().err


def test_unknown_command_exits_2(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.vllm
def test_demo_evaluates_base_and_crl_and_compares_them_with_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--size", "tiny", "--train_steps", "3", "--out", "demo", "--max_tokens", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[5/5]" in out and "demo done:" in out and "text is noise" in out
    assert "started a vLLM server" in out  # the judge folder is served on 127.0.0.1
    assert (tmp_path / "demo/imagine/dataset/dataset_dict.json").is_file()
    assert (tmp_path / "demo/imagine/browse.html").is_file()
    assert json.loads((tmp_path / "demo/crl/macaroon.json").read_text())["method"] == "crl"
    for name, conditioning in (("base", None), ("crl", "good")):
        metrics = json.loads((tmp_path / f"demo/eval/{name}/metrics.json").read_text())
        assert metrics["model"]["conditioning"] == conditioning and metrics["n"] == 24
        assert metrics["failed"] == 0 and {t for t in metrics["types"]} == set(PIE_TYPES)
        # The judge's JSON is constrained (compact, the type's labels): every verdict parses.
        assert metrics["unparsed"] == 0 and metrics["aar_all"] is not None
    table = (tmp_path / "demo/report/table.md").read_text()
    assert "| base |" in table and "| crl |" in table and "| – |" not in table
    assert (tmp_path / "demo/report/plot.png").is_file()
    assert "crl" in (tmp_path / "demo/report/browse.html").read_text()


def test_criteria_command_reports_a_bad_file(tmp_path, capsys):
    shutil.copytree(CRITERIA, tmp_path / "c")
    (tmp_path / "c" / "false_premise.yaml").write_text("name: False Premise\n")
    assert main(["criteria", "--criteria_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "false_premise.yaml: missing field(s)" in err and "Traceback" not in err


def test_criteria_command_lists_types(capsys):
    assert main(["criteria"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PIE_TYPES) and "6 question types" in out


def test_generated_docs_are_current():
    from conftest import REPO

    from commands.docs import command_configs, config_reference, models_reference

    pages = {"CONFIG.md": config_reference(command_configs()), "MODELS.md": models_reference()}
    for name, text in pages.items():
        committed = (REPO / "docs" / name).read_text()
        assert committed == text, f"run `macaroon docs` and commit docs/{name}"
