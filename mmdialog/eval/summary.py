"""The human-readable side of `mmdialog eval`: a markdown summary of metrics.json.

Every table reads the same nested metrics; with several runs (checkpoints or --seeds) each cell is
"mean ± std" over the runs.
"""

from __future__ import annotations

from mmdialog.eval.multiturn import FINE_BUCKETS

ABLATION_ORDER = ("no_history", "last_1", "last_2", "last_4", "shuffled_history", "no_media")


def get(m: dict | None, *path):
    for k in path:
        if not isinstance(m, dict) or k not in m:
            return None
        m = m[k]
    return m


class Cells:
    """Formats the value at a path of the metrics, with its std when the metrics are a mean over runs."""

    def __init__(self, metrics: dict, std: dict | None = None):
        self.m, self.s = metrics, std

    def __call__(self, *path, signed: bool = False, digits: int = 3) -> str:
        v = get(self.m, *path)
        if v is None:
            return "-"
        text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
        sd = get(self.s, *path) if self.s is not None else None
        return f"{text} ± {sd:.{digits}f}" if sd is not None else text

    def count(self, *path) -> str:
        v = get(self.m, *path)
        return "-" if v is None else f"{v:.0f}" if self.s is None else f"{v:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def lab_markdown(metrics: dict, *, title: str, std: dict | None = None, figures: list[str] = (),
                 runs: list[str] = ()) -> str:
    c = Cells(metrics, std)
    out = _intro(metrics, c, title, runs)
    out += _gold_history_section(metrics, c)
    if "own_history" in metrics.get("modes", {}):
        out += _own_history_section(metrics, c)
    else:
        out += _dialogue_level_section(c)
    out += ["Normalised first failed round: the first wrong round / (rounds + 1), 1.0 when none fails.", ""]
    out += _ablations_section(metrics, c)
    out += _ranking_section(metrics, c)
    out += _heldout_section(metrics, c)
    out += _closing(metrics, figures)
    return "\n".join(out) + "\n"


def _intro(metrics: dict, c: Cells, title: str, runs: list[str]) -> list[str]:
    out = [f"# {title}", ""]
    ev = metrics.get("eval", {})
    if runs:
        out += [f"Mean ± standard deviation over {len(runs)} runs: {', '.join(runs)}.", ""]
    out += [f"{c.count('counts', 'overall')} questions in {c.count('counts', 'dialogues')} dialogues; greedy exact "
            f"match (answers compared after lower-casing and dropping a final period). Gold history: "
            f"{'teacher forced, one batched forward pass' if ev.get('gold_method') == 'teacher_forced' else 'generated'}.", ""]
    return out


def _breakdown_table(c: Cells, label: str, key: str, names) -> list[str]:
    """One column per value of the breakdown `key` (by_round, by_family, by_ref): its accuracy and count."""
    return _table([label] + list(names), [["accuracy"] + [c("accuracy", key, k) for k in names],
                                          ["n"] + [c.count("counts", key, k) for k in names]])


def _gold_history_section(metrics: dict, c: Cells) -> list[str]:
    gold = get(metrics, "modes", "gold_history") or {"accuracy": metrics["accuracy"], "counts": metrics["counts"]}
    out = ["## Accuracy with the gold history", ""]
    rows = [["overall", c("accuracy", "overall"), c.count("counts", "overall")]]
    rows += [[f"distance {b}", c("accuracy", "by_distance_fine", b), c.count("counts", "by_distance_fine", b)]
             for b in FINE_BUCKETS]
    out += _table(["questions", "accuracy", "n"], rows)
    out += _breakdown_table(c, "round", "by_round", gold["accuracy"].get("by_round", {}))
    out += _breakdown_table(c, "family", "by_family", gold["accuracy"].get("by_family", {}))
    out += _breakdown_table(c, "reference", "by_ref", gold["accuracy"].get("by_ref", {}))
    return out


def _dialogue_level_section(c: Cells) -> list[str]:
    """The gold history's dialogue-level figures, where there is no own-history run to set beside them."""
    return ["## Dialogue level (gold history)", ""] + _table(
        ["", "value"], [["dialogues fully right", c("accuracy", "dialogues_fully_right")],
                        ["first failed round (normalised)", c("accuracy", "first_failed_round")]])


