"""The real-backbone recipes (configs/recipes/), run through the CLI exactly as shipped, with the backbones shrunk:
a tiny SigLIP or CLIP vision tower and a tiny Llama or Qwen2 LM built from configs with random weights and saved
with save_pretrained (bf16, as SmolLM2 and Qwen2.5 ship), beside a BPE tokenizer.json of their own. Only paths,
sizes and step counts are overridden: the stages, strategy, precision and gradient checkpointing are the recipe's."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mmdialog.cli import main
from mmdialog.data.conversation import Conversation
from mmdialog.modelio import load_any
from tests.conftest import random_image

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "configs" / "recipes"
WORDS = ["Describe the picture.", "There are 5 shapes. One is a large red circle at the top left.", "How many",
         "red green blue yellow purple cyan things circles squares triangles small large left right top bottom",
         "What colour is it? Is there a? What about? of them are Let's call the Max. OK. yes no", "0123456789"]


def save_backbones(d: Path, vision: str, lm: str) -> tuple[Path, Path]:
    """A tiny vision tower and a tiny causal LM (with its own tokenizer.json) as local directories."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    v_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8)
    tower = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**v_cfg)) if vision == "siglip" else \
        transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**v_cfg, projection_dim=32))
    tower.save_pretrained(d / vision)

    tok = Tokenizer(models.BPE())  # an LM's own byte-level BPE, with its own special tokens (none of mmdialog's)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(WORDS * 20, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    l_cfg = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
    cls, cfg_cls = (transformers.LlamaForCausalLM, transformers.LlamaConfig) if lm == "llama" else \
        (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)
    model = cls(cfg_cls(**l_cfg)).to(torch.bfloat16)
    model.save_pretrained(d / lm)
    tok.save(str(d / lm / "tokenizer.json"))
    return d / vision, d / lm


def recipe_args(recipe: str, out: Path, vision: Path, lm: Path, stage2: str, *extra) -> list[str]:
    return ["train", "--config", str(RECIPES / recipe), "--out", str(out),
            f"model.encoders.image.path={vision}", f"model.decoder.path={lm}", f"data.tokenizer={lm}",
            "model.decoder.max_seq_len=512", "world.dialogues=30", "world.image_size=32",
            f"train.stages=[{{trainable: ['fusion.*'], steps: 2, lr: 1.0e-3}}, {{trainable: {stage2}, steps: 2, lr: 1.0e-3}}]",
            "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1", "train.save_every=0", "train.num_threads=1",
            "eval.max_dialogues=1", *extra]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


def text_logits(ck, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    ex = ck.processor(Conversation().add("user", text), add_generation_prompt=True)
    with torch.no_grad():
        return ex.input_ids, ck.model(input_ids=ex.input_ids[None], return_logits=True).logits[0]


def test_siglip_smollm2_recipe_trains_in_two_stages_and_exports(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    vision, lm = save_backbones(tmp_path / "models", "siglip", "llama")
    out = tmp_path / "run"
    assert main(recipe_args("siglip_smollm2.yaml", out, vision, lm, "['fusion.*', 'decoder.*']")) == 0
    printed = capsys.readouterr().out
    assert "stage 1/2" in printed and "stage 2/2" in printed and "precision: bf16" in printed
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in log)

    ck = load_any(out / "checkpoint")
    state = ck.model.state_dict()
    assert all(t.dtype == torch.float32 for t in state.values())  # fp32 master weights, bf16 on disk
    tower, llm = tensors(vision), tensors(lm)
    assert all(torch.equal(state[f"encoders.image.model.{k}"], v.float()) for k, v in tower.items())  # frozen
    assert not torch.equal(state["decoder.lm.model.layers.0.mlp.up_proj.weight"],
                           llm["model.layers.0.mlp.up_proj.weight"].float())  # stage 2 trained the LM
    # the LM's vocabulary plus mmdialog's 9 tokens; the embedding table grew to match
    lm_vocab = json.loads((lm / "config.json").read_text())["vocab_size"]
    assert ck.tokenizer.vocab_size == lm_vocab + 9 == state["decoder.lm.model.embed_tokens.weight"].shape[0]
    assert ck.tokenizer.encode("How many red circles") == _lm_tokenizer(lm).encode("How many red circles").ids

    assert main(["export", str(out / "checkpoint"), "--out", str(tmp_path / "export")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "decoder", local_files_only=True).eval()
    ids, expected = text_logits(ck, "How many red things are there?")
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids[None]).logits[0], expected, atol=1e-5, rtol=1e-5)

    # the export travels: it loads (bit for bit, the same logits for a picture) where the backbones' directories
    # do not exist, and keeps the recipe's model section for train.init_from
    shutil.rmtree(tmp_path / "models")
    back = load_any(tmp_path / "export")
    assert back.config == ck.config and back.model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in back.model.state_dict().items())
    conv = Conversation().add("user", random_image(3), "How many red things are there?")
    for a in (ck, back):
        ex = a.processor(conv, add_generation_prompt=True)
        with torch.no_grad():
            a.logits = a.model(input_ids=ex.input_ids[None], images=ex.images, return_logits=True).logits
    assert torch.equal(ck.logits, back.logits)


