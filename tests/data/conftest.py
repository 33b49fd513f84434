import pytest

from mmdialog.data.tokenizer import ChatTokenizer

TEXTS = [
    "Describe the picture.", "There are 5 shapes. One is a large red circle at the top left.",
    "How many red things are there?", "What colour is it?", "Is there a green triangle?", "yes", "no",
    "What about blue ones?", "How many of them are large?", "Let's call the small square Max.", "OK.",
] + [str(i) for i in range(10)]


@pytest.fixture(scope="session")
def tokenizer():
    return ChatTokenizer.train(TEXTS * 20, vocab_size=300)
