"""METHOD=grpo: online RL with the rubric judge as the reward, on CPU.

The learning test rewards a rule (a test fixture, no judge) and measures the rewarded
behaviour before and after. The integration tests judge with the tiny model behind a real
vLLM OpenAI-compatible server on loopback, through a proxy that fails or garbles some
calls: failures must give no reward (counted, logged), never a 0.
"""

import json
import shutil

import pytest
from conftest import CRITERIA
from fault_proxy import fault_proxy
from train_data import PREFERRED, REJECTED, save_templated

from commands.cli import main
from trainers.config import MacaroonTrainConfig, RewardJudgeConfig
from trainers.train import train

QUESTIONS = ["What colour is the mug?", "How big is the dog?", "Is the lamp on?"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    return save_templated(root / "data", image_names=range(1, 5), questions=QUESTIONS)


def grpo_argv(model, data, out, steps, *extra) -> list[str]:
    return ["train", "--config", "configs/train/grpo.yaml", "--data", str(data),
            "--model_name_or_path", str(model), "--output_dir", str(out),
            "--max_steps", str(steps), "--num_generations", "4",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
            "--max_completion_length", "8", "--warmup_steps", "0", "--save_strategy", "no",
            "--lr_scheduler_type", "constant", "--logging_steps", "1", *extra]  # fmt: skip


# ---- learning: a rule-based reward raises the rate of the rewarded behaviour ----------


def word_start_share(processor, completion_ids) -> list[float]:
    """Per answer: the share of its tokens that begin a word (SentencePiece's '▁')."""
    pieces = [processor.tokenizer.convert_ids_to_tokens(ids) for ids in completion_ids]
    return [sum(p.startswith("▁") for p in ps) / max(len(ps), 1) for ps in pieces]


@pytest.mark.slow
def test_grpo_raises_the_rate_of_the_rewarded_behaviour(tiny_model, data, tmp_path):
    """The rule rewards answers by the share of their tokens that begin a word. A random
    model's logits are flat and LoRA on q/k/v cannot tilt them toward a whole class of
    tokens through its random head, so the adapter also trains a copy of lm_head
    (`lora_modules_to_save`): then the GRPO loop alone must raise the share."""
    from transformers import AutoProcessor
    from trl import GRPOConfig, ModelConfig

    model = tiny_model("llava")
    processor = AutoProcessor.from_pretrained(model)

    def rule(prompts, completions, completion_ids, log_metric, **_):
        shares = word_start_share(processor, completion_ids)
        log_metric("rule/share", sum(shares) / len(shares))
        return shares

    cfg = MacaroonTrainConfig(method="grpo", data=str(data))
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=10, num_generations=8,
        per_device_train_batch_size=8, gradient_accumulation_steps=1,
        max_completion_length=8, learning_rate=5e-2, lr_scheduler_type="constant",
        warmup_steps=0, save_strategy="no", logging_steps=1, report_to="none", bf16=False,
        beta=0.0, seed=0,
    )  # fmt: skip
    model_args = ModelConfig(
        model_name_or_path=str(model), use_peft=True, lora_r=16, lora_alpha=16,
        lora_target_modules=["q_proj", "k_proj", "v_proj"], lora_modules_to_save=["lm_head"],
    )  # fmt: skip
    trainer = train(cfg, model_args, args, judge=rule)
    rates = [h["rule/share"] for h in trainer.state.log_history if "rule/share" in h]
    first, last = sum(rates[:3]) / 3, sum(rates[-3:]) / 3
    print(f"word-start share of sampled answers: first 3 steps {first:.2f}, last 3 {last:.2f}")
    assert len(rates) == 10 and last > first + 0.3
    record = json.loads((tmp_path / "out" / "macaroon.json").read_text())
    assert record["method"] == "grpo" and record["conditioning"] is None


