"""`mmdialog export`: a checkpoint as a directory in the Hugging Face layout, and the loader that reads it back.

    DIR/config.json                      architecture, the full mmdialog config, vocab size, placeholder ids,
                                         tied weights, the checkpoint's meta (world, step, ...)
    DIR/model.safetensors                every tensor once, bit for bit; past --max-shard-size instead:
    DIR/model-00001-of-0000N.safetensors   shards, and
    DIR/model.safetensors.index.json       {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}
    DIR/tokenizer.json, tokenizer_config.json, chat_template.jinja

With a Hugging Face decoder (model.decoder.name=hf) its part also stands alone, for plain transformers and peft:

    DIR/decoder/         the decoder as trained (adapters merged): config.json, model.safetensors (sharded the
                         same way), generation_config.json, the tokenizer files and chat template;
                         AutoModelForCausalLM.from_pretrained(DIR/decoder) gives the logits mmdialog's decoder
                         gives for text (token ids from AutoTokenizer.from_pretrained(DIR/decoder))
    DIR/decoder-lora/    when the checkpoint holds LoRA adapters on the decoder (train.strategy=lora):
                         adapter_config.json + adapter_model.safetensors in peft's format, for
    DIR/decoder-base/    the decoder without them (same files as decoder/), so that
                         PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR/decoder-base),
                         DIR/decoder-lora) equals DIR/decoder up to rounding

chat_template.jinja renders mmdialog's turns and Hugging Face / OpenAI `messages` alike (content a string
or a list of parts; an image part becomes one <|image|> placeholder), so tokenizer.apply_chat_template
gives the processor's text.

Tied weights (the decoder's embedding and LM head) are stored once and listed in config.json's
`tied_weights`. `load_any` takes an export or a checkpoint (`mmdialog eval`, `chat`, `serve` and `data check` use it).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmdialog import __version__
from mmdialog.config import config_from_dict, to_dict
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import BOS, CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS, ChatTokenizer
from mmdialog.decoders.hf import HFCausalDecoder
from mmdialog.errors import MMDialogError
from mmdialog.model import build_model
from mmdialog.modelio.atomic import atomic_directory
from mmdialog.modelio.checkpoint import Loaded, load_checkpoint, locate_world
from mmdialog.modules.lora import ADAPTERS, inject_lora, load_adapters, lora_state

FORMAT = "mmdialog-export/1"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD = "5GB"
DECODER, DECODER_BASE, DECODER_LORA = "decoder", "decoder-base", "decoder-lora"

# mmdialog's chat template (data/tokenizer.py) made to read Hugging Face / OpenAI messages too: it renders
# `turns` (role, parts) exactly as CHAT_TEMPLATE does, and `messages` (role, content: a string or a list of
# {"type": "text", "text"} / {"type": "image" | "image_url" | "audio" | "input_audio" | "video", ...}).
HF_CHAT_TEMPLATE = (
    "{%- for m in (messages if messages is defined else turns) -%}"
    "<|{{ m.role }}|>"
    "{%- set content = m.parts if m.parts is defined else m.content -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.type == 'text' -%}{{ part.text }}"
    "{%- elif part.type in ('image', 'image_url') -%}<|image|>"
    "{%- elif part.type in ('audio', 'input_audio') -%}<|audio|>"
    "{%- elif part.type == 'video' -%}<|video|>"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt is defined and add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' (decimal, as Hugging Face counts), '500MiB', '2048' -> bytes."""
    if isinstance(text, int):
        size = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        if m is None or m.group(2).upper() not in _UNITS:
            raise MMDialogError(f"--max-shard-size must look like 5GB, 500MB, 200MiB or a byte count; got {text!r}")
        size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise MMDialogError(f"--max-shard-size must be positive, got {text!r}")
    return size


def unique_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with every shared tensor once (under its first name), and {alias: kept name}."""
    tensors, tied, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen and t.numel() > 0:  # empty tensors share the null pointer without being tied
            tied[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().contiguous()
    return tensors, tied


def shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, a new shard whenever the next one would pass max_bytes (a bigger tensor gets its own)."""
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += n
    if current or not shards:
        shards.append(current)
    return shards


