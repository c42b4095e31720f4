"""`macaroon train`: every METHOD on TRL, exact label masking, records, bad input first."""

import json

import pytest
import torch
from safetensors import safe_open
from train_data import PREFERRED, REJECTED, save_templated, templated_rows

from commands.cli import main
from pipeline.backends import Request
from pipeline.formats import to_dataset_dict
from trainers.collator import PromptCompletionCollator, with_reward_token
from trainers.data import mix
from trainers.inference import conditioned

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
        "1", "--gradient_checkpointing", "false", "--warmup_steps", "0", "--save_strategy", "no",
        "--logging_steps", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return save_templated(tmp_path_factory.mktemp("data") / "dataset", image_names=range(1, 4))


def train(method, model, data, out, *extra):
    argv = ["train", "--config", f"configs/train/{method}.yaml", "--data", str(data),
            "--model_name_or_path", str(model), "--output_dir", str(out),
            *FAST, *extra]  # fmt: skip
    return main(argv)


@pytest.mark.parametrize("arch", ["llava", "llava-next", "qwen2-vl"])
def test_crl_collator_masks_all_but_the_response(tiny_model, arch, sample_image):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model(arch))
    rows = templated_rows(image_names=range(1, 2))["crl"][:2]  # the good and the bad example
    examples = [{**row, "images": [sample_image]} for row in rows]
    batch = PromptCompletionCollator(processor=processor)(examples)
    tokenizer = processor.tokenizer
    for row, (ids, labels) in enumerate(zip(batch["input_ids"], batch["labels"], strict=True)):
        labelled = labels != -100
        assert torch.equal(labels[labelled], ids[labelled])
        response = tokenizer.decode(ids[labelled])
        expected = PREFERRED if row == 0 else REJECTED
        assert response.strip().startswith(expected) and response.strip().endswith(
            tokenizer.eos_token
        )
        prompt = tokenizer.decode(ids[~labelled & (batch["attention_mask"][row] == 1)])
        assert (
            f"{'good' if row == 0 else 'bad'} {rows[row]['prompt'][0]['content'][1]['text']}"
            in prompt
        )
        image_tokens = ids == processor.image_token_id
        assert image_tokens.any() and not labelled[image_tokens].any()
    extra = {"llava-next": "image_sizes", "qwen2-vl": "image_grid_thw"}.get(arch)
    assert extra is None or extra in batch


@pytest.mark.parametrize("method", ["crl", "sft", "dpo", "multiturn"])
def test_each_method_trains_and_records_itself(tiny_model, data, tmp_path, method):
    assert train(method, tiny_model("llava"), data, tmp_path / method) == 0
    out = tmp_path / method
    record = json.loads((out / "macaroon.json").read_text())
    assert record["method"] == method and record["steps"] == 2
    assert record["conditioning"] == ("good" if method == "crl" else None)
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    # LoRA on the language model's q/k/v only, never the vision tower.
    assert keys and all("language_model" in k for k in keys)
    assert {k.split(".")[-3] for k in keys} == {"q_proj", "k_proj", "v_proj"}
    assert not list(out.glob("*.bin"))


def test_dpo_original_trains_exactly_the_last_layers(tiny_model, data, tmp_path):
    from transformers import AutoModelForImageTextToText

    model, out = tiny_model("llava"), tmp_path / "dpo_original"
    # The tiny language model has 2 layers: the last 1 trains. Gradient checkpointing stays
    # on, as in real runs, where frozen layers feed the trained ones.
    assert train("dpo_original", model, data, out, "--train_last_layers", "1",
                 "--gradient_checkpointing", "true") == 0  # fmt: skip
    before = AutoModelForImageTextToText.from_pretrained(model).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("model.language_model.layers.1.")}
    record = json.loads((out / "macaroon.json").read_text())
    assert (record["method"], record["train_last_layers"], record["lora"]) == ("dpo", 1, None)
    assert record["steps"] == 2 and not (out / "adapter_config.json").exists()


@pytest.mark.parametrize(
    ("arch", "layers"),
    [("llava", "model.language_model.layers"), ("idefics3", "model.text_model.layers"),
     ("qwen2-vl", "model.language_model.layers"), ("gemma3", "model.language_model.layers")],
)  # fmt: skip
def test_train_last_layers_finds_each_familys_decoder_layers(tiny_model, arch, layers):
    from transformers import AutoModelForImageTextToText

    from trainers.model import train_only_last_layers

    model = AutoModelForImageTextToText.from_pretrained(tiny_model(arch))
    named = train_only_last_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last = {n for n, _ in model.named_parameters() if n.startswith(f"{layers}.1.")}
    assert trainable == set(named) == last and last


