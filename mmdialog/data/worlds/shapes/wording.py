"""How people ask: the wordings of the world's questions, the surface forms people type, and the few turns
that are not about the picture.

A world generated with phrasing="ordinary" (the default) asks each question (the caption too) in one of
its wordings (`wordings`: the canonical question_text, the training paraphrases, and for "it" questions
short follow-ups like "And its size?"), then types it the way people do (`ordinary`): US or UK spelling
(color / colour), synonyms (objects / items / things, big / large, little / small), lower case, no final
question mark. `canonical` undoes the surface forms, so a checker compares wordings modulo them.

The held-out test_paraphrase wordings (heldout.paraphrases) are never among `wordings` (a test proves it),
so that split stays a measurement of wordings never trained on.

Picture questions also come as "Can you ...?" and "Do we ...?": with the off-topic chat turns ("Can you write me a
poem?") as the only such questions, a model learns that "Can you ..." is refused whatever follows.

The few turns that are not about the picture (greetings, "what can you do?", thanks, off-topic requests,
each with a short honest answer) are dialogue.CHAT; the generator drops one into some dialogues (op "chat").
"""

from __future__ import annotations

import re

from mmdialog.data.worlds.shapes.dialogue import CAPTION_WORDINGS, CHAT, phrase, plural, question_text

PHRASINGS = ("ordinary", "canonical")

# canonical word -> what people also type
SYNONYMS = {"colour": ("color",), "things": ("objects", "items", "shapes"), "thing": ("object", "item"),
            "large": ("big",), "small": ("little",)}
_BACK = {v: k for k, vs in SYNONYMS.items() for v in vs}
_WORD = re.compile(r"[A-Za-z']+")

def _attr(attr: str, subject: str) -> list[str]:
    if attr == "position":
        return [f"Whereabouts is {subject}?", f"Where is {subject} located?", f"Where is {subject} placed?",
                f"Which position does {subject} have?"]
    if subject == "it":
        return [f"Which {attr} does it have?", f"Say which {attr} it has.", f"What {attr} does it have?",
                f"And what {attr} is it?"]
    return [f"Which {attr} does {subject} have?", f"Say which {attr} {subject} has.",
            f"What {attr} does {subject} have?", f"Which {attr} is {subject}?",
            f"Can you say which {attr} {subject} has?"]


def train_paraphrases(program: dict, ref: str) -> list[str]:
    """The training wordings of a round: never question_text's, never heldout.paraphrases' (test_paraphrase)."""
    op = program["op"]
    if op == "caption":
        return list(CAPTION_WORDINGS[1:])
    if op == "chat":
        return [q for q in CHAT[program["kind"]][0] if q != program["text"]]
    if op == "count":
        f = program["filter"]
        if ref == "ellipsis":
            a = program["swapped"]
            what = f"{f[a]}s" if a == "shape" else f"{f[a]} ones"
            return [f"Same question for {what}.", f"Then what is the count for {what}?", f"And for {what}?",
                    f"And how many {what}?"]
        if ref == "group":
            a = program["added"]
            what = f[a] + "s" if a == "shape" else f[a]
            return [f"Among them, how many are {what}?", f"What number of them are {what}?",
                    f"And how many of them are {what}?", f"Out of them, how many are {what}?"]
        return [f"What is the number of {plural(f)}?", f"Tell me how many {plural(f)} there are.",
                f"How many {plural(f)} are in the picture?", f"How many {plural(f)} are shown?",
                f"Number of {plural(f)}?", f"Can you tell me how many {plural(f)} there are?"]
    if op == "exist":
        what = phrase(program["filter"])
        return [f"Does the picture contain a {what}?", f"Is a {what} present?", f"Is there any {what}?",
                f"Are there any {plural(program['filter'])}?", f"Is there a {what} in the picture?",
                f"Does the image have a {what}?", f"Can you spot a {what}?", f"Do we have a {what} here?"]
    if op == "query":
        attr = program["attr"]
        if ref == "pronoun":
            return _attr(attr, "it")
        if ref == "ellipsis":
            what = phrase(program["desc"])
            return [f"Same question for the {what}.", f"The same for the {what}?", f"And what about the {what}?",
                    f"Now the {what}?"]
        if ref == "far":
            return _attr(attr, f"the {phrase(program['desc'])} from earlier")
        if ref == "name":
            return _attr(attr, program["name"])
        return _attr(attr, f"the {phrase(program['desc'])}")
    if op == "name":
        what, name = phrase(program["desc"]), program["name"]
        return [f"From now on the {what} is {name}.", f"We will refer to the {what} as {name}.",
                f"Call the {what} {name}.", f"I want to call the {what} {name}."]
    if op == "recall":
        what = phrase(program["desc"])
        return [f"Which name does the {what} have?", f"Remind me what we named the {what}.",
                f"What was the name of the {what}?", f"Do you remember what we called the {what}?"]
    raise ValueError(f"unknown program op {op!r}")


def follow_ups(program: dict, ref: str) -> list[str]:
    """Short follow-ups people type about the object just discussed: "And its size?", "Colour?"."""
    if program["op"] != "query" or ref != "pronoun":
        return []
    attr = program["attr"]
    if attr == "position":
        return ["And where is it?", "Where?"]
    return [f"And its {attr}?", f"Its {attr}?", f"{attr.capitalize()}?"]


def wordings(program: dict, ref: str) -> list[str]:
    """Every wording a world question of this program may take (before its surface form)."""
    if program["op"] == "caption":
        return list(CAPTION_WORDINGS)
    if program["op"] == "chat":
        return list(CHAT[program["kind"]][0])
    return [question_text(program, ref), *train_paraphrases(program, ref), *follow_ups(program, ref)]


def canonical(text: str) -> str:
    """The text with its surface form undone: lower case, synonyms to the world's words, no final
    punctuation, single spaces."""
    words = _WORD.sub(lambda m: _BACK.get(m.group(0).lower(), m.group(0).lower()), text.strip())
    return re.sub(r"\s+", " ", words).rstrip(" ?.!")


def is_wording(text: str, program: dict, ref: str) -> bool:
    return canonical(text) in {canonical(w) for w in wordings(program, ref)}


def ordinary(program: dict, ref: str, draws) -> str:
    """A question as a person might type it: a wording (the canonical one half of the time), then synonyms,
    spelling, case and punctuation drawn independently."""
    if program["op"] == "chat":
        text = program["text"]
    else:
        options = wordings(program, ref)
        text = options[0] if draws.random() < 0.5 else options[1 + draws.below(len(options) - 1)]

    def swap(m):
        w = m.group(0)
        alts = SYNONYMS.get(w.lower())
        if alts and draws.random() < (0.5 if w.lower() == "colour" else 0.3):
            alt = draws.choice(alts)
            return alt.capitalize() if w[0].isupper() else alt
        return w

    text = _WORD.sub(swap, text)
    u = draws.random()
    if u < 0.2:
        text = text.lower()
    elif u < 0.23:
        text = text.upper()
    if draws.random() < 0.25:
        text = text.rstrip("?.!")
    return text