def _own_history_section(metrics: dict, c: Cells) -> list[str]:
    """Gold history vs the model's own answers on the same dialogues, and the gap."""
    out = ["## Gold history vs the model's own answers", "",
           f"On the first {c.count('gap', 'dialogues')} dialogues: `own_history` is a real chat (the model's "
           "own earlier replies, captions included, stay in the context); the gap is gold minus own.", ""]
    g, o = ("modes", "gold_history_same_dialogues"), ("modes", "own_history")
    rows = [["overall", c(*g, "accuracy", "overall"), c(*o, "accuracy", "overall"), c("gap", "overall", signed=True)]]
    rows += [[f"distance {b}", c(*g, "accuracy", "by_distance_fine", b), c(*o, "accuracy", "by_distance_fine", b),
              c("gap", "by_distance_fine", b, signed=True)] for b in FINE_BUCKETS]
    rows += [["dialogues fully right", c(*g, "accuracy", "dialogues_fully_right"),
              c(*o, "accuracy", "dialogues_fully_right"), c("gap", "dialogues_fully_right", signed=True)],
             ["first failed round (normalised)", c(*g, "accuracy", "first_failed_round"),
              c(*o, "accuracy", "first_failed_round"), c("gap", "first_failed_round", signed=True)]]
    out += _table(["", "gold history", "own history", "gap"], rows)
    if metrics.get("own_history_scripted"):
        sc = "own_history_scripted"
        out += [f"Follow-ups are judged on the conversation as it happened: {c.count(sc, 'rejudged')} question(s) "
                "refer back to the object the model's own caption named where the world's caption named another "
                f"one ({c.count(sc, 'rejudged_correct')} answered right about the model's object). Judged on the "
                f"world's scripted answers throughout, own history is {c(sc, 'overall')} "
                f"(gap {c(sc, 'gap', signed=True)}).", ""]
    return out


def _ablations_section(metrics: dict, c: Cells) -> list[str]:
    abl = metrics.get("ablations") or {}
    if not abl:
        return []
    out = ["## Ablations", "",
           "Accuracy when the question is put with less or altered context (teacher forced). `no_history`: "
           "the image and the question only; `last_n`: the image and the last n rounds; `shuffled_history`: "
           "every earlier round in a random order; `no_media`: the gold history without the image.", ""]
    names = [n for n in ABLATION_ORDER if n in abl] + [n for n in abl if n not in ABLATION_ORDER]
    g = ("modes", "gold_history_ablation_dialogues") if get(metrics, "modes", "gold_history_ablation_dialogues") else ()
    if g:
        out += [f"On the first {c.count('eval', 'ablation_dialogues')} dialogues (the gold row is theirs).", ""]
    rows = [["gold_history", c(*g, "accuracy", "overall")]
            + [c(*g, "accuracy", "by_distance_fine", b) for b in FINE_BUCKETS]]
    rows += [[n, c("ablations", n, "accuracy", "overall")]
             + [c("ablations", n, "accuracy", "by_distance_fine", b) for b in FINE_BUCKETS] for n in names]
    if "history_gain" in metrics:
        rows += [["**history gain** (gold - no_history)", c("history_gain", "overall", signed=True)]
                 + [c("history_gain", "by_distance_fine", b, signed=True) for b in FINE_BUCKETS]]
    out += _table(["context", "overall"] + [f"d {b}" for b in FINE_BUCKETS], rows)
    return out + ["The history gain should be about 0 at distance 0 (the image answers those) and large beyond.", ""]


def _ranking_section(metrics: dict, c: Cells) -> list[str]:
    if not metrics.get("ranking"):
        return []
    out = ["## Ranking candidate answers by likelihood", "",
           f"{c.count('ranking', 'questions')} questions of {c.count('ranking', 'dialogues')} dialogues, "
           f"{c.count('ranking', 'candidates')} candidates each: every answer of the world as written, with "
           "its first letter's case flipped and with a final period (those three forms of the gold answer are "
           "the acceptable ones for NDCG).", ""]
    return out + _table(["MRR", "R@1", "R@5", "R@10", "mean rank", "NDCG"],
                        [[c("ranking", "mrr"), c("ranking", "r@1"), c("ranking", "r@5"), c("ranking", "r@10"),
                          c("ranking", "mean_rank", digits=2), c("ranking", "ndcg")]])


