"""Adapters that change a random tiny model's answers, without training.

A LoRA adapter starts with B = 0 (it changes nothing) and a few CPU steps on a random
model move it little. Here B is drawn from a seeded normal distribution (std 1), so the
adapter deterministically changes the greedy answers. Everything else is what
`macaroon train` saves: PEFT's files with the trainers' own target regex (the language
model's q/k/v only) and the run's macaroon.json.
"""

from pathlib import Path


def random_adapter(base: Path, out: Path, seed: int = 0, method: str = "sft") -> Path:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import ModelConfig

    from trainers.config import MacaroonTrainConfig
    from trainers.model import lora_config
    from trainers.train import run_record, write_record

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    args = ModelConfig(model_name_or_path=str(base), use_peft=True, lora_r=8, lora_alpha=16,
                       lora_dropout=0.0)  # fmt: skip
    config = lora_config(args, None, model.config.model_type)
    torch.manual_seed(seed)
    peft = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator))
    peft.save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    cfg = MacaroonTrainConfig(method=method)
    write_record(Path(out), run_record(cfg, args, rows=0, lora=config, special_tokens=False,
                                       steps=0))  # fmt: skip
    return Path(out)