def test_grpo_from_a_crl_adapter_keeps_its_good_conditioning(tiny_model, data, tmp_path):
    """--init_adapter: GRPO continues the CRL adapter, samples with `good` before every
    question, and its record tells evaluation to add `good` too. An answer whose reward is
    None is left out of its group, not scored 0."""
    from trainers.inference import conditioned, read_record

    model = tiny_model("llava")
    crl = tmp_path / "crl"
    assert main(["train", "--config", "configs/train/crl.yaml", "--data", str(data),
                 "--model_name_or_path", str(model), "--output_dir", str(crl),
                 "--max_steps", "1", "--per_device_train_batch_size", "2",
                 "--gradient_accumulation_steps", "1", "--save_strategy", "no"]) == 0  # fmt: skip
    seen = []

    def rule(prompts, completions, **_):
        seen.extend(p[0]["content"][-1]["text"] for p in prompts)
        return [None, 1.0, 0.0, 1.0]  # None: no verdict

    from trl import GRPOConfig, ModelConfig

    cfg = MacaroonTrainConfig(method="grpo", data=str(data), init_adapter=str(crl))
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"), max_steps=1, num_generations=4,
        per_device_train_batch_size=4, gradient_accumulation_steps=1, max_completion_length=4,
        save_strategy="no", report_to="none", bf16=False, logging_steps=1,
    )  # fmt: skip
    trainer = train(cfg, ModelConfig(model_name_or_path=str(model), use_peft=True), args,
                    judge=rule)  # fmt: skip
    assert seen and all(text.startswith("good ") for text in seen)
    # The answer without a verdict is left out of its group's mean (2/3), not scored 0 (1/2).
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged[0]["reward"] == pytest.approx(2 / 3)
    record = read_record(tmp_path / "grpo")
    assert record["method"] == "grpo" and record["init_method"] == "crl"
    assert record["conditioning"] == "good" and record["lora"]["r"] == 16  # the CRL adapter's
    question = [{"role": "user", "content": [{"type": "text", "text": "Why?"}]}]
    assert conditioned(question, record)[0]["content"][0]["text"] == "good Why?"


# ---- integration: the rubric judge on loopback, failures, the cache ------------------


def test_bad_grpo_inputs_are_refused_before_training(tiny_model, tmp_path, data, capsys):
    argv = [
        "train",
        "--config",
        "configs/train/grpo.yaml",
        "--data",
        str(data),
        "--model_name_or_path",
        str(tiny_model("llava")),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    # The default judge is an API model: without its key, say how to judge instead.
    assert main([*argv, "--judge_api_key_env", "NO_SUCH_KEY_VARIABLE"]) == 2
    assert "needs an API key in $NO_SUCH_KEY_VARIABLE" in capsys.readouterr().err
    argv += ["--judge_base_url", "http://127.0.0.1:9/v1"]
    # --init_adapter must be a CRL or SFT adapter with its record.
    assert main([*argv, "--init_adapter", str(tmp_path)]) == 2
    assert "holds no macaroon.json" in capsys.readouterr().err
    # Questions of a type the criteria do not know cannot be rewarded.
    criteria = tmp_path / "criteria"
    criteria.mkdir()
    shutil.copy(CRITERIA / "false_premise.yaml", criteria)
    assert main([*argv, "--criteria", str(criteria)]) == 2
    assert "Subject Ambiguity have no rubric in --criteria" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--init_adapter starts METHOD=grpo"):
        MacaroonTrainConfig(method="crl", init_adapter=str(tmp_path))
    with pytest.raises(ValueError, match="--length_penalty"):
        RewardJudgeConfig(length_penalty=-1)


@pytest.fixture(scope="module")
def judged_run(tiny_model, vllm_server, data, tmp_path_factory):
    """Two GRPO steps judged by the tiny model on vLLM, behind a proxy that answers every
    third call with HTTP 400 and garbles every fifth reply."""
    model, server = tiny_model("llava"), vllm_server("llava")
    out = tmp_path_factory.mktemp("grpo-judged") / "out"

    def fault(number: int) -> str | None:
        return "400" if number % 3 == 0 else "garble" if number % 5 == 0 else None

    with fault_proxy(server.base_url, fault) as proxy:
        argv = grpo_argv(model, data, out, 2, "--judge_model", str(model),
                         "--judge_base_url", proxy.base_url, "--judge_max_tokens", "24",
                         "--judge_max_retries", "0")  # fmt: skip
        assert main(argv) == 0
        yield model, data, out, proxy


@pytest.mark.vllm
def test_grpo_trains_with_the_judge_and_failed_calls_give_no_reward(judged_run):
    model, data, out, proxy = judged_run
    record = json.loads((out / "macaroon.json").read_text())
    assert record["method"] == "grpo" and record["steps"] == 2 and record["conditioning"] is None
    counts = record["judge"]
    # 2 steps x 4 answers; every call the proxy saw, and no more, is counted as made.
    assert counts["calls"] == proxy.calls and counts["calls"] + counts["cached"] == 8
    assert counts["failed"] == proxy.failed > 0
    assert counts["unparsed"] >= proxy.garbled > 0
    assert counts["judged"] + counts["unparsed"] + counts["failed"] == 8
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "judge/failed" in h]  # fmt: skip
    assert sum(h["judge/failed"] for h in logged) == counts["failed"]
    # Every judgment is a record: the failures as failed, the rest with the judge's text.
    records = [json.loads(line) for line in (out / "judgments.jsonl").open()]
    assert sum(r["status"] == "failed" for r in records) == proxy.failed