def test_qwen_recipe_trains_lora_in_stage_2_and_exports_the_adapter(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    vision, lm = save_backbones(tmp_path / "models", "clip", "qwen2")
    out = tmp_path / "run"
    args = recipe_args("siglip_qwen2.5_0.5b.yaml", out, vision, lm, "['fusion.*', '*.lora_*']", "train.lora.r=4",
                       "train.lora.alpha=8", "train.lora.dropout=0.0")
    assert main(args) == 0
    assert "stage 2/2" in capsys.readouterr().out
    ck = load_any(out / "checkpoint")
    assert ck.meta["adapters"] is None and (out / "checkpoint" / "adapters.safetensors").is_file()
    state, llm = ck.model.state_dict(), tensors(lm)
    # only the adapted projections moved (merged adapters); norms, embeddings and the rest are the LM's own
    assert torch.equal(state["decoder.lm.model.norm.weight"], llm["model.norm.weight"].float())
    assert not torch.equal(state["decoder.lm.model.layers.1.self_attn.q_proj.weight"],
                           llm["model.layers.1.self_attn.q_proj.weight"].float())

    assert main(["export", str(out / "checkpoint"), "--out", str(tmp_path / "export")]) == 0
    ex = tmp_path / "export"
    base = AutoModelForCausalLM.from_pretrained(ex / "decoder-base", local_files_only=True)
    torch.testing.assert_close(base.state_dict()["model.layers.1.self_attn.q_proj.weight"],
                               llm["model.layers.1.self_attn.q_proj.weight"].float(), atol=1e-6, rtol=0)
    peft_model = PeftModel.from_pretrained(base, ex / "decoder-lora").eval()
    ids, expected = text_logits(ck, "What colour is it?")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids[None]).logits[0], expected, atol=1e-4, rtol=1e-4)


def test_the_recipe_runs_under_torchrun(tmp_path):
    """Two processes (gloo on CPU), as on two GPUs: both stages run and the processes end in sync."""
    vision, lm = save_backbones(tmp_path / "models", "siglip", "llama")
    out = tmp_path / "run"
    args = recipe_args("siglip_smollm2.yaml", out, vision, lm, "['fusion.*', 'decoder.*']", "train.precision=fp32")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "mmdialog", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["processes"] == 2 and len(set(meta["param_sha1_by_rank"])) == 1 and meta["step"] == 4


def _lm_tokenizer(lm: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(lm / "tokenizer.json"))


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_names_its_backbones_and_fails_clearly_without_them(recipe):
    from mmdialog.config import load_config
    from mmdialog.data.tokenizer import ChatTokenizer
    from mmdialog.errors import MMDialogError
    from mmdialog.model import build_model

    cfg = load_config(RECIPES / recipe, ["model.encoders.image.path=/nonexistent/siglip"])
    assert cfg.model.decoder.name == "hf" and cfg.data.tokenizer == cfg.model.decoder.path
    assert cfg.train.strategy == "staged" and len(cfg.train.stages) == 2 and cfg.train.grad_checkpointing
    assert cfg.train.precision == "bf16"
    with pytest.raises(MMDialogError, match="vision tower directory not found: /nonexistent/siglip"):
        build_model(cfg.model, vocab_size=100, placeholder_ids={"image": 1})
    with pytest.raises(MMDialogError, match=f"no tokenizer.json in {cfg.data.tokenizer}"):
        ChatTokenizer.load(cfg.data.tokenizer)


def test_the_recipe_benchmark_runs_tiny_on_cpu(tmp_path, monkeypatch):
    import runpy

    for recipe in ("siglip_qwen2.5_0.5b.yaml",):  # its stage 2 injects adapters: the longer path
        out = tmp_path / f"{recipe}.json"
        monkeypatch.setattr(sys, "argv", ["recipe_step.py", "--tiny", "--steps", "1", "--recipe", str(RECIPES / recipe),
                                          "--json", str(out), "train.precision=fp32"])
        runpy.run_path(str(ROOT / "benchmarks" / "recipe_step.py"), run_name="__main__")
        r = json.loads(out.read_text())
        assert [s["stage"] for s in r["stages"]] == [1, 2] and all(s["tokens_per_s"] > 0 for s in r["stages"])
        assert r["stages"][0]["trainable"] < r["stages"][1]["trainable"] < r["parameters"]
