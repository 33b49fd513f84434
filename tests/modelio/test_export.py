"""`mmdialog export` for other tools: the Hugging Face decoder loads in plain transformers, LoRA adapters load with
peft, and the exported chat template renders Hugging Face messages as the processor renders a conversation."""

import json

import jinja2
import pytest
import torch

from mmdialog.config import load_config
from mmdialog.data.conversation import Audio, Conversation
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.model import build_model
from mmdialog.modelio import export, load_export, save_checkpoint
from mmdialog.modules.lora import ADAPTERS, inject_lora, lora_layers, lora_state, merge_lora, save_adapters
from tests.conftest import TINY, random_image
from tests.decoders.test_hf import HF_OVERRIDES

LORA = ["train.strategy=lora", "train.lora.r=4", "train.lora.alpha=8",
        "train.lora.targets=[decoder.lm.model.layers.*.self_attn.q_proj, decoder.lm.model.layers.*.self_attn.v_proj, "
        "fusion.*]"]


def conversation(with_image: bool = True) -> Conversation:
    conv = Conversation().add("system", "Answer briefly.")
    conv.add("user", *([random_image(1)] if with_image else []), "How many red things are there?").add("assistant", "2")
    conv.add("user", "What colour is it?").add("assistant", "red")
    return conv.add("user", "Is there a green triangle?")


def messages(with_image: bool = True) -> list[dict]:
    """conversation() as Hugging Face / OpenAI chat messages."""
    first = [{"type": "image"}] if with_image else []
    return [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": first + [{"type": "text", "text": "How many red things are there?"}]},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            {"role": "user", "content": "Is there a green triangle?"}]


def hf_model(tokenizer, *overrides):
    cfg = load_config(None, HF_OVERRIDES + list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids)).eval()
    with torch.no_grad():  # decisive weights: logits that differ by token
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.2)
    return cfg, model


def mmdialog_logits(model, processor, conv) -> tuple[torch.Tensor, torch.Tensor]:
    ex = processor(conv, add_generation_prompt=True)
    with torch.no_grad():
        return ex.input_ids, model(input_ids=ex.input_ids[None], images=ex.images, return_logits=True).logits[0]


@torch.no_grad()
def test_the_hf_decoder_loads_in_plain_transformers(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, model = hf_model(tokenizer)
    save_checkpoint(tmp_path / "ck", model, tokenizer, cfg, {})
    summary = export(tmp_path / "ck", tmp_path / "ex", max_shard_size="20KB")
    assert summary["decoder"] == "decoder" and "decoder-lora" not in summary["files"]
    d = tmp_path / "ex" / "decoder"
    assert (d / "config.json").is_file() and (d / "model.safetensors.index.json").is_file()  # sharded like the rest

    lm = AutoModelForCausalLM.from_pretrained(d, local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    conv = conversation(with_image=False)
    processor = Processor.for_model(tokenizer, model, max_length=256)
    ids, expected = mmdialog_logits(model, processor, conv)
    hf_ids = hf_tok.apply_chat_template(messages(with_image=False), add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    assert hf_ids == ids.tolist()  # the same token ids from transformers' tokenizer and chat template
    torch.testing.assert_close(lm(input_ids=ids[None]).logits[0], expected, atol=1e-5, rtol=1e-5)
    assert lm.generation_config.eos_token_id == tokenizer.end_id and lm.config.pad_token_id == tokenizer.pad_id
    # the main export still reloads bit for bit
    back = load_export(tmp_path / "ex")
    assert all(torch.equal(v, back.model.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("when", ["final", "mid-run"])
@torch.no_grad()
def test_lora_adapters_load_with_peft(tokenizer, tmp_path, when):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, model = hf_model(tokenizer, *LORA)
    base_weights = {k: v.clone() for k, v in model.decoder.lm.state_dict().items()}
    inject_lora(model, cfg.train.lora)
    torch.manual_seed(1)
    for _, layer in lora_layers(model):  # trained adapters: B is no longer zero
        layer.lora_B["default"].weight.normal_(0.0, 0.3)
    processor = Processor.for_model(tokenizer, model, max_length=256)
    conv = conversation(with_image=False)
    ids, expected = mmdialog_logits(model, processor, conv)  # with the adapters unmerged
    if when == "final":  # what train() writes at the end of a LoRA run
        adapters = lora_state(model)
        merge_lora(model)
        save_checkpoint(tmp_path / "ck", model, tokenizer, cfg, {"adapters": None, "strategy": "lora"},
                        extra=lambda tmp: save_adapters(tmp / ADAPTERS, adapters, cfg.train.lora))
    else:  # a resumable checkpoint, or the final one of a stopped run: adapters in the weights
        save_checkpoint(tmp_path / "ck", model, tokenizer, cfg, {"adapters": "lora", "strategy": "lora"})
    summary = export(tmp_path / "ck", tmp_path / "ex")
    assert summary["lora_modules"] == 4 and summary["lora_elsewhere"]  # q, v of 2 layers; the fusion's is merged only
    ex = tmp_path / "ex"
    config = json.loads((ex / "decoder-lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str((ex / "decoder-base").resolve())

    base = AutoModelForCausalLM.from_pretrained(ex / "decoder-base", local_files_only=True).eval()
    for k, v in base.state_dict().items():  # the decoder before the adapters, up to rounding
        torch.testing.assert_close(v, base_weights[k], atol=1e-6, rtol=1e-5)
    peft_model = PeftModel.from_pretrained(base, ex / "decoder-lora").eval()
    assert len(lora_layers(peft_model)) == 4
    torch.testing.assert_close(peft_model(input_ids=ids[None]).logits[0], expected, atol=1e-4, rtol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(ex / "decoder", local_files_only=True).eval()
    torch.testing.assert_close(merged(input_ids=ids[None]).logits[0], expected, atol=1e-4, rtol=1e-4)


def test_the_chat_template_renders_hf_messages_as_the_processor_does(tokenizer, tiny, tmp_path):
    from transformers import AutoTokenizer

    model, processor = tiny
    cfg = load_config(None, TINY)
    save_checkpoint(tmp_path / "ck", model, tokenizer, cfg, {})
    export(tmp_path / "ck", tmp_path / "ex")
    template = (tmp_path / "ex" / "chat_template.jinja").read_text()
    render = jinja2.Environment().from_string(template).render
    for with_image in (True, False):
        for prompt in (True, False):
            text = tokenizer.render(conversation(with_image), add_generation_prompt=prompt)  # the processor's text
            assert render(messages=messages(with_image), add_generation_prompt=prompt) == text
    assert "<|image|>How many red" in render(messages=messages())
    # OpenAI-style parts: image_url and input_audio are placeholders too
    openai = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}},
                                           {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                                           {"type": "text", "text": "Same?"}]}]
    assert render(messages=openai) == tokenizer.render(Conversation().add("user", random_image(0), Audio(data=b""), "Same?"))
    # transformers' own rendering agrees, and the export's tokenizer renders mmdialog's turns as before
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "ex", local_files_only=True)
    assert hf_tok.apply_chat_template(messages(), tokenize=False, add_generation_prompt=True) == \
        tokenizer.render(conversation(), add_generation_prompt=True)
    exported = ChatTokenizer(tokenizer.tok, template)
    for prompt in (True, False):
        assert exported.render(conversation(), prompt) == tokenizer.render(conversation(), prompt)
    assert load_export(tmp_path / "ex").tokenizer.chat_template == tokenizer.chat_template  # loads back as it was
