"""Every model family: a tiny build behaves like the published checkpoint, and training and
inference see the same tokens.

The expected renderings, special tokens, generation settings and image-token counts are the
published checkpoints' (pipeline/families/*.yaml, with their sources); only sizes
shrink. vLLM's side of the matrix is in test_vllm.py.
"""

import json

import pytest
import torch
from conftest import SAMPLES
from PIL import Image

from pipeline.backends import Request, Sampling, generate_in_order
from pipeline.chat import prompt_text, stop_token_ids
from pipeline.families import family
from pipeline.tiny_model import ARCHS

IMG = {"type": "image"}


def text(value):
    return {"type": "text", "text": value}


def user(*parts):
    return {"role": "user", "content": list(parts)}


def assistant(value):
    return {"role": "assistant", "content": [text(value)]}


# The conversations whose published renderings the family files record (same names).
CONVERSATIONS = {
    "C1": ([user(IMG, text("What is in the box?"))], True),
    "C2": ([user(IMG, text("What is in the box?")), assistant("I cannot tell.")], False),
    "C3": ([{"role": "system", "content": [text("Be brief.")]},
            user(IMG, text("What is in the box?"))], True),
    "C4": ([user(IMG, text("What is in the box?")), assistant("I cannot tell."),
            user(text("Why not?"))], True),
    "C5": ([user(IMG, text("good Which mug is mine?"))], True),
    "C6": ([user(IMG, text("good Which mug is mine?")),
            assistant("Which one do you mean: the red or the blue mug?")], False),
    "C7": ([user(text("Compare"), IMG, text(" these "), IMG)], True),
    "C8": ([{"role": "user", "content": "Hello there"}], True),
}  # fmt: skip
IMAGE = SAMPLES / "images" / "sample_001.jpg"
QUESTION = [user(IMG, text("Which mug is mine?"))]
ANSWER = [assistant("Which one do you mean?")]


