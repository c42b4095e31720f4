"""`macaroon reproduce`: bad plans are refused before any model loads; the tiny plan runs
end to end, survives kill -9, and an edited row reruns with its dependants only."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import PIE_TYPES, REPO, SAMPLES
from fault_proxy import fault_proxy

from commands.cli import main
from evaluation.reproduction import IncomparableRuns, check_comparable

TINY = REPO / "configs" / "reproduce" / "tiny.yaml"


def plan_file(folder: Path, **changes) -> Path:
    plan = yaml.safe_load(TINY.read_text())
    plan.update(changes)
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def refused(capsys, plan: Path, out: Path) -> str:
    assert main(["reproduce", "--plan", str(plan), "--out", str(out)]) == 2
    assert not out.exists()  # refused before anything ran or was written
    return capsys.readouterr().err


ROWS = yaml.safe_load(TINY.read_text())["rows"]
BAD_PLANS = [
    ({"rows": [*ROWS, {"name": "x", "method": "crll"}]}, "row 'x': unknown method 'crll'"),
    ({"judg": {"judge_model": "m"}}, "unknown key `judg`; did you mean `judge`?"),
    ({"rows": [{"name": "s", "method": "crl", "train": {"learnig_rate": 1}}]},
     "`learnig_rate` is no option of `macaroon train --method crl`; did you mean "
     "`learning_rate`?"),
    ({"rows": [{"name": "g", "method": "grpo", "from": "nope"}]},
     "row 'g' starts from 'nope', which is not a row"),
    ({"rows": [{"name": "a", "method": "grpo", "from": "b"},
               {"name": "b", "method": "grpo", "from": "a"}]}, "in a circle: a -> b -> a"),
    ({"rows": [{"name": "s", "method": "sft_after_multiturn"}]}, "add `from: NAME`"),
    ({"rows": [{"name": "s", "method": "sft", "from": "base"}, {"name": "base", "method": "base"}]},
     "METHOD=sft does not start from another row's adapter"),
    ({"pie": "no/such/pie.jsonl"}, "pie no/such/pie.jsonl: not found"),
    ({"data": {"dataset": "no/such/folder"}}, "data: dataset no/such/folder: not found"),
    ({"data": {"imagine": "configs/imagine.yaml", "import": ["x.json"]}},
     "give exactly one of imagine, dataset, import"),
    ({"data": {"import": ["datasets/samples/VLfeedback_dataset.json"]}},
     "row(s) grpo: METHOD=grpo rewards each answer by its question type's rubric, and the "
     "original MACAROON files carry no question type (8 of 8 records untyped)"),
    ({"general_tasks": "pope"}, "`general_tasks` must be a list of lmms-eval task names"),
    ({"general_tasks": ["pope"], "general_data": "no/such/dir"}, "general_data no/such/dir"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "message"), BAD_PLANS)
def test_a_bad_plan_is_refused_before_any_model_loads(capsys, tmp_path, changes, message):
    err = refused(capsys, plan_file(tmp_path, **changes), tmp_path / "out")
    assert message in err and str(tmp_path / "plan.yaml") in err


def test_a_missing_plan_and_a_broken_one_name_the_file(capsys, tmp_path):
    err = refused(capsys, tmp_path / "nope.yaml", tmp_path / "out")
    assert "nope.yaml: plan not found" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("rows: [unclosed\n")
    assert "broken.yaml: not valid YAML" in refused(capsys, broken, tmp_path / "out")


def test_general_tasks_add_a_stage_per_row_and_a_column_per_task(tmp_path, capsys):
    from evaluation.report import capability_plot
    from evaluation.reproduction import table_csv, table_md

    plan = plan_file(tmp_path, general_tasks=["pope", "mme"])
    assert main(["reproduce", "--plan", str(plan), "--out", str(tmp_path / "o"),
                 "--dry_run", "true"]) == 0  # fmt: skip
    listed = capsys.readouterr().out
    assert all(f"general {r['name']}" in listed for r in ROWS)
    assert "general crl" in listed.partition("train crl")[2]  # after the adapter it runs
    runs = {name: {"types": {}, "aar_all": aar, "aar": aar, "n": 1, "unparsed": 0, "failed": 0}
            for name, aar in (("base", 0.2), ("crl", 0.8))}  # fmt: skip
    general = {"base": {"tasks": {"pope": {"score": 0.9, "metric": "pope_accuracy"},
                                  "mme": {"score": 1400.0, "metric": "mme_perception_score"}},
                        "general_score": 0.8, "data": "bundled"},
               "crl": {"tasks": {"pope": {"score": 0.85, "metric": "pope_accuracy"}},
                       "general_score": 0.85, "data": "bundled"}}  # fmt: skip
    table = table_md(runs, [], [], "", general)
    assert "| AAR [95% CI] | general: pope | general: mme | general score |" in table
    assert "| base | base | 0.20 | 0.9 | 1.4e+03 | 0.8 |" in table
    assert "| crl | base | 0.80 | 0.85 | – | 0.85 |" in table
    assert "general: mme" in table_csv(runs, [], [], general).splitlines()[0]
    assert capability_plot([(n, runs[n]["aar_all"], general[n]["general_score"]) for n in runs],
                           tmp_path / "capability.png")  # fmt: skip
    assert (tmp_path / "capability.png").stat().st_size > 0


def test_the_table_refuses_rows_judged_by_different_judges():
    same = {"judge": {"fingerprint": "j1"}, "pie_fingerprint": "p1"}
    check_comparable({"base": same, "crl": dict(same)})
    with pytest.raises(IncomparableRuns, match="base, sft; crl"):
        check_comparable({"base": same, "sft": same,
                          "crl": {**same, "judge": {"fingerprint": "j2"}}})  # fmt: skip
    with pytest.raises(IncomparableRuns, match="PIE file: base; crl"):
        check_comparable({"base": same, "crl": {**same, "pie_fingerprint": "p2"}})


@pytest.fixture
def small_pie(tmp_path):
    """One PIE question per type (the bundled sample has four), images beside it."""
    rows = [json.loads(line) for line in (SAMPLES / "evaluation_dataset.jsonl").open()]
    picked = [next(r for r in rows if r["Question Type"] == t) for t in PIE_TYPES]
    folder = tmp_path / "pie"
    (folder / "images").mkdir(parents=True)
    for row in picked:
        name = f"{row['Image ID']}.jpg"
        (folder / "images" / name).write_bytes((SAMPLES / "images" / name).read_bytes())
    path = folder / "evaluation_dataset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return path


def _started(output: str) -> set[str]:
    return {line.split("] ", 1)[1].split(":")[0] for line in output.splitlines()
            if line.startswith("[") and ": running (" in line}  # fmt: skip


def _judge_calls(out: Path, ran: set[str]) -> int:
    """The judge calls the stages in `ran` report: evaluations' judge stage, GRPO's reward."""
    total = 0
    for name in ran:
        kind, row = name.split(" ", 1)
        if kind == "eval":
            metrics = json.loads((out / "rows" / row / "eval" / "metrics.json").read_text())
            total += sum(s["generated"] + s["failed"] for s in metrics["stages"]
                         if s["name"] == "judge")  # fmt: skip
        record = out / "rows" / row / "adapter" / "macaroon.json"
        if kind == "train" and record.is_file():
            total += (json.loads(record.read_text()).get("judge") or {}).get("calls", 0)
    return total


@pytest.mark.slow
def test_tiny_plan_end_to_end_killed_resumed_and_one_row_edited(
    tiny_model, vllm_server, sample_images, small_pie, tmp_path, capsys
):
    model = str(tiny_model("llava"))
    images = sample_images("sample_001.jpg", "sample_002.jpg")
    with fault_proxy(vllm_server("llava").base_url, lambda n: None) as judge:
        plan = plan_file(
            tmp_path, model=model, pie=str(small_pie),
            data={"imagine": "configs/imagine.yaml",
                  "options": {"images": str(images), "question_max_tokens": 8,
                              "response_max_tokens": 8, "drop_truncated": False}},
            judge={"judge_model": model, "judge_base_url": judge.base_url,
                   "judge_max_tokens": 32},
            generation={"backend": "hf", "max_tokens": 8},
            train={**yaml.safe_load(TINY.read_text())["train"], "max_steps": 1},
        )  # fmt: skip
        out = tmp_path / "out"
        argv = ["reproduce", "--plan", str(plan), "--out", str(out)]

        # 1. Killed with -9 once five stages are done.
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        proc = subprocess.Popen([sys.executable, "-m", "commands.cli", *argv], cwd=REPO,
                                env=env, **quiet)  # fmt: skip
        stages = out / "stages.json"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if stages.is_file() and len(json.loads(stages.read_text() or "{}")) >= 5:
                break
            time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = json.loads(stages.read_text())
        assert 5 <= len(before) < 16, "the kill came after the run had ended"

        # 2. The rerun finishes; what had finished makes no model call and no judge call.
        calls = judge.calls
        assert main(argv) == 0
        output = capsys.readouterr().out
        ran = _started(output)
        assert not ran & set(before), "a stage done before the kill ran again"
        assert len(ran) + len(before) == 16
        after = json.loads(stages.read_text())
        assert all(after[name] == before[name] for name in before)  # records untouched
        assert judge.calls - calls == _judge_calls(out, ran) > 0

        # Every row has numbers, in both conventions, next to the outputs the plan promises.
        rows = [line.split(",") for line in (out / "table.csv").read_text().splitlines()[1:]]
        names = [r["name"] for r in yaml.safe_load(TINY.read_text())["rows"]]
        assert sorted({r[0] for r in rows}) == sorted(names)
        assert all(r[2] in ("all items", "judged items") for r in rows)
        header = (out / "table.csv").read_text().splitlines()[0].split(",")
        assert all(r[header.index("AAR")] for r in rows)
        for name in ("table.md", "plot.png", "browse.html"):
            assert (out / name).stat().st_size > 0
        lock = yaml.safe_load((out / "plan.lock.yaml").read_text())
        assert lock["versions"]["trl"] and lock["judge"]["fingerprint"]
        assert all(s["seconds"] is not None for s in lock["stages"].values())

        # 3. Edit one row's learning rate: that row and the row that starts from it rerun.
        edited = yaml.safe_load(plan.read_text())
        row = next(r for r in edited["rows"] if r["name"] == "multiturn")
        row["train"] = {**row.get("train", {}), "learning_rate": 5.0e-4}
        # Runtime knobs, not keyed: training launched as a command (as under accelerate),
        # answers made on vLLM (one engine, the base once, each adapter a LoRA on it).
        edited["train_launch"] = [sys.executable]
        edited["generation"] = {**edited["generation"], "backend": "vllm"}
        plan.write_text(yaml.safe_dump(edited))
        wanted = {"train multiturn", "eval multiturn", "train sft_after_multiturn",
                  "eval sft_after_multiturn"}  # fmt: skip
        assert main([*argv, "--dry_run", "true"]) == 0
        listed = capsys.readouterr().out
        assert {line.split()[2] + " " + line.split()[3] for line in listed.splitlines()
                if line.startswith("  to run")} == wanted  # fmt: skip
        assert "changed: options" in listed
        assert main(argv) == 0
        output = capsys.readouterr().out
        assert _started(output) == wanted
        assert output.count(f"launching: {sys.executable} -m commands.cli train") == 2
        assert "one vLLM engine for the evaluations of multiturn, sft_after_multiturn" in output
