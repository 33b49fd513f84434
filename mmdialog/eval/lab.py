"""The multi-turn evaluation lab: everything `mmdialog eval` measures about one model on one split.

    gold_history      every question answered after the gold earlier rounds (teacher forced, one batched pass)
    own_history       a real chat: the model's own earlier answers (captions and "OK."s included) stay in the
                      history (ChatSession, greedy generation); on the first `own_history` dialogues
    gap               gold minus own on the same dialogues: what error propagation costs
    ablations         no_history, last_1, last_2, last_4, shuffled_history, no_media (see contexts.py), and
                      history_gain = gold_history - no_history per distance: ~0 at distance 0, large beyond
    ranking           candidate answers ranked by likelihood: MRR, R@1/5/10, mean rank, NDCG (ranking.py)

Each mode's numbers come from `summarise` (accuracy and counts overall, by distance, round, family and
reference, dialogue-level shares). The top-level "accuracy" and "counts" are gold_history's, the keys the
demo has always written.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from mmdialog.answers import normalise
from mmdialog.chat.policies import Policy
from mmdialog.chat.session import ChatSession
from mmdialog.data.conversation import Image, Text
from mmdialog.data.processor import Processor
from mmdialog.data.worlds.shapes.as_said import golds_as_said
from mmdialog.errors import MMDialogError
from mmdialog.eval import batched_chat
from mmdialog.eval.contexts import ABLATIONS, Context, Sequence, record_image, user_parts
from mmdialog.eval.matching import check_match, matches, token_f1
from mmdialog.eval.multiturn import (WORLD_GROUPS, WORLD_LABELS, WORLD_NUMERIC, difference_groups, summarise,
                                     summarise_groups)
from mmdialog.eval.ranking import LikelihoodRanker, summarise_ranking, world_candidates
from mmdialog.eval.teacher_forced import TeacherForcedScorer
from mmdialog.model import MultimodalLM

DEFAULT_ABLATIONS = tuple(ABLATIONS)


@dataclass
class LabResult:
    metrics: dict
    predictions: dict[str, list[dict]] = field(default_factory=dict)  # mode or ablation -> rows
    ranking_rows: list[dict] = field(default_factory=list)


def row(record: dict, r: int, pred: str, correct: bool, mode: str, **extra) -> dict:
    rd = record["rounds"][r]
    out = {"id": record["id"], "round": r, "question": rd["question"], "gold": rd["answer"], "pred": pred,
           **{k: rd[k] for k in WORLD_LABELS if k in rd}}
    if "labels" in rd:
        out["labels"] = rd["labels"]
    return {**out, "n_rounds": len(record["rounds"]), "correct": bool(correct), "mode": mode, **extra}


def verdict(pred: str, gold: str, match: str | None) -> dict:
    """correct (and token F1) of a generated reply: under `match` (matching.py), or the world's own
    verdict (lower case, a final period) when match is None."""
    if match is None:
        return {"correct": normalise(pred) == normalise(gold)}
    return {"correct": matches(pred, gold, match), "f1": round(token_f1(pred, gold), 4)}


def scripted_verdicts(own_rows: list[dict], gold_same: dict) -> dict:
    """The own history judged on the world's scripted answers throughout (the caption's object as the world
    picked it), beside the verdicts on the conversation as it happened: how many rows that re-judging changed."""
    scripted = summarise([{**r, "correct": r.get("correct_scripted", r["correct"])} for r in own_rows])
    overall, gold = scripted["accuracy"]["overall"], gold_same["accuracy"]["overall"]
    return {"overall": overall, "gap": None if overall is None or gold is None else round(gold - overall, 4),
            "rejudged": sum("gold_scripted" in r for r in own_rows),
            "rejudged_correct": sum(bool(r["correct"]) for r in own_rows if "gold_scripted" in r)}


def _start(session: ChatSession, record: dict) -> None:
    session.reset()
    if record.get("system"):
        session.add("system", *record["system"])


def teacher_forced_rows(scorer: TeacherForcedScorer, context: Context, records: list[dict],
                        images: dict[str, Image], *, progress: bool = False,
                        annotate: Callable[[dict, int], dict] | None = None,
                        gold: dict[tuple[str, int], dict] | None = None) -> list[dict]:
    """Per scored question, whether greedy decoding answers it right under `context`.

    gold: the teacher-forced gold-history rows by (id, round). A per-round context that keeps the whole
    history in order (last_4 at round 3, no_history at round 0) is a prefix of the gold conversation, and
    a causal model scores it as the gold history did: its row is copied instead of scored again."""
    seqs: list[Sequence] = [s for rec in records for s in context.sequences(rec, images.get(rec["id"]))]
    by_id = {rec["id"]: rec for rec in records}
    rows, to_score = [], []
    for seq in seqs:
        if not (gold and seq.gold_prefix and all((seq.id, r) in gold for _, r in seq.scored)):
            to_score.append(seq)
            continue
        for _, r in seq.scored:
            g = gold[(seq.id, r)]
            rows.append(row(by_id[seq.id], r, g["pred"], g["correct"], context.name, logprob=g.get("logprob"),
                            **(annotate(by_id[seq.id], r) if annotate else {})))
    seqs = to_score
    scores = scorer.score(seqs, desc=context.name, progress=progress)
    for seq, res in zip(seqs, scores):
        rec = by_id[seq.id]
        for (_, r), s in zip(seq.scored, res):
            rows.append(row(rec, r, s.pred, s.correct, context.name, logprob=round(s.logprob, 4),
                            **(annotate(rec, r) if annotate else {})))
    rows.sort(key=lambda x: (x["id"], x["round"]))
    return rows


def own_history_rows(model: MultimodalLM, processor: Processor, records: list[dict], images: dict[str, Image], *,
                     max_new_tokens: int, progress: bool = False, mode: str = "own_history",
                     policy: Policy | None = None, match: str | None = None,
                     failed: list[dict] | None = None, batched: bool = True) -> list[dict]:
    """A real chat per dialogue: every round asked in turn, the model's replies kept as the history
    (under a context policy when given, as `mmdialog chat --policy` would). With `failed`, a dialogue the
    session refuses (the model's own replies made it longer than the context) is listed there and left out.
    batched: many dialogues in lockstep (batched_chat.py, the same replies) where the model allows it and
    no policy is given; else one ChatSession per dialogue.

    A world record's follow-ups are judged on the conversation as it happened (data/worlds/shapes/as_said.py):
    where the model's caption named another object than the scripted one and a later question refers back to
    it, the right answer is about the object the model named; such a row keeps the world's answer as
    `gold_scripted` and its verdict as `correct_scripted`."""
    replies = None
    if batched and policy is None and batched_chat.supported(model):
        try:
            replies = batched_chat.own_history_replies(model, processor, records, images,
                                                       max_new_tokens=max_new_tokens)
        except MMDialogError:
            replies = None  # a batch outgrew the cache: the sessions below run the dialogues one by one
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens, policy=policy) if replies is None else None
    rows = []
    for rec in tqdm(records, desc=mode, disable=not progress or replies is not None, leave=False):
        image = images.get(rec["id"])
        out = []
        try:
            if replies is not None:
                got = replies[rec["id"]]
                if isinstance(got, str):
                    raise MMDialogError(got)
            else:
                _start(session, rec)
                got = [session.ask(*user_parts(rec, rd["round"], image)) for rd in rec["rounds"]]
            golds = golds_as_said(rec, got)
            for rd, reply, gold in zip(rec["rounds"], got, golds):
                if rd.get("scored", True):
                    v = verdict(reply, gold, match)
                    if gold != rd["answer"]:  # a follow-up about the object the model's own caption named
                        v.update(gold=gold, gold_scripted=rd["answer"],
                                 correct_scripted=verdict(reply, rd["answer"], match)["correct"])
                    out.append(row(rec, rd["round"], reply, v.pop("correct"), mode, **v))
        except MMDialogError as e:
            if failed is None:
                raise
            failed.append({"id": rec["id"], "mode": mode, "error": str(e)})
            continue
        rows.extend(out)
    return rows


def gold_generated_rows(model: MultimodalLM, processor: Processor, records: list[dict], images: dict[str, Image], *,
                        max_new_tokens: int, progress: bool = False) -> list[dict]:
    """The gold history answered by generation (the reference teacher forcing must equal; slower)."""
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
    rows = []
    for rec in tqdm(records, desc="gold_history (generated)", disable=not progress, leave=False):
        _start(session, rec)
        image = images.get(rec["id"])
        for rd in rec["rounds"]:
            session.add("user", *user_parts(rec, rd["round"], image))
            if rd.get("scored", True):
                pred = session.generate(commit=False)
                rows.append(row(rec, rd["round"], pred, normalise(pred) == normalise(rd["answer"]), "gold_history"))
            session.add("assistant", rd["answer"])
    return rows


def generate_wrong_replies(model: MultimodalLM, processor: Processor, records: list[dict], images: dict[str, Image],
                           rows: list[dict], *, max_new_tokens: int, match: str, progress: bool = False) -> None:
    """Teacher-forced gold-history rows -> the replies greedy decoding gives, judged under `match`, in place.

    A row teacher forcing found right is the gold reply exactly (greedy decoding produces it), so only the
    wrong ones are generated: one ChatSession per dialogue that has any, the gold replies added between them
    (the cache keeps the shared prefix; measured faster than batching them, batched_chat.py, since only a
    few rounds per dialogue are asked). Each row keeps the teacher-forced verdict as "exact"."""
    wrong: dict[str, set[int]] = {}
    for r in rows:
        r["exact"] = r["correct"]
        if r["correct"]:
            r.update(pred=r["gold"], **verdict(r["gold"], r["gold"], match))
        else:
            wrong.setdefault(r["id"], set()).add(r["round"])
    by_key = {(r["id"], r["round"]): r for r in rows}
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
    for rec in tqdm([x for x in records if x["id"] in wrong], desc="gold_history replies", disable=not progress,
                    leave=False):
        todo = wrong[rec["id"]]
        _start(session, rec)
        image = images.get(rec["id"])
        for rd in rec["rounds"][:max(todo) + 1]:
            session.add("user", *user_parts(rec, rd["round"], image))
            if rd["round"] in todo:
                pred = session.generate(commit=False)
                r = by_key[(rec["id"], rd["round"])]
                r.update(pred=pred, **verdict(pred, rd["answer"], match))
            session.add("assistant", rd["answer"])


def difference(a: dict, b: dict) -> dict:
    """a - b for the accuracies two summaries share (overall, by distance, by round, dialogue shares)."""
    out: dict = {}
    for key in ("overall", "needs_history", "dialogues_fully_right", "first_failed_round"):
        x, y = a["accuracy"].get(key), b["accuracy"].get(key)
        out[key] = None if x is None or y is None else x - y
    for key in ("by_distance", "by_distance_fine", "by_round", "by_family"):
        xs, ys = a["accuracy"][key], b["accuracy"][key]
        out[key] = {k: (None if xs.get(k) is None or ys.get(k) is None else xs[k] - ys[k]) for k in xs}
    return out


def usable_records(processor: Processor, records: list[dict], images: dict[str, Image]) -> tuple[list[dict], list[dict]]:
    """The records whose gold conversation the processor accepts (image readable, within max_length)."""
    ok, failed = [], []
    for rec in records:
        try:
            processor(Context().sequences(rec, images.get(rec["id"]))[0].conv, where=f"dialogue {rec['id']}")
            ok.append(rec)
        except MMDialogError as e:
            failed.append({"id": rec["id"], "error": str(e)})
    return ok, failed


def warm_reader(processor: Processor, records: list[dict], progress: bool = False) -> int:
    """With a user-turn reader: read every user turn of the records in one batched pass (the scorers would
    meet them a batch at a time). Returns the turns encoded (0 without a reader)."""
    if processor.reader is None:
        return 0
    texts = ["".join(p.text for p in user_parts(r, k) if isinstance(p, Text)).strip()
             for r in records for k in range(len(r["rounds"]))]
    return processor.read_texts([t for t in texts if t], progress)


def run_lab(model: MultimodalLM, processor: Processor, records: list[dict], world_dir: str | Path | None, *,
            max_new_tokens: int, ablations: tuple[str, ...] = DEFAULT_ABLATIONS, own_history: int | None = None,
            ranking: int | None = None, ablation_dialogues: int | None = None,
            gold_method: str = "teacher_forced", max_batch_tokens: int = 16384,
            progress: bool = True, log=None,
            annotate: Callable[[dict, int], dict] | None = None,
            match: str | None = None, group_by: tuple[str, ...] | None = None,
            numeric: frozenset[str] | None = None) -> LabResult:
    """Every mode on `records`: world records (world_dir holds their images) or records read from a dataset
    file (eval/datafile.py; world_dir None). own_history / ranking / ablation_dialogues: how many dialogues
    (the first ones) to run them on; None: all, 0: skip. Each is compared with the gold history on the same
    dialogues. gold_method "generate" answers the gold history by generation instead (the reference).

    match: None keeps the world's verdicts (greedy exact match, teacher forced); exact | normalised |
    contains (matching.py) generates the replies teacher forcing finds wrong and judges every reply by it,
    with token F1. group_by / numeric: the labels to split by, and which of them are numbers (bucketed
    0/1/2/3-5/6+); default: the world's distance, family and ref. Ablations stay teacher forced (greedy exact
    match); the history gain compares them with the gold history scored the same way."""
    model.eval()
    if match is not None:
        check_match(match)
    lab = _Lab(model, processor, records, world_dir, max_new_tokens=max_new_tokens, max_batch_tokens=max_batch_tokens,
               progress=progress, log=log, annotate=annotate, match=match, group_by=group_by, numeric=numeric)
    n = len(lab.records)
    t = time.perf_counter()
    warm_reader(processor, lab.records, progress)
    lab.seconds["reader"] = round(time.perf_counter() - t, 3)
    lab.gold(gold_method)
    n_own = n if own_history is None else min(own_history, n)
    if n_own:
        lab.own(n_own)
    n_abl = n if ablation_dialogues is None else min(ablation_dialogues, n)
    lab.ablations(ablations if n_abl else (), n_abl)
    lab.ranking(ranking)
    m = lab.metrics
    m["eval"] = {"gold_method": gold_method, "match": match, "group_by": list(lab.group_by),
                 "numeric_labels": sorted(lab.numeric), "dialogues": n, "max_new_tokens": max_new_tokens,
                 "own_history_dialogues": n_own, "ranking_dialogues": m.get("ranking", {}).get("dialogues", 0),
                 "ablation_dialogues": n_abl if m["ablations"] else 0, "seconds": lab.seconds,
                 "wall_seconds": round(sum(lab.seconds.values()), 3)}
    m["failed_dialogues"] = lab.failed
    return LabResult(m, lab.preds, lab.ranking_rows)


class _Lab:
    """The state of one run_lab: the usable records and their images, the rows of each mode, the metrics
    so far, and the seconds each part took. One method per mode, in the order run_lab calls them."""

    def __init__(self, model, processor, records, world_dir, *, max_new_tokens, max_batch_tokens, progress, log,
                 annotate, match, group_by, numeric):
        self.model, self.processor, self.world_dir = model, processor, world_dir
        self.world = all("image" in rec for rec in records)
        self.group_by = tuple(WORLD_GROUPS if group_by is None and self.world else group_by or ())
        self.numeric = frozenset(WORLD_NUMERIC if numeric is None and self.world else numeric or ())
        self.images = {rec["id"]: record_image(rec, world_dir) for rec in records}
        self.records, self.failed = usable_records(processor, records, self.images)
        self.scorer = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens,
                                          max_batch_tokens=max_batch_tokens)
        self.max_new_tokens, self.progress, self.log = max_new_tokens, progress, log
        self.annotate, self.match = annotate, match
        self.seconds: dict[str, float] = {}
        self.preds: dict[str, list[dict]] = {}
        self.metrics: dict = {}
        self.forced = None  # the teacher-forced gold rows, which the ablations' gold prefixes reuse
        self.ranking_rows: list[dict] = []

    def timed(self, name: str, fn):
        t = time.perf_counter()
        with torch.no_grad():
            result = fn()
        self.seconds[name] = round(time.perf_counter() - t, 3)
        if self.log:
            self.log(f"eval {name}: {self.seconds[name]:.1f}s")
        return result

    def groups(self, rows: list[dict], key: str = "correct") -> dict:
        return summarise_groups(rows, self.group_by, self.numeric, key=key)

    def both(self, rows: list[dict], key: str = "correct") -> dict:
        """The world's summary (the keys the demo has always written) beside the generic one."""
        return {**(summarise(rows) if self.world else {}), **self.groups(rows, key)}

    def gold(self, method: str) -> None:
        m, recs, imgs = self.metrics, self.records, self.images
        if method == "teacher_forced":
            rows = self.timed("gold_history", lambda: teacher_forced_rows(
                self.scorer, Context(), recs, imgs, progress=self.progress, annotate=self.annotate))
            self.forced = {(r["id"], r["round"]): dict(r) for r in rows}  # before replies replace pred
            if self.match is not None:
                self.timed("gold_history_replies", lambda: generate_wrong_replies(
                    self.model, self.processor, recs, imgs, rows, max_new_tokens=self.max_new_tokens,
                    match=self.match, progress=self.progress))
        elif method == "generate":
            rows = self.timed("gold_history", lambda: gold_generated_rows(
                self.model, self.processor, recs, imgs, max_new_tokens=self.max_new_tokens, progress=self.progress))
            if self.match is not None:
                for r in rows:
                    r.update(verdict(r["pred"], r["gold"], self.match))
                    r["exact"] = r["pred"] == r["gold"]
        else:
            raise MMDialogError(f"gold_method must be teacher_forced or generate, got {method!r}")
        self.preds["gold_history"] = rows
        if self.world:
            g = summarise(rows)
            m.update(accuracy=g["accuracy"], counts=g["counts"], modes={"gold_history": g})
        m["gold_history"] = self.groups(rows)

    def own(self, n: int) -> None:
        m, subset = self.metrics, self.records[:n]
        rows = self.preds["own_history"] = self.timed("own_history", lambda: own_history_rows(
            self.model, self.processor, subset, self.images, max_new_tokens=self.max_new_tokens,
            progress=self.progress, match=self.match, failed=self.failed))
        ids = {r["id"] for r in rows}
        same = [r for r in self.preds["gold_history"] if r["id"] in ids]
        m["own_history"] = self.groups(rows)
        m["gold_history_same_dialogues"] = self.groups(same)
        gap = difference_groups(m["gold_history_same_dialogues"], m["own_history"])
        if self.world:
            gold_same, own = summarise(same), summarise(rows)
            m["modes"]["own_history"] = own
            m["modes"]["gold_history_same_dialogues"] = gold_same
            gap = {**difference(gold_same, own), **gap}
            m["own_history_scripted"] = scripted_verdicts(rows, gold_same)
        m["gap"] = {"dialogues": len(ids), **gap}

    def ablations(self, names: tuple[str, ...], n: int) -> None:
        m, abl_records = self.metrics, self.records[:n]
        m["ablations"] = {}
        for name in names:
            if name not in ABLATIONS:
                raise MMDialogError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
            self.preds[name] = self.timed(name, lambda: teacher_forced_rows(
                self.scorer, ABLATIONS[name](), abl_records, self.images, progress=self.progress,
                annotate=self.annotate, gold=self.forced))
            m["ablations"][name] = self.both(self.preds[name])
        if not m["ablations"]:
            return
        ids = {r["id"] for r in abl_records}
        abl_gold_rows = [r for r in self.preds["gold_history"] if r["id"] in ids]
        # the gold history on those dialogues, scored as the ablations (greedy exact match)
        exact = "exact" if self.match is not None else "correct"
        reference = m["ablation_reference"] = self.groups(abl_gold_rows, exact)
        if self.world and n < len(self.records):  # compare with the gold history on the same dialogues
            m["modes"]["gold_history_ablation_dialogues"] = summarise(abl_gold_rows)
        if "no_history" in m["ablations"]:
            gain = difference_groups(reference, m["ablations"]["no_history"])
            if self.world:
                abl_gold = m["modes"].get("gold_history_ablation_dialogues") or m["modes"]["gold_history"]
                gain = {**difference(abl_gold, m["ablations"]["no_history"]), **gain}
            m["history_gain"] = gain

    def ranking(self, ranking: int | None) -> None:
        recs = self.records
        pool = recs if self.world else [rec for rec in recs if any("candidates" in rd for rd in rec["rounds"])]
        n = len(pool) if ranking is None else min(ranking, len(pool))
        if not n:
            return
        if self.world:
            golds = sorted({rd["answer"] for rec in recs for rd in rec["rounds"] if rd.get("scored", True)})
            ranker = LikelihoodRanker(self.model, self.processor, world_candidates(golds))
        else:
            ranker = LikelihoodRanker(self.model, self.processor, None)

        def rank_all():
            out = []
            for rec in tqdm(pool[:n], desc="ranking", disable=not self.progress, leave=False):
                out.extend(ranker.score_record(rec, self.world_dir, image=self.images.get(rec["id"])))
            return out

        rows = self.ranking_rows = self.timed("ranking", rank_all)
        n_cands = [r["candidates"] for r in rows]
        self.metrics["ranking"] = {**summarise_ranking(rows), "dialogues": n,
                                   "candidates": len(ranker.candidates.texts) if self.world else
                                   (sum(n_cands) / len(n_cands) if n_cands else 0)}


# ----------------------------------------------------------------------------- several runs

def _numeric(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def aggregate(runs: list[dict]) -> dict:
    """{"mean": ..., "std": ...} with the structure of the runs' metrics: every number averaged over the runs
    that have it (None where none has), std with Bessel's correction (0.0 for one run). Lists are left out."""

    def merge(values: list):
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            keys = list(dict.fromkeys(k for v in present for k in v))
            pairs = {k: merge([v.get(k) for v in present]) for k in keys}
            return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
        nums = [float(v) for v in present if _numeric(v)]
        if not nums or len(nums) != len(present):
            return (None, None) if not present or isinstance(present[0], list) else (present[0], None)
        mean = sum(nums) / len(nums)
        std = math.sqrt(sum((v - mean) ** 2 for v in nums) / (len(nums) - 1)) if len(nums) > 1 else 0.0
        return mean, std

    mean, std = merge(runs)
    return {"mean": mean, "std": std}


def write_rows(rows: list[dict], path: str | Path) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
