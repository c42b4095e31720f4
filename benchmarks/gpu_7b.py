"""GPU: the 7B configs of llava-next and qwen2.5-vl (random weights, bf16).

1. hf generation tokens/s at batch 1 vs 32 (greedy, 64 new tokens, one 640x480 image each).
2. One CRL step (prompt with the reward token, loss on the response and its stop token
   only) and one DPO step (sigmoid + NLL, beta 0.1, reference = the adapter switched off):
   samples/s and peak memory at batch 1 and at the largest batch that fits (doubling).

The step is written out here (forward, backward, AdamW on the LoRA weights: what TRL's
SFTTrainer and DPOTrainer do per step) because the GPU machine has no TRL; the prompt and
completion text come from pipeline/chat.py, as the training collators render them, and
LoRA lands where trainers/model.py puts it (q/k/v of the language model).

Not part of `make bench` (it needs a GPU with ~80 GB). Run on a CUDA machine, once per
family, with a local build of the published image settings:
    macaroon tiny-model --arch llava-next --images published --out /tmp/llava-next
    python benchmarks/gpu_7b.py /tmp/llava-next llava-next
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.chat import completion_text, prompt_text, stop_token_ids  # noqa: E402

SIZES = yaml.safe_load((Path(__file__).with_name("gpu_7b_sizes.yaml")).read_text())
ANSWER = ("The image does not show a red car; the car in the picture is blue. Could you say "
          "which car you mean?")  # fmt: skip


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_7b(folder: str, family: str, device: str, smoke: bool = False):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder)
    for part, values in ({} if smoke else SIZES[family]).items():
        sub = getattr(config, part)
        sub.update(values)
        if getattr(sub, "layer_types", None):  # one type per layer: as many as the layers now
            sub.layer_types = [sub.layer_types[0]] * sub.num_hidden_layers
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def conversation(reward: str | None):
    text = f"{reward} What colour is the red car?" if reward else "What colour is the red car?"
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def image() -> Image.Image:
    return Image.new("RGB", (640, 480), (90, 120, 200))


def generation(model, processor, batch: int, new_tokens: int, device: str) -> dict:
    text = prompt_text(processor, conversation("good"))
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=[text] * batch, images=[image()] * batch, return_tensors="pt",
                       padding=True).to(device)  # fmt: skip
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    model.generate(**inputs, max_new_tokens=4, do_sample=False)  # warm-up
    sync()
    start = time.perf_counter()
    out = model.generate(**inputs, **kwargs)
    sync()
    seconds = time.perf_counter() - start
    made = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
    return {"batch": batch, "prompt_tokens": inputs["input_ids"].shape[1],
            "tokens_per_s": round(made / seconds, 1), "seconds": round(seconds, 2)}  # fmt: skip


def rows(processor, batch: int, answer: str, reward: str, device: str):
    """input_ids, attention_mask, labels, image inputs: the prompt masked out of the loss."""
    stops = stop_token_ids(processor.tokenizer)
    prompt, completion = completion_text(
        processor, conversation(reward),
        [{"role": "assistant", "content": [{"type": "text", "text": answer}]}], stops,
    )  # fmt: skip
    processor.tokenizer.padding_side = "right"
    full = processor(text=[prompt + completion] * batch, images=[image()] * batch,
                     return_tensors="pt", padding=True)  # fmt: skip
    only = processor(text=[prompt], images=[image()], return_tensors="pt")
    labels = full["input_ids"].clone()
    labels[:, : only["input_ids"].shape[1]] = -100
    labels[full["attention_mask"] == 0] = -100
    return {**full.to(device), "labels": labels.to(device)}


def sequence_logp(model, batch) -> torch.Tensor:
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    target = labels[:, 1:]
    mask = target != -100
    logp = torch.log_softmax(logits.float(), -1).gather(-1, target.clamp(min=0)[..., None])
    return (logp[..., 0] * mask).sum(-1), mask.sum(-1)


def step(model, optimizer, processor, method: str, batch: int, device: str) -> None:
    if method == "crl":
        loss = model(**rows(processor, batch, ANSWER, "good", device)).loss
    else:
        chosen = rows(processor, batch, ANSWER, None, device)
        rejected = rows(processor, batch, "The red car is red.", None, device)
        both = {k: torch.cat([chosen[k], _pad(rejected[k], chosen[k])]) for k in chosen}
        logp, count = sequence_logp(model, both)
        with torch.no_grad(), model.disable_adapter():
            ref, _ = sequence_logp(model, both)
        margin = 0.1 * ((logp[:batch] - ref[:batch]) - (logp[batch:] - ref[batch:]))
        loss = -torch.nn.functional.logsigmoid(margin).mean() - (logp / count)[:batch].mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _pad(tensor, like):
    """Right-pad `tensor` along dim 1 to `like`'s length (image tensors are left alone)."""
    if tensor.dim() < 2 or tensor.shape[1] == like.shape[1] or tensor.dtype.is_floating_point:
        return tensor
    fill = -100 if tensor is not None and tensor.min() < 0 else 0
    width = like.shape[1] - tensor.shape[1]
    if width < 0:
        raise ValueError("the rejected sequence is longer than the chosen one")
    return torch.nn.functional.pad(tensor, (0, width), value=fill)


def training(model, processor, method: str, device: str, largest: int) -> list[dict]:
    results, batch = [], 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    while batch <= largest:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            step(model, optimizer, processor, method, batch, device)  # warm-up
            sync()
            start = time.perf_counter()
            for _ in range(2):
                step(model, optimizer, processor, method, batch, device)
            sync()
            seconds = (time.perf_counter() - start) / 2
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            results.append({"method": method, "batch": batch, "oom": True})
            break
        results.append({"method": method, "batch": batch,
                        "samples_per_s": round(batch / seconds, 2),
                        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
                        if torch.cuda.is_available() else None})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
        batch *= 2
    return results


def main() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor

    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("family", choices=sorted(SIZES))
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--largest", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="keep the local sizes (CPU check)")
    args = parser.parse_args()
    processor = AutoProcessor.from_pretrained(args.folder)
    model = model_7b(args.folder, args.family, args.device, args.smoke)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"family": args.family, "params_b": round(params, 2), "device": device,
              "generation": []}  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "generation"}), flush=True)
    with torch.no_grad():
        for batch in (1, 32):
            report["generation"].append(generation(model, processor, batch, args.new_tokens,
                                                   args.device))  # fmt: skip
            print(json.dumps(report["generation"][-1]), flush=True)
    targets = r".*model\.language_model\..*\.(q_proj|k_proj|v_proj)"  # trainers/model.py's
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.1, target_modules=targets)
    model = get_peft_model(model, lora)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model.train()
    report["crl"] = training(model, processor, "crl", args.device, args.largest)
    report["dpo"] = training(model, processor, "dpo", args.device, args.largest)
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
