"""Typed configs: dataclasses loaded from YAML, with `a.b=c` overrides from the command line.

Unknown keys are errors that name the key and the keys that do exist.

schema.py: the dataclasses (one per section). loader.py: YAML and mappings in, mappings and YAML out, overrides.
builder.py: build_part, a registered part from a config mapping checked against its signature.
"""

from mmdialog.config.builder import build_part
from mmdialog.config.loader import (
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)
from mmdialog.config.schema import (
    AugmentConfig,
    Config,
    DataConfig,
    DecoderConfig,
    EvalConfig,
    FusionConfig,
    ImageEncoderConfig,
    LoraConfig,
    ModelConfig,
    PretrainConfig,
    StageConfig,
    TokenizerConfig,
    TrainConfig,
    WorldConfig,
)

__all__ = [
    "AugmentConfig", "Config", "DataConfig", "DecoderConfig", "EvalConfig", "FusionConfig", "ImageEncoderConfig",
    "LoraConfig", "ModelConfig", "PretrainConfig", "StageConfig", "TokenizerConfig", "TrainConfig", "WorldConfig",
    "apply_overrides", "build_part", "config_from_dict", "load_config", "parse_override", "save_config", "to_dict",
]
