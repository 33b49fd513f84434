"""The built-in shapes world: seeded scenes of 2D shapes, rendered images, and
multi-round dialogues whose every answer (and dependency distance) is known.

    from mmdialog.data.worlds.shapes import generate_world, load_split, record_to_conversation
    generate_world("world", dialogues=1000, seed=0)
    conv = record_to_conversation(load_split("world", "test")[0], "world")

The file format is described in docs/world.md. Media dialogues (clips, beeps, second
pictures in later turns; opt-in: `generate_world(..., modalities=("image", "audio", "video"))`) are in
media.py (words), media_dialogue.py (the families put together: media_state.py, media_clips.py,
media_beeps.py, media_pictures.py), media_io.py (files) and media_check.py (proof of every round).
"""

from mmdialog.data.worlds.shapes.check import check_record
from mmdialog.data.worlds.shapes.dialogue import generate_dialogue
from mmdialog.data.worlds.shapes.heldout import HELDOUT_SPLITS, heldout_pairs, paraphrases, touches_pairs
from mmdialog.data.worlds.shapes.io import (
    SPLITS, generate_world, heldout_info, load_split, make_dialogue, record_to_conversation, summarize,
    validate_record, world_settings, write_split,
)
from mmdialog.data.worlds.shapes.media_check import check_media_record
from mmdialog.data.worlds.shapes.media_io import (
    generate_media, load_media_split, make_media_dialogue, media_conversation, parse_modalities,
)
from mmdialog.data.worlds.shapes.render import render
from mmdialog.data.worlds.shapes.scene import Scene, sample_scene

__all__ = [
    "HELDOUT_SPLITS", "SPLITS", "Scene", "check_media_record", "check_record", "generate_dialogue", "generate_media",
    "generate_world", "heldout_info", "heldout_pairs", "load_media_split", "load_split", "make_dialogue",
    "make_media_dialogue", "media_conversation", "paraphrases", "parse_modalities", "record_to_conversation",
    "render", "sample_scene", "summarize", "touches_pairs", "validate_record", "world_settings", "write_split",
]
