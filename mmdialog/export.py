"""`mmdialog export`: a checkpoint as a directory in the Hugging Face layout, and the loader that reads it back.

    DIR/config.json                      architecture, the full mmdialog config, vocab size, placeholder ids,
                                         tied weights, the checkpoint's meta (world, step, ...)
    DIR/model.safetensors                every tensor once, bit for bit; past --max-shard-size instead:
    DIR/model-00001-of-0000N.safetensors   shards, and
    DIR/model.safetensors.index.json       {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}
    DIR/tokenizer.json, tokenizer_config.json, chat_template.jinja

Tied weights (the decoder's embedding and LM head) are stored once and listed in config.json's
`tied_weights`. `load_any` takes an export or a checkpoint (`mmdialog eval`, `chat`, `serve` and `data check` use it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmdialog import __version__
from mmdialog.config import config_from_dict, to_dict
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import BOS, END, PAD, SPECIAL_TOKENS, ChatTokenizer
from mmdialog.errors import MMDialogError
from mmdialog.model import build_model
from mmdialog.train.checkpoint import Loaded, load_checkpoint

FORMAT = "mmdialog-export/1"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD = "5GB"
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
            "model_max_length": max_length, "clean_up_tokenization_spaces": False}


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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    tensors, tied = unique_tensors(ck.model)
    shards = shard(tensors, max_bytes)
    n = len(shards)
    files = [WEIGHTS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for f, part in zip(files, shards):
        save_file(part, str(tmp / f), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: f for f, part in zip(files, shards) for k in part}}
        (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values()}
    config = {
        "architectures": ["MultimodalLM"], "model_type": "mmdialog", "format": FORMAT,
        "mmdialog_version": __version__, "torch_dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
        "vocab_size": ck.tokenizer.vocab_size, "placeholder_ids": ck.model.placeholder_ids, "tied_weights": tied,
        "mmdialog": to_dict(ck.config),
        "meta": {k: v for k, v in ck.meta.items() if k not in ("format", "vocab_size", "placeholder_ids")},
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ck.tokenizer.save(tmp)  # tokenizer.json and chat_template.jinja
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(ck.tokenizer, ck.config.model.decoder.max_seq_len), indent=2) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.iterdir():  # safetensors writes 0600; an export is meant to be shared. Durable before visible.
        os.chmod(f, 0o666 & ~umask)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return {"out": str(target), "files": sorted(p.name for p in target.iterdir()), "shards": n,
            "tensors": len(tensors), "tied": len(tied), "bytes": total}


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
    """An exported directory or a training checkpoint, whichever `path` is."""
    return load_export(path, device) if is_export(path) else load_checkpoint(path, device)


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
    if tokenizer.vocab_size != config["vocab_size"]:
        raise MMDialogError(f"{d}: tokenizer.json has {tokenizer.vocab_size} tokens but config.json says "
                            f"{config['vocab_size']}")
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
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
