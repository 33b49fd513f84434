import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from mmdialog.data.collate import Collator
from mmdialog.data.conversation import Conversation, Image
from mmdialog.data.processor import IGNORE_INDEX, Processor, sample_frames
from mmdialog.errors import MMDialogError


@pytest.fixture
def processor(tokenizer):
    return Processor(tokenizer, image_size=32, image_tokens=4, max_length=256)


def img(value=100):
    return Image(pixels=np.full((32, 32, 3), value, dtype=np.uint8))


def test_labels_cover_exactly_the_assistant_replies(processor, tokenizer):
    conv = Conversation().add("user", img(), "How many red things are there?").add("assistant", "2")
    conv.add("user", "What about blue ones?").add("assistant", "0")
    ex = processor(conv)
    ids, labels = ex.input_ids.tolist(), ex.labels.tolist()
    supervised = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert tokenizer.decode(supervised, skip_special=False) == "2<|end|>0<|end|>"
    assert all(l == i for i, l in zip(ids, labels) if l != IGNORE_INDEX)


def test_placeholder_expanded_to_encoder_token_count(processor, tokenizer):
    conv = Conversation().add("user", img(), "Describe the picture.").add("assistant", "OK.")
    conv.add("user", img(200), "Is there a green triangle?")
    ex = processor(conv, add_generation_prompt=True)
    assert ex.input_ids.tolist().count(tokenizer.media_ids["image"]) == 2 * 4
    assert ex.images.shape == (2, 3, 32, 32)
    assert ex.images.min() >= -1 and ex.images.max() <= 1
    assert ex.labels[-1] == IGNORE_INDEX  # the open assistant header is not a target


def test_placeholder_count_mismatch_names_both_numbers(processor, tokenizer):
    ids = tokenizer.encode("<|user|>look <|image|> here<|end|>")  # template text: the placeholder is a token
    with pytest.raises(MMDialogError, match=r"1 <\|image\|> placeholder\(s\) but 0 image"):
        processor.expand(ids, {"image": 0})
    # a conversation's text that spells the placeholder holds no placeholder: only the template places them
    conv = Conversation().add("user", "look <|image|> here").add("assistant", "ok")
    assert tokenizer.media_ids["image"] not in processor(conv).input_ids.tolist()


def test_images_are_resized_and_unreadable_files_named(processor, tmp_path):
    p = tmp_path / "big.png"
    PILImage.fromarray(np.zeros((50, 70, 3), dtype=np.uint8)).save(p)
    conv = Conversation().add("user", Image(path=str(p)), "Describe the picture.")
    assert processor(conv).images.shape == (1, 3, 32, 32)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MMDialogError, match="broken.png"):
        processor(Conversation().add("user", Image(path=str(bad)), "hi"))


def test_too_long_is_an_error_with_numbers(tokenizer):
    proc = Processor(tokenizer, image_size=32, image_tokens=4, max_length=10)
    conv = Conversation().add("user", "How many red things are there? " * 5)
    with pytest.raises(MMDialogError, match=r"tokens exceed max_length 10"):
        proc(conv)


def test_collator_pads_and_documents_keys(processor, tokenizer):
    a = processor(Conversation().add("user", img(), "Describe the picture.").add("assistant", "yes"))
    b = processor(Conversation().add("user", "Is there a green triangle?").add("assistant", "no"))
    batch = Collator(tokenizer.pad_id)([a, b])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "images"}
    T = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, T)
    assert batch["attention_mask"].sum(1).tolist() == [len(a.input_ids), len(b.input_ids)]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert batch["images"].shape == (1, 3, 32, 32)
    assert torch.equal(batch["input_ids"][1, : len(b.input_ids)], b.input_ids)


def test_frame_sampler_keeps_the_budget_and_spreads_evenly():
    assert sample_frames(8, 4) == [1, 3, 5, 7]
    assert sample_frames(4, 4) == [0, 1, 2, 3]
    assert sample_frames(100, 3) == [16, 50, 83]
    with pytest.raises(MMDialogError, match="clip.npy has 3 frame.*fewer than the 4"):
        sample_frames(3, 4, where="clip.npy")
