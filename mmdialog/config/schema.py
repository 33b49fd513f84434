"""The config schema: one dataclass per section of a config file, with its defaults and what each field means.

Loading (YAML, `a.b=c` overrides, type conversion) is in loader.py; building registered parts from a config
mapping in builder.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmdialog.errors import MMDialogError


@dataclass
class ImageEncoderConfig:
    name: str = "vit"
    image_size: int = 64  # square input side, pixels
    patch_size: int = 16
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class FusionConfig:
    """One section for every fusion; a fusion takes only the fields it uses (setting another one is an error).

    concat: media tokens projected into their placeholders' slots. cross_attention: gated cross-attention
    before every `every`-th decoder layer (one slot per item). interactive: `layers` co-attention layers
    between text and media before the decoder. hierarchical: encoder `levels` concatenated per token.
    dynamic: an input-conditioned gate weighs `levels` and the modality per item. resampler: `layers`
    Perceiver layers squeeze every item into `num_queries` tokens.
    """

    name: str = "concat"
    heads: int = 4  # cross_attention, interactive, resampler
    every: int = 1  # cross_attention: a gated cross-attention layer before decoder layers 0, every, 2*every, ...
    layers: int = 1  # interactive: co-attention layers; resampler: Perceiver layers
    num_queries: int = 8  # resampler: tokens each media item becomes
    levels: tuple[int, ...] = (0, -1)  # hierarchical, dynamic: encoder levels (0: the embedding, -1: the last)
    gate_init: float = 0.0  # cross_attention, interactive: tanh gates start at tanh(gate_init); 0 = closed


@dataclass
class DecoderConfig:
    name: str = "causal"
    vocab_size: int = 0  # 0: taken from the tokenizer at build time
    dim: int = 128
    depth: int = 4
    heads: int = 4
    kv_heads: int = 0  # 0: same as heads (no grouped-query attention)
    mlp_hidden: int = 0  # 0: 8/3 * dim rounded up to a multiple of 32 (SwiGLU)
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = True
    qk_norm: bool = False  # causal: RMSNorm of each head's queries and keys (OLMo 2 / Gemma 3 style)
    init: str = "fan_in"  # causal: fan_in (N(0, 1/sqrt(fan in)) per layer) | gpt2 (N(0, 0.02)); see CausalDecoder
    path: str = ""  # hf: a local directory holding config.json and *.safetensors of an AutoModelForCausalLM
    hf_config: dict[str, Any] = field(default_factory=dict)  # hf: {model_type: llama, ...} to build one untrained


@dataclass
class ModelConfig:
    """The image encoder is `image` (the original key) unless `encoders` names one; `encoders` maps a modality
    (image, audio, video) to {name: <registered encoder>, <its keyword arguments>...}, checked against the
    encoder's signature when the model is built. `reader` (optional): a frozen pretrained text encoder that
    reads each user turn, {name: hf_text, path: <dir or pkg:NAME>} (encoders/reader.py); empty: none."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    reader: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorldConfig:
    dir: str = ""  # an existing world directory; empty: generate one into <out>/world
    dialogues: int = 6000
    seed: int = 0
    image_size: int = 64
    phrasing: str = "ordinary"  # ordinary (as people type, and a few turns not about the picture) | canonical
    held_out: tuple[str, ...] = ()  # held-out test splits to add: long, combos, paraphrase (data/worlds/shapes/heldout.py)


@dataclass
class DataConfig:
    """Training on a dataset file instead of the built-in world (see mmdialog/data/formats)."""

    # LLaVA JSON, ShareGPT-style or OpenAI chat JSONL: one path, a glob (data/shard-*.jsonl, sorted by name) or a
    # list of them, read in order as one training set; empty: the built-in world
    train_file: str | tuple[str, ...] = ""
    format: str = "auto"  # auto | llava | sharegpt | openai
    media_root: str = ""  # media paths are relative to it and may not leave it; empty: the train file's directory
    tokenizer: str = ""  # a directory with tokenizer.json (a checkpoint or an export); empty: train one on the text
    lazy: bool = False  # keep only (file, byte offset) per valid record and read + process it when drawn (JSONL only)

    def __post_init__(self):
        if isinstance(self.train_file, (list, tuple)):
            self.train_file = tuple(str(f) for f in self.train_file)
        elif self.train_file is None:
            self.train_file = ""
        elif not isinstance(self.train_file, str):
            raise MMDialogError(f"config key 'data.train_file' must be a path, a glob or a list of them, "
                                f"got {self.train_file!r}")


@dataclass
class TokenizerConfig:
    vocab_size: int = 512  # BPE vocabulary trained on the world's text


@dataclass
class StageConfig:
    """One stage of train.strategy=staged: the parameters matching `trainable` train for `steps` steps at `lr`."""

    trainable: tuple[str, ...] = ()  # fnmatch patterns over parameter names, e.g. fusion.*; ("*",): everything
    steps: int = 0
    lr: float = 0.0  # 0: train.lr