@pytest.mark.vllm
def test_a_judged_pair_is_never_sent_again(judged_run):
    from trainers.reward import JudgeReward

    model, data, out, proxy = judged_run
    records = [json.loads(line) for line in (out / "judgments.jsonl").open()]
    done = [r for r in records if r["status"] == "ok"]
    assert done
    cfg = RewardJudgeConfig(judge_model=str(model), judge_base_url=proxy.base_url,
                            judge_max_tokens=24)  # fmt: skip
    reward = JudgeReward(cfg, out / "judgments.jsonl", max_completion_length=8)
    before = proxy.calls
    try:
        pairs = [(r["question"], r["question_type"], r["image"], r["response"]) for r in done]
        rewards = reward(
            prompts=[None] * len(pairs), completions=[p[3] for p in pairs],
            question=[p[0] for p in pairs], question_type=[p[1] for p in pairs],
            image_path=[p[2] for p in pairs],
        )  # fmt: skip
    finally:
        reward.close()
    assert proxy.calls == before  # all from the record store
    assert reward.counts["cached"] == len({r["key"] for r in done})
    assert all(r is None or 0 <= r <= 1 for r in rewards)


def test_judge_verdicts_score_as_documented():
    from trainers.reward import score

    assert score("True", 4, 8, 0.0) == 1.0
    assert score("Ambiguous", 4, 8, 0.0) == 0.5
    assert score("False", 4, 8, 0.0) == 0.0
    assert score(None, 4, 8, 0.0) is None  # no verdict: no reward, not 0
    assert score("True", 4, 8, 0.2) == pytest.approx(0.9)
    assert score("True", 20, 8, 0.2) == pytest.approx(0.8)  # capped at the full length


def test_prompts_keep_one_row_per_question_with_its_type(data, tmp_path):
    from trainers.prompts import grpo_prompts

    types = {"Subject Ambiguity"}
    rows = grpo_prompts(str(data), types, tmp_path / "images")
    assert len(rows) == 4 * len(QUESTIONS)  # crl/dpo/sft rows: each question once
    assert set(rows["question_type"]) == types
    assert rows[0]["prompt"][0]["content"][1]["text"] in QUESTIONS
    conditioned = grpo_prompts(str(data), types, tmp_path / "images", "good")
    assert conditioned[0]["prompt"][0]["content"][1]["text"].startswith("good ")
    assert PREFERRED not in json.dumps(rows[0]["prompt"]) and REJECTED not in str(rows[0])
    shutil.rmtree(tmp_path / "images")


def test_grpo_says_where_its_rollouts_ran_and_why(tiny_model, data, tmp_path, capsys):
    """On CPU TRL's colocated vLLM engine fails at its first weight sync for these families
    (docs/DESIGN.md §7), and an adapter that saves lm_head whole is no vLLM LoRA either:
    asked for vLLM, the run samples on hf, and its log and record say so and why.
    (A plain LoRA run goes to vLLM as a LoRA each step: tests/test_vllm.py.)"""
    from trl import GRPOConfig, ModelConfig

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, num_generations=4,
        per_device_train_batch_size=4, gradient_accumulation_steps=1, max_completion_length=4,
        save_strategy="no", report_to="none", bf16=False, use_vllm=True, vllm_mode="colocate",
    )  # fmt: skip
    model_args = ModelConfig(model_name_or_path=str(tiny_model("llava")), use_peft=True,
                             lora_modules_to_save=["lm_head"])  # fmt: skip
    cfg = MacaroonTrainConfig(method="grpo", data=str(data))
    train(cfg, model_args, args, judge=lambda completions, **_: [1.0] * len(completions))
    record = json.loads((tmp_path / "out" / "macaroon.json").read_text())
    assert record["rollouts"]["engine"] == "hf" and "weight sync" in record["rollouts"]["why"]
    assert "modules_to_save: lm_head" in record["rollouts"]["why"]
    assert f"GRPO rollouts on hf: {record['rollouts']['why']}" in capsys.readouterr().out
