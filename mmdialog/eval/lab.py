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

from mmdialog.chat.policies import Policy
from mmdialog.chat.session import ChatSession
from mmdialog.data.conversation import Image
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.eval.contexts import ABLATIONS, Context, Sequence, record_image
from mmdialog.eval.multiturn import normalise, summarise
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
    return {"id": record["id"], "round": r, "question": rd["question"], "gold": rd["answer"], "pred": pred,
            "family": rd["family"], "ref": rd["ref"], "distance": rd["distance"], "n_rounds": len(record["rounds"]),
            "correct": bool(correct), "mode": mode, **extra}


def teacher_forced_rows(scorer: TeacherForcedScorer, context: Context, records: list[dict],
                        images: dict[str, Image], *, progress: bool = False,
                        annotate: Callable[[dict, int], dict] | None = None) -> list[dict]:
    """Per scored question, whether greedy decoding answers it right under `context`."""
    seqs: list[Sequence] = [s for rec in records for s in context.sequences(rec, images[rec["id"]])]
    by_id = {rec["id"]: rec for rec in records}
    scores = scorer.score(seqs, desc=context.name, progress=progress)
    rows = []
    for seq, res in zip(seqs, scores):
        rec = by_id[seq.id]
        for (_, r), s in zip(seq.scored, res):
            rows.append(row(rec, r, s.pred, s.correct, context.name, logprob=round(s.logprob, 4),
                            **(annotate(rec, r) if annotate else {})))
    rows.sort(key=lambda x: (x["id"], x["round"]))
    return rows


def own_history_rows(model: MultimodalLM, processor: Processor, records: list[dict], images: dict[str, Image], *,
                     max_new_tokens: int, progress: bool = False, mode: str = "own_history",
                     policy: Policy | None = None) -> list[dict]:
    """A real chat per dialogue: every round asked in turn, the model's replies kept as the history
    (under a context policy when given, as `mmdialog chat --policy` would)."""
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens, policy=policy)
    rows = []
    for rec in tqdm(records, desc=mode, disable=not progress, leave=False):
        session.reset()
        for rd in rec["rounds"]:
            parts = [images[rec["id"]], rd["question"]] if rd["round"] == 0 else [rd["question"]]
            reply = session.ask(*parts)
            if rd.get("scored", True):
                rows.append(row(rec, rd["round"], reply, normalise(reply) == normalise(rd["answer"]), mode))
    return rows


def gold_generated_rows(model: MultimodalLM, processor: Processor, records: list[dict], images: dict[str, Image], *,
                        max_new_tokens: int, progress: bool = False) -> list[dict]:
    """The gold history answered by generation (the reference teacher forcing must equal; slower)."""
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
    rows = []
    for rec in tqdm(records, desc="gold_history (generated)", disable=not progress, leave=False):
        session.reset()
        for rd in rec["rounds"]:
            session.add("user", *([images[rec["id"]], rd["question"]] if rd["round"] == 0 else [rd["question"]]))
            if rd.get("scored", True):
                pred = session.generate(commit=False)
                rows.append(row(rec, rd["round"], pred, normalise(pred) == normalise(rd["answer"]), "gold_history"))
            session.add("assistant", rd["answer"])
    return rows


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
            processor(Context().sequences(rec, images[rec["id"]])[0].conv, where=f"dialogue {rec['id']}")
            ok.append(rec)
        except MMDialogError as e:
            failed.append({"id": rec["id"], "error": str(e)})
    return ok, failed