def test_sft_after_multiturn_continues_the_multiturn_adapter(tiny_model, data, tmp_path, capsys):
    model = tiny_model("llava")
    assert train("multiturn", model, data, tmp_path / "mt") == 0
    # Learning rate 0: a continued adapter comes out exactly as it went in.
    assert train("sft_after_multiturn", model, data, tmp_path / "sft2", "--learning_rate", "0",
                 "--multiturn_adapter", str(tmp_path / "mt")) == 0  # fmt: skip
    record = json.loads((tmp_path / "sft2" / "macaroon.json").read_text())
    assert record["method"] == "sft_after_multiturn"
    with (
        safe_open(tmp_path / "mt" / "adapter_model.safetensors", "pt") as a,
        safe_open(tmp_path / "sft2" / "adapter_model.safetensors", "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        # A fresh adapter would start with lora_B at zero and a new random lora_A.
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
        assert any(a.get_tensor(k).abs().sum() > 0 for k in a.keys() if "lora_B" in k)


def test_resume_from_checkpoint(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "crl"
    args = ["--save_strategy", "steps", "--save_steps", "2"]
    assert train("crl", tiny_model("llava"), data, out, *args) == 0
    assert (out / "checkpoint-2").is_dir()
    # Its arguments are JSON, not a pickle; resuming must not need the pickle.
    assert not (out / "checkpoint-2" / "training_args.bin").exists()
    capsys.readouterr()
    assert train("crl", tiny_model("llava"), data, out, *args, "--max_steps", "4",
                 "--resume_from_checkpoint", str(out / "checkpoint-2")) == 0  # fmt: skip
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert json.loads((out / "checkpoint-4" / "macaroon.json").read_text())["steps"] == 4
    logged = [line for line in capsys.readouterr().out.splitlines() if "'loss'" in line]
    assert len(logged) == 2  # steps 3 and 4 only: it went on from step 2


def test_every_checkpoint_carries_the_record_and_evaluates_conditioned(tiny_model, data,
                                                                       tmp_path):  # fmt: skip
    from pipeline.backends import Sampling
    from trainers.inference import TrainedModelBackend

    out = tmp_path / "crl"
    assert train("crl", tiny_model("llava"), data, out, "--max_steps", "4",
                 "--save_strategy", "steps", "--save_steps", "2") == 0  # fmt: skip
    final = json.loads((out / "macaroon.json").read_text())
    per_run = {k: v for k, v in final.items() if k not in ("steps", "train_loss", "seconds")}
    for step in (2, 4):
        checkpoint = out / f"checkpoint-{step}"
        record = json.loads((checkpoint / "macaroon.json").read_text())
        assert (record["method"], record["conditioning"], record["steps"]) == ("crl", "good", step)
        assert {k: record[k] for k in per_run} == per_run  # the same run, only the step differs
        assert json.loads((checkpoint / "training_args.json").read_text())["max_steps"] == 4
        assert not list(checkpoint.glob("*.bin"))

    # Evaluating a checkpoint puts `good` in front of the question without being told.
    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    image, sampling = (sample_image_path(),), Sampling(max_tokens=6)
    by_itself = TrainedModelBackend(str(out / "checkpoint-2"))
    untouched = TrainedModelBackend(str(out / "checkpoint-2"), condition=False)
    [auto] = by_itself.generate([Request(question, image, sampling)])
    [by_hand] = untouched.generate([Request(with_reward_token(question, "good"), image, sampling)])
    [bare] = untouched.generate([Request(question, image, sampling)])
    assert by_itself.method == "crl"
    assert auto.prompt_tokens == by_hand.prompt_tokens > bare.prompt_tokens
    assert auto.text == by_hand.text


def test_merged_weights_generate_like_the_adapter(tiny_model, data, tmp_path, sample_image):
    from pipeline.backends import Request, Sampling
    from trainers.inference import TrainedModelBackend

    out = tmp_path / "crl"
    assert train("crl", tiny_model("llava"), data, out, "--merge", "true",
                 "--learning_rate", "0.01") == 0  # fmt: skip
    assert (out / "merged" / "model.safetensors").is_file()
    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    request = Request(question, (sample_image_path(),), Sampling(max_tokens=6))
    adapter = TrainedModelBackend(str(out))
    merged = TrainedModelBackend(str(out / "merged"))
    assert adapter.method == merged.method == "crl"
    assert [c.text for c in adapter.generate([request])] == [
        c.text for c in merged.generate([request])
    ]


def sample_image_path():
    from conftest import SAMPLES

    return SAMPLES / "images" / "sample_001.jpg"


def test_new_special_reward_tokens_train_their_rows(tiny_model, data, tmp_path):
    from trainers.inference import TrainedModelBackend

    out = tmp_path / "crl"
    assert train("crl", tiny_model("llava"), data, out, "--reward_special_tokens", "true") == 0
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        assert any("token_adapter" in k or "trainable_tokens" in k for k in f.keys())
    backend = TrainedModelBackend(str(out))
    assert backend.record["conditioning"] == "<|good|>"
    tokenizer = backend.processor.tokenizer
    special = tokenizer.convert_tokens_to_ids(["<|good|>", "<|bad|>"])
    assert tokenizer.convert_ids_to_tokens(special) == ["<|good|>", "<|bad|>"]
    # The user's own words stay words: only the inserted token is special.
    words = "goodbye, a bad day and a good one"
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    assert not set(ids) & set(special)
    assert tokenizer.decode(ids, skip_special_tokens=True) == words
    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": words}]}]
    request = Request(conditioned(question, backend.record), (sample_image_path(),))
    sent = backend.encode([request])["input_ids"][0].tolist()
    assert sent.count(special[0]) == 1 and special[1] not in sent
    assert words in tokenizer.decode(sent, skip_special_tokens=True)


def test_general_data_mixing_keeps_all_general_and_samples_the_rest():
    rows = templated_rows(image_names=range(1, 3))
    preference = to_dataset_dict({"sft": rows["sft"]})["sft"]  # 12 rows
    general = to_dataset_dict({"sft": rows["sft"][:5]})["sft"]
    mixed = mix(preference, general, ratio=0.5, seed=3)
    assert len(mixed) == 5 + 6
    again = mix(preference, general, ratio=0.5, seed=3)
    assert mixed["messages"] == again["messages"]  # seeded
    assert mix(preference, None, 1.0, 0).num_rows == 12


def test_original_vlfeedback_file_as_general_data(tiny_model, data, tmp_path):
    from conftest import SAMPLES

    assert train("dpo", tiny_model("llava"), data, tmp_path / "dpo",
                 "--general", str(SAMPLES / "VLfeedback_dataset.json")) == 0  # fmt: skip
    record = json.loads((tmp_path / "dpo" / "macaroon.json").read_text())
    assert record["rows"] == 18 + 8  # 3 images x 6 questions + the 8 general records


@pytest.mark.parametrize("data_form", ["DIR", "DIR/dataset"])
def test_data_and_general_take_the_folder_import_or_imagine_wrote(tiny_model, data, tmp_path,
                                                                  data_form):  # fmt: skip
    from conftest import SAMPLES

    imported = tmp_path / "imported"
    assert main(["import", str(SAMPLES / "VLfeedback_dataset.json"), "--out", str(imported)]) == 0
    assert (imported / "dataset" / "dataset_dict.json").is_file()
    imagined = data.parent  # the layout of `make imagine OUT=DIR`: DIR/dataset
    # One run passes DIR for --data and DIR/dataset for --general, the other the reverse.
    preference = imported if data_form == "DIR" else imported / "dataset"
    general = imagined / "dataset" if data_form == "DIR" else imagined
    out = tmp_path / "crl"
    assert train("crl", tiny_model("llava"), preference, out, "--general", str(general)) == 0
    record = json.loads((out / "macaroon.json").read_text())
    assert record["rows"] == 8 * 2 + 3 * 6 * 2  # the 8 imported pairs + the templated rows


def test_bad_inputs_fail_before_training(tiny_model, tmp_path, capsys):
    model = tiny_model("llava")
    rows = templated_rows(image_names=range(1, 2))
    no_reward = [{k: v for k, v in r.items() if k != "reward"} for r in rows["crl"]]
    to_dataset_dict({"crl": no_reward}).save_to_disk(str(tmp_path / "no_reward"))
    assert train("crl", model, tmp_path / "no_reward", tmp_path / "o1") == 2
    assert "'crl' is missing column(s) reward" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()  # nothing started

    assert train("dpo", model, tmp_path / "no_reward", tmp_path / "o2") == 2
    assert "has no 'dpo' data" in capsys.readouterr().err

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not an image")
    bad_rows = templated_rows(image_names=range(1, 2))["crl"]
    bad_rows[3] = {**bad_rows[3], "images": [str(broken)]}
    to_dataset_dict({"crl": bad_rows}).save_to_disk(str(tmp_path / "broken_data"))
    assert train("crl", model, tmp_path / "broken_data", tmp_path / "o3") == 2
    assert "1 image(s) fail to load" in capsys.readouterr().err

    assert main(["train", "--method", "ppo"]) == 2
    assert "METHOD 'ppo': unknown" in capsys.readouterr().err

    assert train("sft_after_multiturn", model, tmp_path / "no_reward", tmp_path / "o4",
                 "--multiturn_adapter", str(tmp_path / "nope")) == 2  # fmt: skip
    assert "--multiturn_adapter" in (err := capsys.readouterr().err)  # named as missing
    assert "adapter folder not found" in err and "`macaroon train`" in err

    # More layers than the model has, or LoRA on top: refused before the model loads.
    no_dpo = tmp_path / "no_reward"
    assert train("dpo_original", model, no_dpo, tmp_path / "o6", "--train_last_layers", "3") == 2
    err = capsys.readouterr().err
    assert "--train_last_layers 3: " in err and "has 2 language-model layers" in err
    assert train("dpo_original", model, no_dpo, tmp_path / "o7", "--use_peft", "true") == 2
    assert "add --use_peft false" in capsys.readouterr().err

    assert train("crl", model, tmp_path / "missing", tmp_path / "o5") == 2
    err = capsys.readouterr().err
    assert "missing: not a saved DatasetDict" in err and "(DIR or DIR/dataset)" in err
