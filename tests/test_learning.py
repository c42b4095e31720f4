"""Learning tests on the `small` local models, CPU only: training must do what it claims.

The data is templated: whatever the image or question, the preferred answer is one
sentence and the rejected answer another, so what the model learns is visible in its
greedy output on images and questions it never saw.

CRL runs on two families: LLaVA-NeXT, whose Llama tokenizer adds BOS, with the template
it was published with until 2025, which ends answers with the text "<\\s> " instead of EOS
(a model trained on that text never learns to stop); and Qwen2-VL (ChatML).
"""

import json
import shutil

import pytest
from train_data import (
    HELD_OUT_QUESTIONS,
    PREFERRED,
    REJECTED,
    images,
    random_images,
    save_templated,
)

from commands.cli import main
from pipeline.backends import Request, Sampling

pytestmark = pytest.mark.slow
QUESTIONS = ["What colour is the mug?", "How big is the dog?", "Is the lamp on?"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    extra = random_images(root / "random", 40)  # visual variety: learn the text, not the image
    return save_templated(root / "data", image_names=range(1, 10), questions=QUESTIONS,
                          extra_images=extra)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tiny_model, data):
    return tiny_model("llava", "small"), data, data.parent


def with_old_llava_next_template(folder, target):
    """A copy of a LLaVA-NeXT build carrying the template published before 2025."""
    shutil.copytree(folder, target)
    template = target / "chat_template.jinja"
    text = template.read_text()
    assert "eos_token + ' '" in text
    template.write_text(text.replace("eos_token + ' '", "'<\\\\s> '"))
    return target


def train(method, setup, steps, learning_rate, *extra):
    model, data, root = setup
    out = root / f"{method}-{model.name}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", "--config", f"configs/train/{method}.yaml", "--data", str(data),
            "--model_name_or_path", str(model), "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
            "--gradient_checkpointing", "false", "--warmup_steps", "0", "--save_strategy", "no",
            "--lr_scheduler_type", "constant", "--learning_rate", str(learning_rate),
            "--logging_steps", "10", *extra]  # fmt: skip
    assert main(argv) == 0
    return out


def held_out_requests():
    return [
        Request(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            (image,),
            Sampling(max_tokens=24),
        )
        for image in images(range(10, 13))
        for q in HELD_OUT_QUESTIONS
    ]


@pytest.mark.parametrize("arch", ["llava-next", "qwen2-vl"])
def test_crl_reward_token_steers_the_output_and_the_model_stops(tiny_model, data, arch):
    from pipeline.backends import generate_in_order
    from trainers.inference import TrainedModelBackend

    model = tiny_model(arch, "small")
    if arch == "llava-next":
        model = with_old_llava_next_template(model, data.parent / "llava-next-2024")
        from transformers import AutoProcessor

        turn = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]  # fmt: skip
        rendered = AutoProcessor.from_pretrained(model).apply_chat_template(turn, tokenize=False)
        assert rendered.endswith("Yes.<\\s> ")  # the text, not the EOS token
    backend = TrainedModelBackend(str(train("crl", (model, data, data.parent), 300, 2e-3)))
    requests = held_out_requests()
    # The record says METHOD=crl, so the backend adds `good` by itself.
    good = generate_in_order(backend, requests)
    backend.record = {**backend.record, "conditioning": "bad"}
    bad = generate_in_order(backend, requests)
    assert [c.text for c in good] == [PREFERRED] * len(requests)
    assert [c.text for c in bad] == [REJECTED] * len(requests)
    # Under both tokens the answer ends on a stop token, well before max_tokens.
    assert {c.finish_reason for c in good + bad} == {"stop"}


def test_dpo_raises_the_reward_margin_and_accuracy(setup):
    out = train("dpo", setup, 60, 1e-3)
    state = json.loads((out / "training_args.json").read_text())
    assert state["beta"] == 0.1 and state["loss_type"] == ["sigmoid", "sft"]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "rewards/margins" in h]
    first, last = logged[0], logged[-1]
    assert last["rewards/margins"] > first["rewards/margins"] + 1.0
    assert last["rewards/accuracies"] == 1.0 and first["rewards/accuracies"] < 1.0


def test_sft_loss_falls(setup):
    out = train("sft", setup, 60, 2e-3)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.75 * losses[0]  # LoRA on q/k/v only: the random head keeps logits soft