def run_lab(model: MultimodalLM, processor: Processor, records: list[dict], world_dir: str | Path, *,
            max_new_tokens: int, ablations: tuple[str, ...] = DEFAULT_ABLATIONS, own_history: int | None = None,
            ranking: int | None = None, ablation_dialogues: int | None = None,
            gold_method: str = "teacher_forced", max_batch_tokens: int = 16384,
            progress: bool = True, log=None,
            annotate: Callable[[dict, int], dict] | None = None) -> LabResult:
    """Every mode on `records`. own_history / ranking / ablation_dialogues: how many dialogues (the first ones)
    to run them on; None: all, 0: skip. Each is compared with the gold history on the same dialogues.
    gold_method "generate" answers the gold history by generation instead (the reference)."""
    world_dir = Path(world_dir)
    model.eval()
    images = {rec["id"]: record_image(rec, world_dir) for rec in records}
    records, failed = usable_records(processor, records, images)
    scorer = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens, max_batch_tokens=max_batch_tokens)
    seconds: dict[str, float] = {}
    preds: dict[str, list[dict]] = {}

    def timed(name, fn):
        t = time.perf_counter()
        with torch.no_grad():
            result = fn()
        seconds[name] = round(time.perf_counter() - t, 3)
        if log:
            log(f"eval {name}: {seconds[name]:.1f}s")
        return result

    if gold_method == "teacher_forced":
        preds["gold_history"] = timed("gold_history", lambda: teacher_forced_rows(
            scorer, Context(), records, images, progress=progress, annotate=annotate))
    elif gold_method == "generate":
        preds["gold_history"] = timed("gold_history", lambda: gold_generated_rows(
            model, processor, records, images, max_new_tokens=max_new_tokens, progress=progress))
    else:
        raise MMDialogError(f"gold_method must be teacher_forced or generate, got {gold_method!r}")
    gold = summarise(preds["gold_history"])
    metrics: dict = {"accuracy": gold["accuracy"], "counts": gold["counts"], "modes": {"gold_history": gold}}

    n_own = len(records) if own_history is None else min(own_history, len(records))
    if n_own:
        subset = records[:n_own]
        preds["own_history"] = timed("own_history", lambda: own_history_rows(
            model, processor, subset, images, max_new_tokens=max_new_tokens, progress=progress))
        ids = {r["id"] for r in subset}
        own = summarise(preds["own_history"])
        gold_same = summarise([r for r in preds["gold_history"] if r["id"] in ids])
        metrics["modes"]["own_history"] = own
        metrics["modes"]["gold_history_same_dialogues"] = gold_same
        metrics["gap"] = {"dialogues": n_own, **difference(gold_same, own)}

    metrics["ablations"] = {}
    n_abl = len(records) if ablation_dialogues is None else min(ablation_dialogues, len(records))
    abl_records = records[:n_abl]
    for name in ablations if n_abl else ():
        if name not in ABLATIONS:
            raise MMDialogError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
        preds[name] = timed(name, lambda: teacher_forced_rows(scorer, ABLATIONS[name](), abl_records, images,
                                                                progress=progress, annotate=annotate))
        metrics["ablations"][name] = summarise(preds[name])
    abl_gold = gold
    if metrics["ablations"] and n_abl < len(records):  # compare with the gold history on the same dialogues
        ids = {r["id"] for r in abl_records}
        abl_gold = summarise([r for r in preds["gold_history"] if r["id"] in ids])
        metrics["modes"]["gold_history_ablation_dialogues"] = abl_gold
    if "no_history" in metrics["ablations"]:
        metrics["history_gain"] = difference(abl_gold, metrics["ablations"]["no_history"])

    ranking_rows: list[dict] = []
    n_rank = len(records) if ranking is None else min(ranking, len(records))
    if n_rank:
        golds = sorted({rd["answer"] for rec in records for rd in rec["rounds"] if rd.get("scored", True)})
        ranker = LikelihoodRanker(model, processor, world_candidates(golds))

        def rank_all():
            out = []
            for rec in tqdm(records[:n_rank], desc="ranking", disable=not progress, leave=False):
                out.extend(ranker.score_record(rec, world_dir))
            return out

        ranking_rows = timed("ranking", rank_all)
        metrics["ranking"] = {**summarise_ranking(ranking_rows), "dialogues": n_rank,
                              "candidates": len(ranker.candidates.texts)}

    metrics["eval"] = {"gold_method": gold_method, "dialogues": len(records), "max_new_tokens": max_new_tokens,
                       "own_history_dialogues": n_own, "ranking_dialogues": n_rank,
                       "ablation_dialogues": n_abl if metrics["ablations"] else 0, "seconds": seconds,
                       "wall_seconds": round(sum(seconds.values()), 3)}
    metrics["failed_dialogues"] = failed
    return LabResult(metrics, preds, ranking_rows)


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
