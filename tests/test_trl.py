"""The tiny models train under TRL's real SFT and DPO trainers; `small` learns a template."""

import pytest
import torch

from datasets import Dataset
from pipeline.tiny_model import ARCHS


def user(question):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def assistant(answer):
    return [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def load(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder)
    return model, AutoProcessor.from_pretrained(folder)


def common(tmp_path, steps, **extra):
    return dict(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        max_length=None,
        seed=0,
        **extra,
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_one_sft_step(tiny_model, sample_image, tmp_path, arch):
    from trl import SFTConfig, SFTTrainer

    model, processor = load(tiny_model(arch))
    data = Dataset.from_list(
        [{"images": [sample_image], "messages": user("Which mug?") + assistant("Which one?")}] * 2
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**common(tmp_path, 1)),
        train_dataset=data,
        processing_class=processor,
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any("language_model" in n for n in moved)
    assert any("vision" in n or "visual" in n for n in moved)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_dpo_step_with_nll(tiny_model, sample_image, tmp_path, arch):
    from trl import DPOConfig, DPOTrainer

    model, processor = load(tiny_model(arch))
    row = {
        "images": [sample_image],
        "prompt": user("Which mug?"),
        "chosen": assistant("Which mug do you mean?"),
        "rejected": assistant("The red one."),
    }
    args = DPOConfig(**common(tmp_path, 1, beta=0.1, loss_type=["sigmoid", "sft"]))
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([row] * 2),
        processing_class=processor,
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(logged["loss"]))
    assert logged["logps/chosen"] < 0 and logged["logps/rejected"] < 0


@pytest.mark.slow
def test_small_model_learns_templated_answers(tiny_model, sample_image, tmp_path):
    """`small` must be able to learn templates on CPU: the learning tests depend on it."""
    from trl import SFTConfig, SFTTrainer

    pairs = {
        "Which mug is mine?": "Which mug do you mean: the red one or the blue one?",
        "What is in the box?": "The image does not show what is inside the box.",
    }
    model, processor = load(tiny_model("llava", "small"))
    rows = [
        {"images": [sample_image], "messages": user(q) + assistant(a)} for q, a in pairs.items()
    ]
    args = SFTConfig(**common(tmp_path, 120, learning_rate=2e-3, lr_scheduler_type="constant"))
    SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows * 8),
        processing_class=processor,
    ).train()
    model.eval()
    for question, answer in pairs.items():
        text = processor.apply_chat_template(user(question), add_generation_prompt=True)
        inputs = processor(text=[text], images=[[sample_image]], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        decoded = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert decoded.strip() == answer