def tokenizer_config(tokenizer: ChatTokenizer, max_length: int) -> dict:
    """tokenizer_config.json: enough for transformers' PreTrainedTokenizerFast to read tokenizer.json."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": END, "pad_token": PAD,
            "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS, END, PAD)],
            "model_max_length": max_length, "clean_up_tokenization_spaces": False,
            "chat_template": chat_template(tokenizer)}


def chat_template(tokenizer: ChatTokenizer) -> str:
    """The template an export carries: HF_CHAT_TEMPLATE for mmdialog's own, else the tokenizer's."""
    return HF_CHAT_TEMPLATE if tokenizer.chat_template in (CHAT_TEMPLATE, HF_CHAT_TEMPLATE) else tokenizer.chat_template


def write_tokenizer(tokenizer: ChatTokenizer, d: Path, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and chat_template.jinja."""
    tokenizer.tok.save(str(d / "tokenizer.json"))
    (d / "chat_template.jinja").write_text(chat_template(tokenizer))
    (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tokenizer, max_length), indent=2) + "\n")


def export(checkpoint: str | Path, out: str | Path, max_shard_size: str | int = DEFAULT_SHARD) -> dict:
    """Write the export of a checkpoint (or of another export) to `out`; returns a summary.

    The directory is written beside `out` and renamed into place; an existing `out` is replaced only
    when it is empty or an earlier export.
    """
    max_bytes = parse_size(max_shard_size)
    ck = load_any(checkpoint)
    target = Path(out)
    if target.exists() and not _replaceable(target):
        raise MMDialogError(f"{target} exists and is not an mmdialog export; choose another --out or remove it")
    with atomic_directory(target, shareable=True) as tmp:
        tensors, tied = unique_tensors(ck.model)
        shards = shard(tensors, max_bytes)
        n = len(shards)
        files = [WEIGHTS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for f, part in zip(files, shards):
            save_file(part, str(tmp / f), metadata={"format": "pt"})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        if n > 1:
            weight_map = {k: f for f, part in zip(files, shards) for k in part}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values()}
        config = {
            "architectures": ["MultimodalLM"], "model_type": "mmdialog", "format": FORMAT,
            "mmdialog_version": __version__, "torch_dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
            "vocab_size": ck.tokenizer.vocab_size, "placeholder_ids": ck.model.placeholder_ids, "tied_weights": tied,
            "mmdialog": to_dict(ck.config),
            **({"portable_model": portable} if (portable := portable_model(ck)) else {}),
            "meta": {k: v for k, v in ck.meta.items()
                     if k not in ("format", "vocab_size", "placeholder_ids", "world_missing")},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_tokenizer(ck.tokenizer, tmp, ck.config.model.decoder.max_seq_len)
        parts = {}
        if is_hf_decoder(ck.model.decoder):
            parts = export_hf_decoder(ck, checkpoint, tmp, max_bytes, final_dir=target.resolve())
    return {"out": str(target), "files": sorted(p.name for p in target.iterdir()), "shards": n,
            "tensors": len(tensors), "tied": len(tied), "bytes": total, **parts}


# ----------------------------------------------------------------------------- backbones without their directories

_NOT_ARCHITECTURE = ("dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path", "auto_map",
                     "_attn_implementation_autoset")


def hf_fields(hf_config) -> dict:
    """A transformers config as the hf_config of a model section: every architecture field, not the dtype (the
    export's tensors set it) nor where it came from."""
    fields = {k: v for k, v in hf_config.to_dict().items() if k not in _NOT_ARCHITECTURE}
    return json.loads(json.dumps(fields))  # plain JSON values


def portable_model(ck: Loaded) -> dict | None:
    """The model section with every backbone loaded from a directory (decoder hf, encoders hf_vision / hf_whisper
    with a path) described by its config instead, so that the export loads where those directories do not exist;
    None when no part has a path. The tensors come from the export either way."""
    model = to_dict(ck.config.model)
    changed = False
    dec = model["decoder"]
    if dec.get("name") == "hf" and dec.get("path"):
        dec["path"], dec["hf_config"] = "", hf_fields(ck.model.decoder.lm.config)
        changed = True
    for modality, spec in model.get("encoders", {}).items():
        if not (isinstance(spec, dict) and spec.get("path") and spec.get("name") in ("hf_vision", "hf_whisper")):
            continue
        enc = ck.model.encoders[modality]
        spec.pop("path")
        spec["hf_config"] = hf_fields(enc.model.config)
        if spec["name"] == "hf_vision":
            spec["image_mean"], spec["image_std"] = enc.mean.flatten().tolist(), enc.std.flatten().tolist()
        changed = True
    return model if changed else None


# ----------------------------------------------------------------------------- the decoder for transformers / peft

def is_hf_decoder(decoder: torch.nn.Module) -> bool:
    """The Hugging Face decoder adapter: its `lm` is the transformers model export writes."""
    return isinstance(decoder, HFCausalDecoder)


def export_hf_decoder(ck: Loaded, source: str | Path, tmp: Path, max_bytes: int, final_dir: Path) -> dict:
    """Write tmp/decoder (and, with LoRA adapters on the decoder, tmp/decoder-base + tmp/decoder-lora)."""
    lm = ck.model.decoder.lm
    max_length = ck.config.model.decoder.max_seq_len
    save_hf_lm(lm, tmp / DECODER, ck.tokenizer, max_bytes, max_length)
    found = checkpoint_adapters(ck, Path(source))
    if found is None:
        return {"decoder": DECODER}
    state, lora = found
    prefix = "decoder.lm."
    modules = sorted({k.rsplit(".", 2)[0] for k in state})
    mine = [m for m in modules if m.startswith(prefix)]
    out = {"decoder": DECODER, "lora_elsewhere": [m for m in modules if not m.startswith(prefix)]}
    if not mine:
        return out
    # The base: each adapted weight without its adapter, W = W_merged - (alpha / r) * B @ A (in float64).
    base = copy.deepcopy(lm)
    scale = lora.alpha / lora.r
    with torch.no_grad():
        for m in mine:
            w = base.get_submodule(m[len(prefix):]).weight
            delta = scale * (state[f"{m}.lora_B.weight"].double() @ state[f"{m}.lora_A.weight"].double())
            w.copy_((w.double() - delta.to(w.device)).to(w.dtype))
    save_hf_lm(base, tmp / DECODER_BASE, ck.tokenizer, max_bytes, max_length)
    del base
    save_peft_adapter(tmp / DECODER_LORA, {m[len(prefix):]: (state[f"{m}.lora_A.weight"], state[f"{m}.lora_B.weight"])
                                           for m in mine}, lora, base_path=final_dir / DECODER_BASE)
    return {**out, "decoder_base": DECODER_BASE, "decoder_lora": DECODER_LORA, "lora_modules": len(mine)}


def save_hf_lm(lm, d: Path, tokenizer: ChatTokenizer, max_bytes: int, max_length: int) -> None:
    """save_pretrained with mmdialog's tokenizer beside it; bos/eos/pad are mmdialog's tokens, so generate()
    stops at the end of a turn (<|end|>)."""
    ids = {"bos_token_id": tokenizer.tok.token_to_id(BOS), "eos_token_id": tokenizer.end_id,
           "pad_token_id": tokenizer.pad_id}
    for cfg in (lm.config, getattr(lm, "generation_config", None)):
        if cfg is not None:
            for k, v in ids.items():
                setattr(cfg, k, v)
    lm.save_pretrained(str(d), max_shard_size=max_bytes)
    write_tokenizer(tokenizer, d, max_length)


def save_peft_adapter(d: Path, adapters: dict[str, tuple[torch.Tensor, torch.Tensor]], lora, base_path: Path) -> None:
    """adapter_config.json + adapter_model.safetensors as peft's save_pretrained writes them for a causal LM:
    adapters maps a module name inside the LM (model.layers.0.self_attn.q_proj) to its (A (r, in), B (out, r))."""
    from peft import LoraConfig as PeftLoraConfig

    d.mkdir(parents=True)
    PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=sorted(adapters),
                   bias="none", task_type="CAUSAL_LM", base_model_name_or_path=str(base_path)).save_pretrained(str(d))
    tensors = {}
    for name, (a, b) in adapters.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})


