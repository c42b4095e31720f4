"""Two machines' worth of training, on one host: `accelerate launch` with the CPU variant of
the DDP config (configs/accelerate/ddp_cpu.yaml), once per machine rank, as the README's
multi-node recipe runs it. Both ranks (gloo) end with the same adapter. Under GRPO, rank 0
judges both ranks' answers into the one judge store, each pair once."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import json_verdict
from openai_stub import last_user_text, stub_server
from safetensors.torch import load_file
from train_data import save_templated

from pipeline import REPO_ROOT
from pipeline.serve import free_port

CONFIG = REPO_ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from safetensors.torch import save_file

    def main():
        from trl import ModelConfig, SFTConfig
        from trainers.config import MacaroonTrainConfig
        from trainers.train import train

        data, model, out = sys.argv[1:4]
        model_args = ModelConfig(model_name_or_path=model, use_peft=True, lora_r=16,
                                 lora_alpha=16, lora_dropout=0.1,
                                 lora_target_modules=["q_proj", "k_proj", "v_proj"])
        args = SFTConfig(output_dir=out, max_steps=3, per_device_train_batch_size=2,
                         bf16=False, use_cpu=True, report_to=[], save_steps=3,
                         gradient_checkpointing=False, max_length=None, learning_rate=1e-3)
        trainer = train(MacaroonTrainConfig(method="crl", data=data), model_args, args)
        weights = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters()
                   if p.requires_grad}
        save_file(weights, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))

    if __name__ == "__main__":
        main()
    """
)