def _heldout_section(metrics: dict, c: Cells) -> list[str]:
    held = metrics.get("heldout") or {}
    if not held:
        return []
    out = ["## Held-out splits", "", "Gold history, teacher forced; `no_history` beside it gives the history gain.", ""]
    rows = [["main split", c("accuracy", "overall")] + [c("accuracy", "by_distance_fine", b) for b in FINE_BUCKETS]
            + [c.count("counts", "overall")]]
    for name in held:
        rows.append([name, c("heldout", name, "accuracy", "overall")]
                    + [c("heldout", name, "accuracy", "by_distance_fine", b) for b in FINE_BUCKETS]
                    + [c.count("heldout", name, "counts", "overall")])
        if get(metrics, "heldout", name, "no_history") is not None:
            rows.append([f"{name} no_history", c("heldout", name, "no_history", "accuracy", "overall")]
                        + [c("heldout", name, "no_history", "accuracy", "by_distance_fine", b) for b in FINE_BUCKETS]
                        + [""])
    out += _table(["split", "overall"] + [f"d {b}" for b in FINE_BUCKETS] + ["n"], rows)
    for name in held:
        if get(metrics, "heldout", name, "pair_questions") is not None:
            out += [f"`{name}`: questions about a held-out shape-colour pair "
                    f"{c('heldout', name, 'pair_questions', 'accuracy')} (n={c.count('heldout', name, 'pair_questions', 'n')}), "
                    f"other questions {c('heldout', name, 'other_questions', 'accuracy')} "
                    f"(n={c.count('heldout', name, 'other_questions', 'n')}).", ""]
        if get(metrics, "heldout", name, "rounds") is not None:
            out += [f"`{name}`: {c.count('heldout', name, 'rounds')} question rounds per dialogue.", ""]
    return out


def _closing(metrics: dict, figures: list[str]) -> list[str]:
    """Failed dialogues, the time each part of the evaluation took, and the figures."""
    out = []
    if metrics.get("failed_dialogues"):
        out += [f"{len(metrics['failed_dialogues'])} dialogue(s) could not be evaluated (see metrics.json "
                "`failed_dialogues`).", ""]
    secs = metrics.get("eval", {}).get("seconds") or {}
    if secs:
        out += ["## Time", "", ", ".join(f"{k} {v:.1f}s" for k, v in secs.items()) + ".", ""]
    if figures:
        out += ["## Figures", ""] + [f"![{f}]({f})\n" for f in figures]
    return out


# ----------------------------------------------------------------------------- a dataset file's evaluation

def _acc(cell) -> str:
    return "-" if not cell or cell.get("accuracy") is None else f"{cell['accuracy']:.3f}"


def _num(v, signed: bool = False) -> str:
    return "-" if v is None else f"{v:+.3f}" if signed else f"{v:.3f}"


def file_markdown(metrics: dict, *, title: str, figures: list[str] = ()) -> str:
    """summary.md of `mmdialog eval --data FILE` (metrics with "kind": "file")."""
    out = _file_intro(metrics, title) + _file_gap_section(metrics) + _file_breakdown_sections(metrics)
    out += _file_ablations_section(metrics) + _file_ranking_section(metrics) + _file_closing(metrics, figures)
    return "\n".join(out) + "\n"


def _file_intro(metrics: dict, title: str) -> list[str]:
    """The title, what was read and scored, and the invalid records (at most 50 listed)."""
    gold = metrics["gold_history"]
    out = [f"# {title}", "",
           f"`{metrics.get('file')}` ({metrics.get('format')}): {metrics.get('records')} records read, "
           f"{metrics.get('scored_records')} scored, {len(metrics.get('invalid') or [])} invalid; "
           f"{gold['count']} assistant turns scored. Answers matched `{metrics.get('match')}` "
           "(normalised: case, surrounding whitespace, final punctuation, number words as digits); token F1 beside.", ""]
    invalid = metrics.get("invalid") or []
    if invalid:
        out += ["## Invalid records", "", "Counted and left out; every other record is scored.", ""]
        out += _table(["record", "reason"], [[str(i.get("id")), i["reason"].replace("|", "/")] for i in invalid[:50]])
        if len(invalid) > 50:
            out += [f"... and {len(invalid) - 50} more (metrics.json `invalid`).", ""]
    return out


def _file_gap_section(metrics: dict) -> list[str]:
    """Gold history vs own history on the same dialogues, and the gap between them."""
    same = metrics.get("gold_history_same_dialogues") or metrics["gold_history"]
    own = metrics.get("own_history") or {}
    gap = metrics.get("gap") or {}
    out = ["## Gold history vs own history", "",
           "Gold history: each reply generated after the file's own earlier turns. Own history: a real chat, the "
           f"model's earlier replies stay in the context (on {gap.get('dialogues', 0)} dialogues; the gold column "
           "is theirs). The gap is gold minus own.", ""]
    rows = [["accuracy", _num(same["overall"]), _num(own.get("overall")), _num(gap.get("overall"), True)],
            ["token F1", _num(same.get("f1")), _num(own.get("f1")), _num(gap.get("f1"), True)],
            ["dialogues fully right", _num(same["dialogues_fully_right"]),
             _num(own.get("dialogues_fully_right")), _num(gap.get("dialogues_fully_right"), True)],
            ["first failed round (normalised)", _num(same["first_failed_round"]),
             _num(own.get("first_failed_round")), _num(gap.get("first_failed_round"), True)]]
    out += _table(["", "gold history", "own history", "gap"], rows)
    return out + ["First failed round: the first wrong turn / the dialogue's turns, 1.0 when none fails.", ""]


