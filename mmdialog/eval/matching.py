"""Is a reply right? Answer matching for free-form data, and token-level F1.

    exact       the reply equals the gold reply, character for character (surrounding whitespace aside)
    normalised  equal after `canonical`: lower case, inner whitespace collapsed, surrounding whitespace and
                final punctuation dropped, number words written as digits ("Two." == "2", "twenty one" == "21")
    contains    the canonical gold reply appears in the canonical reply as whole words ("there are 2" holds "2")

Token F1 (SQuAD's): the harmonic mean of precision and recall of the canonical replies' words (punctuation
stripped from each word), as multisets; 1.0 when both are empty.

The world's own verdict (`multiturn.normalise`: lower case, a final period) is kept for the world's metrics.
"""

from __future__ import annotations

import re
from collections import Counter

from mmdialog.errors import MMDialogError

MATCHES = ("exact", "normalised", "contains")

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_FINAL = ".,!?;:。！？"


def _numbers(words: list[str]) -> list[str]:
    """Number words as digits: 'twenty one' / 'twenty-one' -> '21', 'seven' -> '7', 'a hundred' stays."""
    out, i = [], 0
    while i < len(words):
        w = words[i]
        parts = w.split("-")
        if len(parts) == 2 and parts[0] in _TENS and parts[1] in _UNITS and 0 < _UNITS[parts[1]] < 10:
            out.append(str(_TENS[parts[0]] + _UNITS[parts[1]]))
        elif w in _TENS:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt in _UNITS and 0 < _UNITS[nxt] < 10:
                out.append(str(_TENS[w] + _UNITS[nxt]))
                i += 1
            else:
                out.append(str(_TENS[w]))
        elif w in _UNITS:
            out.append(str(_UNITS[w]))
        else:
            out.append(w)
        i += 1
    return out


def canonical(text: str) -> str:
    """Lower case, whitespace collapsed, final punctuation dropped, number words as digits."""
    text = " ".join(text.lower().split()).rstrip(_FINAL).strip()
    words = [w.rstrip(_FINAL) or w for w in text.split()]
    return " ".join(_numbers(words))


def _tokens(text: str) -> list[str]:
    return [t for t in (re.sub(r"^\W+|\W+$", "", w) for w in canonical(text).split()) if t]


def token_f1(pred: str, gold: str) -> float:
    p, g = _tokens(pred), _tokens(gold)
    if not p and not g:
        return 1.0
    common = sum((Counter(p) & Counter(g)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def check_match(mode: str) -> str:
    if mode not in MATCHES:
        raise MMDialogError(f"answer matching must be one of {', '.join(MATCHES)}, got {mode!r}")
    return mode


def matches(pred: str, gold: str, mode: str = "normalised") -> bool:
    if mode == "exact":
        return pred.strip() == gold.strip()
    if mode == "normalised":
        return canonical(pred) == canonical(gold)
    if mode == "contains":
        g = canonical(gold)
        return bool(re.search(r"(^|\s)" + re.escape(g) + r"($|\s)", canonical(pred))) if g else not canonical(pred)
    raise MMDialogError(f"answer matching must be one of {', '.join(MATCHES)}, got {mode!r}")