def launch_two_machines(script, *args) -> list[str]:
    """`accelerate launch script *args` as machine 0 and machine 1 of configs/accelerate/
    ddp_cpu.yaml, both on 127.0.0.1; both must succeed. Their logs."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    machines = []
    for rank in (0, 1):  # the command each machine runs; here both on 127.0.0.1
        argv = [accelerate, "launch", "--config_file", str(CONFIG), "--machine_rank", str(rank),
                "--main_process_ip", "127.0.0.1", "--main_process_port", port, str(script),
                *map(str, args)]  # fmt: skip
        machines.append(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        )
    logs = [machine.communicate(timeout=600)[0] for machine in machines]
    for machine, log in zip(machines, logs, strict=True):
        assert machine.returncode == 0, log[-4000:]
    return logs


@pytest.mark.slow
def test_two_machines_train_the_same_adapter(tiny_model, tmp_path):
    data = save_templated(tmp_path / "data", image_names=range(1, 3))
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    launch_two_machines(script, data, tiny_model("llava"), out)
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_file(out / "adapter_model.safetensors")
    assert len(saved) == len(rank0)
    for name, tensor in rank0.items():
        assert torch.equal(saved[name.replace(".default", "")], tensor)
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if "lora_B" in k)  # it trained
    for folder in (out, out / "checkpoint-3"):  # written once, whole, by one process
        assert json.loads((folder / "macaroon.json").read_text())["steps"] == 3
        assert not list(folder.glob("*.partial"))


# ---- GRPO: one judge, one record store, each pair judged once ---------------------------

GRPO_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from safetensors.torch import save_file

    def main():
        from trl import GRPOConfig, ModelConfig
        from trainers import reward
        from trainers.config import MacaroonTrainConfig, RewardJudgeConfig
        from trainers.train import train

        data, model, out, judge_url, dead_url = sys.argv[1:6]
        rank = int(os.environ["RANK"])
        asked = []  # per step, what this rank's reward was asked
        judge_call = reward.JudgeReward.__call__

        def spy(self, prompts, completions, question, question_type, image_path, **kwargs):
            asked.append([[q, t, str(i), reward._text(c)] for q, t, i, c in
                          zip(question, question_type, image_path, completions)])
            return judge_call(self, prompts, completions, question, question_type, image_path,
                              **kwargs)

        reward.JudgeReward.__call__ = spy
        # 8 answers to a question, 4 on each rank; 2 tokens, each one of the top 2: pairs
        # repeat, within a rank and across the two.
        args = GRPOConfig(output_dir=out, max_steps=2, num_generations=8,
                          per_device_train_batch_size=4, gradient_accumulation_steps=1,
                          max_completion_length=2, top_k=2, learning_rate=1e-2,
                          save_strategy="no", report_to=[], bf16=False, use_cpu=True,
                          logging_steps=1, warmup_steps=0)
        judge = RewardJudgeConfig(judge_model="stub", judge_base_url=judge_url,
                                  judge_max_retries=0)
        trainer = train(MacaroonTrainConfig(method="grpo", data=data),
                        ModelConfig(model_name_or_path=model, use_peft=True), args, judge=judge)
        reward.JudgeReward.__call__ = judge_call
        weights = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters()
                   if p.requires_grad}
        save_file(weights, os.path.join(out, f"rank{rank}.safetensors"))

        # Faults: rank 0's judge unreachable; rank 1 asking for a type with no rubric.
        question, qtype, image, _ = asked[0][0]
        dead = RewardJudgeConfig(judge_model="stub", judge_base_url=dead_url,
                                 judge_max_retries=0)
        judge = reward.JudgeReward(dead, os.path.join(out, "dead", "judgments.jsonl"), 2)
        raised = []
        for types in ([qtype] * 4, ["no such type" if rank == 1 else qtype] * 4):
            try:
                judge([None] * 4, [f"answer {rank}.{i}" for i in range(4)], [question] * 4,
                      types, [image] * 4)
                raised.append(None)
            except Exception as err:
                raised.append([type(err).__name__, str(err)])
        judge.close()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"asked": asked, "raised": raised}, f)

    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture(scope="module")
def grpo_run(tiny_model, tmp_path_factory):
    """Two GRPO steps on two processes, judged by a loopback stub (tests/openai_stub.py): the
    test is about how often the judge is called, which the stub counts. Its verdict is True
    for the first answer it sees and False for the others. Then two faults, on each rank."""
    first: list[str] = []

    def verdict(body: dict) -> str:
        first.append(last_user_text(body).split("Response:")[-1])
        return json_verdict("True" if first[-1] == first[0] else "False")

    root = tmp_path_factory.mktemp("ddp-grpo")
    data = save_templated(root / "data", image_names=range(1, 3))
    script = root / "ddp_grpo.py"
    script.write_text(GRPO_SCRIPT)
    out, dead = root / "out", f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with stub_server(reply=verdict) as judge:
        launch_two_machines(script, data, tiny_model("llava"), out, judge.base_url, dead)
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return out, judge, ranks


@pytest.mark.slow
def test_two_processes_of_grpo_judge_each_pair_once_into_one_store(grpo_run):
    out, judge, ranks = grpo_run
    steps = list(zip(ranks[0]["asked"], ranks[1]["asked"], strict=True))
    assert len(steps) == 2 and all(len(s0) == len(s1) == 4 for s0, s1 in steps)
    unique = [{tuple(a) for a in s0 + s1} for s0, s1 in steps]
    shared = [{tuple(a) for a in s0} & {tuple(a) for a in s1} for s0, s1 in steps]
    print(f"answers 16, unique pairs {sum(map(len, unique))}, calls {judge.calls}, "
          f"pairs asked on both ranks {sum(map(len, shared))}")  # fmt: skip
    assert any(shared)  # the case at stake: one pair on both ranks
    # One store, every pair in it once, each sent to the judge once.
    assert sorted(p.name for p in out.glob("judgments*")) == ["judgments.jsonl"]
    records = [json.loads(line) for line in (out / "judgments.jsonl").open()]
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == sum(map(len, unique)) == judge.calls
    assert {(r["question"], r["question_type"], r["image"], r["response"]) for r in records} == (
        set().union(*unique)
    )
    counts = json.loads((out / "macaroon.json").read_text())["judge"]
    assert counts["calls"] == judge.calls and counts["cached"] == 0
    assert counts["judged"] == 16 and counts["processes"] == 2 and counts["counted_on_rank"] == 0
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "judge/calls" in h]  # fmt: skip
    assert sum(h["judge/calls"] for h in logged) == judge.calls  # the batch's, not a rank's
    # Both ranks trained the same weights, and they trained.
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if "lora_B" in k)


@pytest.mark.slow
def test_a_failure_on_either_rank_is_raised_on_both(grpo_run):
    """Rank 0's judge unreachable, or rank 1's answers of a type without a rubric: every rank
    raises at once, naming the rank and the reason, instead of waiting forever on the other."""
    _, _, ranks = grpo_run
    (unreachable0, bad_type0), (unreachable1, bad_type1) = (r["raised"] for r in ranks)
    assert unreachable0[0] == "EndpointUnreachable" and "could not be reached" in unreachable0[1]
    assert unreachable1[0] == "RankFailed"
    assert unreachable1[1].startswith("rank 0 of 2 failed: EndpointUnreachable: ")
    assert bad_type1 == ["KeyError", "'no such type'"]
    assert bad_type0 == ["RankFailed", "rank 1 of 2 failed: KeyError: 'no such type'"]