@dataclass
class LoraConfig:
    """train.strategy=lora: low-rank adapters (peft) on the Linear layers whose module names match `targets`."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("decoder.blocks.*.attn.qkv", "decoder.blocks.*.attn.out_proj")  # fnmatch over modules
    also_train: tuple[str, ...] = ()  # parameter patterns trained in full beside the adapters, e.g. fusion.*


@dataclass
class AugmentConfig:
    """Label-true augmentation of the world's dialogues, drawn anew each epoch (data/worlds/shapes/augment.py):
    the probability that a draw is flipped left-right (and "left"/"right" swapped in its text), has its early
    rounds cut, has distractor rounds inserted, has two colours swapped (image and text; never in a dialogue that
    asks a colour), and has its questions reworded (training templates, never the held-out paraphrases)."""

    flip: float = 0.0
    cut_history: float = 0.0
    distractors: float = 0.0
    colour: float = 0.0
    paraphrase: float = 0.0  # per question


@dataclass
class TrainConfig:
    batch_size: int = 32  # conversations per optimizer step, over all processes and accumulation steps
    lr: float = 2e-3
    optimizer: str = "muon"  # muon (hidden matrices; AdamW for the rest) | adamw; see train.trainer.make_optimizer
    encoder_lr_scale: float = 0.1  # media encoders train at lr * this (see train.trainer.make_optimizer)
    embed_lr_scale: float = 1.0  # embedding tables (tokens; positions where learned) train at lr * this
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    max_steps: int = 1000  # with strategy=staged: the sum of the stages' steps instead
    max_minutes: float = 0.0  # 0: no wall-clock budget; else stop (and finish the cosine early) at this time
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is split between them)
    grad_checkpointing: bool = False  # recompute decoder blocks in the backward pass instead of keeping activations
    precision: str = "auto"  # auto | bf16 | fp16 | fp32; auto: bf16 where the CPU has native bf16 or on CUDA, else fp32
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # write a resumable checkpoint to OUT/checkpoints/ every N steps (0: only the final model)
    keep_last: int = 3  # resumable checkpoints kept (older ones are deleted)
    on_nan: str = "stop"  # stop | skip: a non-finite loss or gradient stops the run, or skips that batch
    num_threads: int = 0  # 0: torch's default
    init_from: str = ""  # a checkpoint or export to start from (its weights and tokenizer; same model section)
    strategy: str = "full"  # full | partial | staged | lora
    freeze: tuple[str, ...] = ()  # partial: parameter-name patterns (fnmatch) kept frozen, e.g. encoders.*
    stages: tuple[StageConfig, ...] = ()  # staged: run in order; the stages' steps add up to the run's steps
    lora: LoraConfig = field(default_factory=LoraConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss_turns: str = "all"  # all assistant turns | last (the last one only) | weighted (per-message weights from data)
    # | per_turn (every reply weighs the same: a one-word answer as much as a whole caption)
    pack: bool = False  # pack the batch's conversations into as few rows as fit pack_length (attention isolated)
    pack_length: int = 0  # longest packed row; 0: the decoder's max_seq_len
    group_by_length: int = 0  # >0: batches of similar length, sorted within runs of this many batches (less padding)
    distributed: str = "ddp"  # under torchrun: ddp (replicas) | fsdp (FSDP2: parameters, gradients, optimizer state sharded)
    # validation (eval/validation.py): the gold-history scorer on held-out records, logged to train_log.jsonl
    eval_file: str = ""  # a LLaVA / ShareGPT / OpenAI file; empty: the world's val split when eval_every is set
    eval_format: str = "auto"  # auto | llava | sharegpt | openai
    eval_every: int = 0  # validate every N steps and at the end (0: only at the end, and only with eval_file)
    eval_max_records: int = 200  # the first N valid records (0: all)


@dataclass
class EvalConfig:
    split: str = "test"
    max_dialogues: int = 0  # 0: all
    max_new_tokens: int = 8
    # `mmdialog demo`: the whole run's wall-clock budget in minutes (world, training, evaluation). Training gets
    # what the world and the evaluation (timed on a few dialogues before training) leave, at most
    # train.max_minutes, so a slower CPU trains less instead of running over. 0: no budget.
    demo_minutes: float = 0.0


def _default_objectives() -> dict[str, float]:
    return {"contrastive": 1.0, "matching": 0.5, "masked": 0.5, "captioning": 1.0, "qa": 1.0}


@dataclass
class PretrainConfig:
    """`mmdialog pretrain`: a weighted mixture of objectives on paired data (mmdialog/pretrain/, objectives/).

    The loss of a step is sum(weight * objective) over `objectives` (a weight of 0 or a missing name: off).
    Pairs come from `pairs_file` (JSONL {"image": path, "text": caption}, optionally "question"/"answer"),
    else from the world of the `world` section (its train split; its val split is held out for evaluation).
    """

    objectives: dict[str, float] = field(default_factory=_default_objectives)  # contrastive matching masked captioning qa
    pairs_file: str = ""  # JSONL of {"image"|"audio"|"video": path, "text": caption[, "question", "answer"]}
    eval_file: str = ""  # the same format, held out for evaluation; empty: the world's val split (or none)
    media_root: str = ""  # media paths in pairs_file are relative to it; empty: the file's directory
    world_captions: str = "scene"  # world pairs: scene (every object, from the scene metadata) | round (round 0)
    text_tower: str = "decoder"  # text embeddings: decoder (its state at the text's last token) | bert
    text_encoder: dict[str, Any] = field(default_factory=lambda: {"name": "bert", "dim": 128, "depth": 2, "heads": 4})
    embed_dim: int = 64  # the shared media-text space of contrastive learning
    temperature: float = 0.07  # initial InfoNCE temperature; learned (kept within [0.01, 1])
    hard_negatives: str = "hardest"  # matching negatives: hardest (most similar non-match) | sample (softmax of sims)
    mask_prob: float = 0.15  # masked LM: share of caption tokens masked
    qa_head: bool = False  # also train a classification head over the closed set of training answers
    eval_pairs: int = 200  # held-out pairs for retrieval, captioning and QA metrics (0: skip the evaluation)
    max_caption_tokens: int = 64  # longest generated caption in the evaluation


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