def _file_breakdown_sections(metrics: dict) -> list[str]:
    """Accuracy by round, then by each label of the records: gold history, own history, no_history, counts."""
    out = ["## By round", ""] + _file_split(metrics, "round", "by_round", lambda s: s["by_round"])
    for label in metrics["gold_history"]["by"]:
        numeric = label in (metrics.get("eval", {}).get("numeric_labels") or [])
        out += [f"## By {label}", "", "Numeric label: buckets 0 / 1 / 2 / 3-5 / 6+; `none`: turns without it." if numeric
                else "`none`: turns without the label.", ""]
        out += _file_split(metrics, label, "by", lambda s, label=label: s["by"][label])
    return out


def _file_split(metrics: dict, name: str, key: str, cells_of) -> list[str]:
    """One breakdown table: a column per bucket of `name` (key "by_round" or "by"), cells_of(section) the
    buckets of one section of the metrics."""
    gold, own = metrics["gold_history"], metrics.get("own_history")
    keys = list(gold[key]) if key == "by_round" else list(gold["by"][name])
    head = ["round" if key == "by_round" else name] + keys
    lines = [["gold history"] + [_acc(cells_of(gold).get(k)) for k in keys]]
    if own:
        lines.append(["own history"] + [_acc(cells_of(own).get(k)) for k in keys])
    abl = metrics.get("ablations") or {}
    if "no_history" in abl:
        lines.append(["no_history"] + [_acc(cells_of(abl["no_history"]).get(k)) for k in keys])
    lines.append(["n"] + [str((cells_of(gold).get(k) or {}).get("count", 0)) for k in keys])
    return _table(head, lines)


def _file_ablations_section(metrics: dict) -> list[str]:
    """The history ablations beside the teacher-forced gold row, and the history gain per group."""
    abl = metrics.get("ablations") or {}
    if not abl:
        return []
    ref = metrics.get("ablation_reference") or {}
    out = ["## History ablations", "",
           "Teacher forced, greedy exact match (the gold row is scored the same way, on the same dialogues). "
           "`no_history`: the question alone; `last_n`: the last n turns; `shuffled_history`: the earlier turns in "
           "another order; `no_media`: the gold history without any media. Under every history ablation the "
           "media of the dropped turns stay, at the start of the context.", ""]
    names = [n for n in ABLATION_ORDER if n in abl] + [n for n in abl if n not in ABLATION_ORDER]
    out += _table(["context", "accuracy", "dialogues fully right"],
                  [["gold_history (exact)", _num(ref.get("overall")), _num(ref.get("dialogues_fully_right"))]]
                  + [[n, _num(abl[n]["overall"]), _num(abl[n]["dialogues_fully_right"])] for n in names])
    gain = metrics.get("history_gain")
    if gain:
        out += ["History gain (gold - no_history) per group:", ""]
        rows = [["overall", "", _num(gain["overall"], True)]]
        rows += [["round", k, _num(v, True)] for k, v in gain["by_round"].items()]
        rows += [[label, k, _num(v, True)] for label, g in gain["by"].items() for k, v in g.items()]
        out += _table(["group", "bucket", "history gain"], rows)
    return out


def _file_ranking_section(metrics: dict) -> list[str]:
    """MRR, recall at 1/5/10, mean rank and NDCG of the candidate answers, where the file has candidates."""
    r = metrics.get("ranking")
    if not r:
        return []
    out = ["## Ranking candidate answers by likelihood", "",
           f"{r['questions']} turns with candidates ({r['candidates']:.1f} each on average) in {r['dialogues']} "
           "dialogues; relevant for NDCG: the candidates equal to the gold reply after normalisation (or the "
           "record's `relevance`).", ""]
    return out + _table(["MRR", "R@1", "R@5", "R@10", "mean rank", "NDCG"],
                        [[_num(r["mrr"]), _num(r["r@1"]), _num(r["r@5"]), _num(r["r@10"]),
                          "-" if r["mean_rank"] is None else f"{r['mean_rank']:.2f}", _num(r["ndcg"])]])


def _file_closing(metrics: dict, figures: list[str]) -> list[str]:
    """The dialogues left out of the own history, the time each part took, the figures."""
    out = []
    if metrics.get("own_history_failed"):
        out += [f"{len(metrics['own_history_failed'])} dialogue(s) left out of the own history (see metrics.json "
                "`own_history_failed`).", ""]
    secs = metrics.get("eval", {}).get("seconds") or {}
    if secs:
        out += ["## Time", "", ", ".join(f"{k} {v:.1f}s" for k, v in secs.items()) + ".", ""]
    if figures:
        out += ["## Figures", ""] + [f"![{f}]({f})\n" for f in figures]
    return out
