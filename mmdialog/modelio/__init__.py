"""Model I/O: everything that puts a model on disk or reads one back. It sits below train/, chat/, serve/ and
eval/, which all load models through it (`from mmdialog.modelio import load_any`).

    checkpoint.py  the checkpoint (model.safetensors, config.yaml, tokenizer, meta.json): save_checkpoint,
                   load_checkpoint, Loaded (model, processor, tokenizer, config, meta); world_meta,
                   locate_world and world_of, the world a checkpoint names
    hf_export.py   `mmdialog export` (the Hugging Face layout, sharded safetensors, the decoder for transformers
                   and peft), load_export, and load_any (an export or a checkpoint, whichever a path holds)
    atomic.py      atomic_directory: written beside its place, then renamed into it (both writers use it)
"""

from mmdialog.modelio.atomic import atomic_directory
from mmdialog.modelio.checkpoint import Loaded, load_checkpoint, locate_world, save_checkpoint, world_meta, world_of
from mmdialog.modelio.hf_export import export, is_export, load_any, load_export

__all__ = ["Loaded", "atomic_directory", "export", "is_export", "load_any", "load_checkpoint", "load_export",
           "locate_world", "save_checkpoint", "world_meta", "world_of"]