def processor_of(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_template_renders_as_the_published_one(tiny_model, arch):
    processor = processor_of(tiny_model(arch))
    published = family(arch)["published_renderings"]
    assert set(published) == set(CONVERSATIONS)
    for name, (conversation, generation_prompt) in CONVERSATIONS.items():
        rendered = processor.apply_chat_template(
            conversation, add_generation_prompt=generation_prompt, tokenize=False
        )
        assert rendered == published[name], name


@pytest.mark.parametrize("arch", ARCHS)
def test_vllm_reads_the_template_as_taking_content_parts(arch):
    """vLLM passes images as content parts only to templates it sees looping over them."""
    from vllm.renderers.hf import _detect_content_format

    from pipeline.families import chat_template

    assert _detect_content_format(chat_template(family(arch)), default="string") == "openai"


@pytest.mark.parametrize("arch", ARCHS)
def test_special_tokens_behave_as_published(tiny_model, arch):
    from transformers import GenerationConfig

    spec, folder = family(arch), tiny_model(arch)
    tokenizer = processor_of(folder).tokenizer
    expected = spec["tokenizer"].get("loads_as", spec["tokenizer"]["class"])
    assert type(tokenizer).__name__ == expected
    ids = tokenizer("hello")["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) is spec["tokenizer"]["adds_bos"]
    assert ids[-1] != tokenizer.eos_token_id  # no published tokenizer adds EOS
    for role, token in spec["tokenizer"]["roles"].items():
        assert getattr(tokenizer, f"{role}_token") == token, role
    for token in spec["tokenizer"].get("special", []) + spec["tokenizer"].get("added", []):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    published_stops = spec["generation_config"]["eos_token_id"]
    published_stops = published_stops if isinstance(published_stops, list) else [published_stops]
    generation = GenerationConfig.from_pretrained(folder)
    stops = stop_token_ids(tokenizer, generation)
    assert set(tokenizer.convert_ids_to_tokens(stops)) == set(published_stops) | {
        tokenizer.eos_token
    }
    for key in ("top_k", "top_p", "temperature", "repetition_penalty", "do_sample"):
        if key in spec["generation_config"]:
            assert getattr(generation, key) == spec["generation_config"][key], key


@pytest.mark.parametrize("arch", ARCHS)
def test_published_image_settings(tiny_model, arch):
    """The published processor settings, image tokens per image included, at full size."""
    from transformers import AutoModelForImageTextToText

    folder = tiny_model(arch, images="published")
    processor = processor_of(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    image_token = getattr(model.config, "image_token_id", None)
    image_token = getattr(model.config, "image_token_index", image_token)
    prompt = prompt_text(processor, QUESTION)
    for size, expected in family(arch)["image_tokens"].items():
        width, height = map(int, size.split("x"))
        image = Image.new("RGB", (width, height), (120, 30, 200))
        inputs = processor(text=[prompt], images=[[image]], return_tensors="pt",
                           add_special_tokens=False)  # fmt: skip
        assert int((inputs["input_ids"] == image_token).sum()) == expected, size
    with torch.no_grad():  # the model takes what the processor gives, at the published size
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_batches_give_what_one_at_a_time_gives(tiny_model, arch):
    from pipeline.backends.hf import HFBackend

    backend = HFBackend(str(tiny_model(arch)), batch_size=4)
    questions = ["What colour is the mug?", "How many dogs are in the park today?", "Why?"]
    requests = [Request([user(IMG, text(q))], (IMAGE,), Sampling(max_tokens=6)) for q in questions]
    batched = generate_in_order(backend, requests)
    single = [generate_in_order(backend, [r])[0] for r in requests]
    assert [(c.text, c.finish_reason) for c in batched] == [
        (c.text, c.finish_reason) for c in single
    ]
    assert all(c.text and c.finish_reason == "length" for c in batched)


@pytest.mark.parametrize("arch", ["qwen2-vl", "qwen2.5-vl", "gemma3"])
def test_explicit_sampling_overrides_the_published_defaults(tiny_model, arch):
    """Qwen publishes top_k 1 and Gemma 3 top_k 64: a request's temperature 1 must sample."""
    from pipeline.backends.hf import HFBackend

    backend = HFBackend(str(tiny_model(arch)))
    requests = [Request(QUESTION, (IMAGE,), Sampling(max_tokens=8, temperature=1.0, seed=s))
                for s in range(6)]  # fmt: skip
    assert len({c.text for c in generate_in_order(backend, requests)}) > 1
    greedy = [Request(QUESTION, (IMAGE,), Sampling(max_tokens=8, seed=s)) for s in range(2)]
    assert len({c.text for c in generate_in_order(backend, greedy)}) == 1


def _unpadded(ids, keep):
    return [int(i) for i, k in zip(ids, keep, strict=True) if k]


@pytest.mark.parametrize("arch", ARCHS)
def test_training_sees_the_prompt_inference_sends(tiny_model, arch):
    """CRL, SFT and DPO collators: prompt tokens equal the hf backend's, token for token;
    labels are the response and its stop token, nothing else."""
    from pipeline.backends.hf import HFBackend
    from trainers.collator import PreferenceCollator, PromptCompletionCollator, with_reward_token

    backend = HFBackend(str(tiny_model(arch)))
    tokenizer, image = backend.processor.tokenizer, Image.open(IMAGE).convert("RGB")
    inference = backend.encode([Request(with_reward_token(QUESTION, "good"), (IMAGE,))])
    sent = _unpadded(inference["input_ids"][0], inference["attention_mask"][0])
    crl = PromptCompletionCollator(processor=backend.processor, stop_ids=backend.stop_ids)
    row = {"images": [image], "prompt": QUESTION, "completion": ANSWER, "reward": "good"}
    batch = crl([row])
    labels = batch["labels"][0]
    prompt = _unpadded(batch["input_ids"][0], (labels == -100) & (batch["attention_mask"][0] == 1))
    assert prompt == sent
    answer = [int(t) for t in labels if t != -100]
    stop_at = next(n for n, t in enumerate(answer) if t in backend.stop_ids)
    assert tokenizer.decode(answer[:stop_at]).strip() == "Which one do you mean?"
    # After the stop token at most the template's own line break or space is labelled.
    assert tokenizer.decode(answer[stop_at + 1 :]).strip() == ""

    dpo = PreferenceCollator(processor=backend.processor, stop_ids=backend.stop_ids)
    batch = dpo([{"images": [image], "prompt": QUESTION, "chosen": ANSWER,
                  "rejected": [assistant("The red one.")]}])  # fmt: skip
    keep = (batch["completion_mask"][0] == 0) & (batch["attention_mask"][0] == 1)
    plain = backend.encode([Request(QUESTION, (IMAGE,))])
    assert _unpadded(batch["input_ids"][0], keep) == _unpadded(
        plain["input_ids"][0], plain["attention_mask"][0]
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_adapts_the_language_model_only(tiny_model, arch):
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText
    from trl import ModelConfig

    from trainers.model import lora_config

    model = AutoModelForImageTextToText.from_pretrained(tiny_model(arch))
    args = ModelConfig(use_peft=True, lora_r=4, lora_alpha=4)
    peft = get_peft_model(model, lora_config(args, model_type=model.config.model_type))
    adapted = {n.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
               for n, _ in peft.named_parameters() if ".lora_A." in n}  # fmt: skip
    prefix = family(arch)["language_model"].replace("\\", "")
    layers = model.config.get_text_config().num_hidden_layers
    assert len(adapted) == 3 * layers
    assert all(n.startswith(prefix) and n.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj")
               for n in adapted)  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_one_crl_and_one_dpo_step_then_the_adapter_answers(tiny_model, tmp_path, arch):
    from train_data import save_templated

    from commands.cli import main
    from trainers.inference import TrainedModelBackend

    data = save_templated(tmp_path / "data", image_names=range(1, 3))
    for method in ("crl", "dpo"):
        out = tmp_path / method
        assert main(["train", "--config", f"configs/train/{method}.yaml", "--data", str(data),
                     "--model_name_or_path", str(tiny_model(arch)), "--output_dir", str(out),
                     "--max_steps", "1", "--per_device_train_batch_size", "2",
                     "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false",
                     "--save_strategy", "no", "--logging_steps", "1"]) == 0  # fmt: skip
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        assert torch.isfinite(torch.tensor(history[0]["loss"]))
    backend = TrainedModelBackend(str(tmp_path / "crl"))
    (answer,) = generate_in_order(backend, [Request(QUESTION, (IMAGE,), Sampling(max_tokens=4))])
    assert answer.ok and answer.text and backend.record["conditioning"] == "good"


def test_image_tokens_are_capped_alike_in_every_stage(tiny_model, tmp_path):
    """A 4000x3000 photo: 15301 tokens as Qwen2-VL publishes it, 1230 under the default cap
    of 1280, in inference, training and the served model alike."""
    from trl import ModelConfig

    from pipeline.backends.hf import HFBackend
    from pipeline.serve import VLLMServer
    from trainers.collator import PromptCompletionCollator
    from trainers.model import load_model_and_processor

    folder = str(tiny_model("qwen2-vl", images="published"))
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (90, 140, 30)).save(photo)
    request = Request(QUESTION, (photo,))

    published = HFBackend(folder, max_image_tokens=0)
    pad = published.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def image_tokens(ids):
        return int((ids == pad).sum())

    assert image_tokens(published.encode([request])["input_ids"]) == 15301
    capped = HFBackend(folder, max_image_tokens=1280)
    assert image_tokens(capped.encode([request])["input_ids"]) == 1230
    _, processor = load_model_and_processor(ModelConfig(model_name_or_path=folder),
                                            max_image_tokens=1280)  # fmt: skip
    collator = PromptCompletionCollator(processor=processor, stop_ids=capped.stop_ids)
    batch = collator([{"images": [Image.open(photo)], "prompt": QUESTION, "completion": ANSWER}])
    assert image_tokens(batch["input_ids"]) == 1230
    served = VLLMServer(folder, max_image_tokens=1280).command(on_gpu=False)
    assert served[served.index("--mm-processor-kwargs") + 1] == '{"max_pixels": 1003520}'
    # A processor stricter than the cap is left alone (the reduced build: 4 tokens).
    assert "--mm-processor-kwargs" not in VLLMServer(str(tiny_model("qwen2-vl"))).command(False)
