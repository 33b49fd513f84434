"""The modality table, and that the tokenizer, processor, collator, model and formats read the same names from it."""

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from mmdialog import modalities
from mmdialog.data import conversation, processor, tokenizer as tokenizer_mod
from mmdialog.data.collate import Collator
from mmdialog.data.conversation import Audio, Conversation, Image, Text, Video
from mmdialog.data.formats import common, sharegpt
from mmdialog.data.worlds.shapes import media_io
from mmdialog.errors import MMDialogError
from mmdialog.modalities import BATCH_KEYS, MODALITIES, NAMES, by_key, by_name, by_part
from mmdialog.model import MultimodalLM
from tests.test_model import av_model, gif, wav_bytes

TABLE = [  # name, key, placeholder, tag, part, transform, noun
    ("image", "images", "<|image|>", "<image>", "Image", "ImageTransform", "image(s)"),
    ("audio", "audios", "<|audio|>", "<audio>", "Audio", "AudioTransform", "audio clip(s)"),
    ("video", "videos", "<|video|>", "<video>", "Video", "VideoTransform", "video(s)"),
]


def test_each_entry():
    assert [dataclasses.astuple(m) for m in MODALITIES] == TABLE
    assert NAMES == ("image", "audio", "video") and BATCH_KEYS == ("images", "audios", "videos")
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODALITIES[0].key = "pictures"


def test_lookups_by_name_key_and_part():
    for m, part in zip(MODALITIES, (Image(path="a.png"), Audio(path="a.wav"), Video(path="a.gif"))):
        assert by_name(m.name) is m and by_key(m.key) is m
        assert by_part(part) is m and by_part(type(part)) is m
    with pytest.raises(MMDialogError, match="unknown modality 'text'; mmdialog has image, audio, video"):
        by_name("text")
    with pytest.raises(MMDialogError, match="unknown media batch key 'image'"):
        by_key("image")
    with pytest.raises(MMDialogError, match="Text is not a media part"):
        by_part(Text("hi"))
    with pytest.raises(MMDialogError, match="Image is not a media part"):  # PIL's Image is not ours
        by_part(PILImage.new("RGB", (2, 2)))


def test_part_classes_and_transforms_resolve_from_the_table():
    for m in MODALITIES:
        cls = conversation.MEDIA_PARTS[m.name]
        assert cls.__name__ == m.part and cls.__module__ == modalities.PART_MODULE
        assert cls().type == m.name  # a part's type is its modality's name
        assert processor.TRANSFORMS[m.name].__name__ == m.transform
    assert list(conversation.MEDIA_PARTS) == list(processor.TRANSFORMS) == list(NAMES)


def test_tokenizer_placeholders(tokenizer):
    assert tokenizer_mod.MEDIA_TOKENS == {m.name: m.placeholder for m in MODALITIES}
    assert tokenizer_mod.SPECIAL_TOKENS[-len(MODALITIES):] == [m.placeholder for m in MODALITIES]
    assert list(tokenizer.media_ids) == list(NAMES)
    conv = Conversation().add("user", Image(path="a.png"), Audio(path="a.wav"), Video(path="a.gif"), "hi")
    assert tokenizer.render(conv) == "<|user|><|image|><|audio|><|video|>hi<|end|>"  # the template: <|{part.type}|>


def test_model_arguments_are_the_batch_keys():
    assert tuple(inspect.signature(MultimodalLM.encode_media).parameters)[1:] == BATCH_KEYS
    assert set(BATCH_KEYS) <= set(inspect.signature(MultimodalLM.forward).parameters)
    fields = {f.name for f in dataclasses.fields(processor.Example)}
    assert set(BATCH_KEYS) <= fields


def test_processor_collator_and_model_agree_with_the_table(tokenizer, tmp_path):
    model, proc = av_model(tokenizer)
    for m in MODALITIES:
        assert isinstance(proc.media[m.name].transform, processor.TRANSFORMS[m.name])
    conv = Conversation().add("user", Image(pixels=np.zeros((16, 16, 3), np.uint8)),
                              Audio(data=wav_bytes(0.2, 8000)), Video(path=gif(tmp_path / "a.gif", 5)), "hi")
    conv.add("assistant", "ok")
    ex = proc(conv)
    assert proc.counts(conv) == {n: 1 for n in NAMES}
    batch = Collator(tokenizer.pad_id)([ex, proc(Conversation().add("user", "hi").add("assistant", "ok"))])
    assert [k for k in batch if k not in ("input_ids", "attention_mask", "labels")] == list(BATCH_KEYS)
    assert [batch[k].shape[0] for k in BATCH_KEYS] == [1, 1, 1]
    assert set(model.encode_media(**{k: batch[k] for k in BATCH_KEYS})) == set(NAMES)
    assert model(**batch).loss is not None


def test_processor_count_errors_use_the_table(tokenizer):
    _, proc = av_model(tokenizer)
    ids = proc.token_ids(Conversation().add("user", "hi").add("assistant", "ok"))
    with pytest.raises(MMDialogError, match=r"holds 0 <\|audio\|> placeholder\(s\) but 2 audio clip\(s\) were given"):
        proc.expand(ids, {"audio": 2})


def test_formats_and_the_world_read_the_table():
    assert common.TAGS == {m.name: m.tag for m in MODALITIES}
    assert sharegpt.LISTS == {m.name: m.key for m in MODALITIES}
    assert list(sharegpt.LISTS) == ["image", "video", "audio"]  # the layout's order, kept in written records
    assert media_io.TAGS == common.TAGS and media_io.LISTS == {m.name: m.key for m in MODALITIES}
    assert common.count_tags(["<image><audio>x<video><image>", "<text>"], NAMES) == {"image": 2, "audio": 1, "video": 1}
    assert common.media_part("video", "a.gif") == Video(path="a.gif")


def test_encode_media_error_names_the_batch_key(tokenizer):
    model, _ = av_model(tokenizer)
    del model.encoders["audio"]
    with pytest.raises(MMDialogError, match="audios given but the model has no audio encoder"):
        model.encode_media(audios=torch.zeros(1, 4000))
