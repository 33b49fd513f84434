import pytest

from mmdialog.data.worlds.shapes import generate_world, load_split


@pytest.fixture(scope="session")
def world32(tmp_path_factory):
    """A small world of 32x32 images (the tiny model's size) with held-out splits; (directory, 6 records)."""
    out = tmp_path_factory.mktemp("world32")
    generate_world(out, dialogues=30, seed=1, image_size=32, progress=False, held_out="all", held_out_dialogues=2)
    return out, load_split(out, "train")[:6]
