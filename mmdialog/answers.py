"""The normal form two short answers are compared in: exact match after case, surrounding space and a final full
stop ("Yes." == "yes"). The world's scoring, the answer-vocabulary head of pretraining and the lab use it; the
looser matching of dataset files (number words, any final punctuation, token F1) is eval/matching.py."""


def normalise(answer: str) -> str:
    return answer.strip().lower().rstrip(".").strip()
