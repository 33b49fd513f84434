from mmdialog.data.conversation import Conversation, Image
from mmdialog.data.tokenizer import ChatTokenizer


def dialogue() -> Conversation:
    conv = Conversation()
    conv.add("user", Image(path="a.png"), "Describe the picture.")
    conv.add("assistant", "There are 5 shapes. One is a large red circle at the top left.")
    for q, a in [("How many red things are there?", "2"), ("What about blue ones?", "0"),
                 ("Let's call the small square Max.", "OK."), ("What colour is it?", "green")]:
        conv.add("user", q)
        conv.add("assistant", a)
    conv.add("user", Image(path="b.png"), "Is there a green triangle?")
    conv.add("assistant", "yes")
    return conv


def test_rendering_of_turns_is_a_prefix_of_the_next(tokenizer):
    conv = dialogue()
    for n in range(1, len(conv.turns)):
        short, long = conv.prefix(n), conv.prefix(n + 1)
        s, l = tokenizer.render(short), tokenizer.render(long)
        assert l.startswith(s) and len(l) > len(s)
        ids_s, ids_l = tokenizer.encode(s), tokenizer.encode(l)
        assert ids_l[: len(ids_s)] == ids_s
        # the generation prompt is a prefix of the next assistant turn too
        if conv.turns[n].role == "assistant":
            gp = tokenizer.encode(tokenizer.render(short, add_generation_prompt=True))
            assert ids_l[: len(gp)] == gp


def test_special_tokens_are_single_ids_and_roundtrip(tokenizer):
    conv = dialogue().prefix(2)
    text = tokenizer.render(conv)
    assert text.startswith("<|user|><|image|>Describe the picture.<|end|><|assistant|>")
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.role_ids["user"] and ids[1] == tokenizer.media_ids["image"]
    assert tokenizer.decode(ids, skip_special=False) == text
    assert ids.count(tokenizer.end_id) == 2


def test_save_load(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    again = ChatTokenizer.load(tmp_path)
    text = tokenizer.render(dialogue())
    assert again.encode(text) == tokenizer.encode(text)
    assert again.end_id == tokenizer.end_id and again.vocab_size == tokenizer.vocab_size
