import numpy as np
import pytest

from mmdialog.data.conversation import Conversation, Image, Text, Turn
from mmdialog.errors import MMDialogError


def test_dict_roundtrip_resolves_relative_image_paths(tmp_path):
    conv = Conversation(meta={"id": "d1"}).add("user", Image(path="images/a.png"), "How many?").add("assistant", "2")
    again = Conversation.from_dict(conv.to_dict(), root=tmp_path)
    assert [t.role for t in again.turns] == ["user", "assistant"]
    assert again.turns[0].parts[0].path == str(tmp_path / "images/a.png")
    assert again.turns[0].text == "How many?" and again.meta == {"id": "d1"}


def test_bad_dicts_and_roles_are_named():
    with pytest.raises(MMDialogError, match="missing field 'parts'"):
        Conversation.from_dict({"turns": [{"role": "user"}]})
    with pytest.raises(MMDialogError, match="turn 0 part 0 has unknown type 'smell'"):
        Conversation.from_dict({"turns": [{"role": "user", "parts": [{"type": "smell"}]}]})
    with pytest.raises(MMDialogError, match="role must be one of"):
        Turn("robot", [Text("hi")])


def test_image_hash_depends_on_pixels():
    a = Image(pixels=np.zeros((4, 4, 3), np.uint8))
    b = Image(pixels=np.zeros((4, 4, 3), np.uint8))
    c = Image(pixels=np.ones((4, 4, 3), np.uint8))
    assert a.content_hash() == b.content_hash() != c.content_hash()
    with pytest.raises(MMDialogError, match="image file not found"):
        Image(path="/no/such.png").load()