def checkpoint_adapters(ck: Loaded, source: Path):
    """(lora_state, LoraConfig) of a checkpoint's LoRA adapters, or None: the final checkpoint of a LoRA run
    keeps them in adapters.safetensors; one written mid-run (or stopped) holds them unmerged in its weights."""
    if (source / ADAPTERS).is_file():
        return load_adapters(source / ADAPTERS)
    try:
        meta = json.loads((source / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("adapters") != "lora":
        return None
    from safetensors.torch import load_model

    model = build_model(ck.config.model, vocab_size=ck.tokenizer.vocab_size, placeholder_ids=dict(ck.tokenizer.media_ids))
    inject_lora(model, ck.config.train.lora)
    load_model(model, str(source / "model.safetensors"), strict=False)
    return lora_state(model), ck.config.train.lora


def _replaceable(d: Path) -> bool:
    if d.is_dir() and not any(d.iterdir()):
        return True
    try:
        return json.loads((d / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_export(directory: str | Path) -> bool:
    return (Path(directory) / "config.json").is_file() and not (Path(directory) / "meta.json").is_file()


def load_any(path: str | Path, device: str = "cpu") -> Loaded:
    """An exported directory or a training checkpoint, whichever `path` is; its meta's world located (locate_world)."""
    ck = load_export(path, device) if is_export(path) else load_checkpoint(path, device)
    locate_world(ck.meta, Path(path))
    return ck


def load_export(directory: str | Path, device: str = "cpu") -> Loaded:
    """Read back what `export` wrote: the same tensors bit for bit, the same tokenizer and config."""
    d = Path(directory)
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise MMDialogError(f"cannot read {d / 'config.json'}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise MMDialogError(f"{d / 'config.json'} has format {found!r}, expected {FORMAT!r} (an mmdialog export)")
    for key in ("mmdialog", "vocab_size", "placeholder_ids", "tied_weights"):
        if key not in config:
            raise MMDialogError(f"{d / 'config.json'} lacks field {key!r}")
    cfg = config_from_dict(config["mmdialog"], where=f"{d / 'config.json'} field 'mmdialog'")
    tokenizer = ChatTokenizer.load(d)
    if tokenizer.chat_template == HF_CHAT_TEMPLATE:  # mmdialog's own, as export wrote it for transformers too
        tokenizer = ChatTokenizer(tokenizer.tok, CHAT_TEMPLATE)
    if tokenizer.vocab_size != config["vocab_size"]:
        raise MMDialogError(f"{d}: tokenizer.json has {tokenizer.vocab_size} tokens but config.json says "
                            f"{config['vocab_size']}")
    model_cfg = cfg.model
    if "portable_model" in config:  # backbones rebuilt from their configs: their directories need not exist here
        model_cfg = config_from_dict({**config["mmdialog"], "model": config["portable_model"]},
                                     where=f"{d / 'config.json'} field 'portable_model'").model
    model = build_model(model_cfg, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    state = read_weights(d)
    for alias, source in config["tied_weights"].items():
        if source not in state:
            raise MMDialogError(f"{d / 'config.json'}: tied weight {alias!r} points to {source!r}, which no shard holds")
        state[alias] = state[source]
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MMDialogError(f"{d} holds weights of another model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise MMDialogError(f"{d}: {k} has shape {tuple(t.shape)}, this config builds {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    processor = Processor.for_model(tokenizer, model, max_length=cfg.model.decoder.max_seq_len)
    meta = {**config.get("meta", {}), "format": FORMAT, "vocab_size": config["vocab_size"],
            "placeholder_ids": config["placeholder_ids"]}
    return Loaded(model, processor, tokenizer, cfg, meta)


def read_weights(d: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists."""
    if (d / INDEX).is_file():
        try:
            weight_map = json.loads((d / INDEX).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MMDialogError(f"cannot read {d / INDEX}: {e}") from None
        files = sorted(set(weight_map.values()))
    elif (d / WEIGHTS).is_file():
        weight_map, files = None, [WEIGHTS]
    else:
        raise MMDialogError(f"{d} holds neither {WEIGHTS} nor {INDEX}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        path = d / f
        if not path.is_file() or Path(f).name != f:
            raise MMDialogError(f"{d / INDEX if weight_map else d} names the weight file {f!r}, which is not in {d}")
        try:
            with safe_open(str(path), "pt") as sf:
                for k in sf.keys():
                    if k in state:
                        raise MMDialogError(f"{path}: tensor {k!r} is also in another shard")
                    if weight_map is not None and weight_map.get(k) != f:
                        raise MMDialogError(f"{path} holds {k!r}, but {INDEX} puts it in {weight_map.get(k)!r}")
                    state[k] = sf.get_tensor(k)
        except MMDialogError:
            raise
        except Exception as e:
            raise MMDialogError(f"cannot read weights {path}: {e}") from None
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise MMDialogError(f"{d / INDEX} lists tensors no shard holds: {absent[:5]}")
    return state
