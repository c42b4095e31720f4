"""Learning tests on the `small` local model, CPU only: training must do what it claims.

The data is templated: whatever the image or question, the preferred answer is one
sentence and the rejected answer another, so what the model learns is visible in its
greedy output on images and questions it never saw.
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

from pipeline.backends import Request, Sampling
from pipeline.cli import main

pytestmark = pytest.mark.slow
QUESTIONS = ["What colour is the mug?", "How big is the dog?", "Is the lamp on?"]


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    extra = random_images(root / "random", 40)  # visual variety: learn the text, not the image
    data = save_templated(root / "data", image_names=range(1, 10), questions=QUESTIONS,
                          extra_images=extra)  # fmt: skip
    return tiny_model("llava", "small"), data, root


def train(method, setup, steps, learning_rate, *extra):
    model, data, root = setup
    out = root / method
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
            Sampling(max_tokens=16),
        )
        for image in images(range(10, 13))
        for q in HELD_OUT_QUESTIONS
    ]


def test_crl_reward_token_steers_the_output(setup):
    from trainers.inference import TrainedModelBackend

    backend = TrainedModelBackend(str(train("crl", setup, 300, 2e-3)))
    requests = held_out_requests()
    # The record says METHOD=crl, so the backend adds `good` by itself.
    good = [c.text for c in sorted(backend.generate(requests), key=lambda c: c.index)]
    backend.record = {**backend.record, "conditioning": "bad"}
    bad = [c.text for c in sorted(backend.generate(requests), key=lambda c: c.index)]
    assert good == [PREFERRED] * len(requests)
    assert bad == [REJECTED] * len(requests)


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
