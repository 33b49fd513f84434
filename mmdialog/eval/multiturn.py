"""Multi-turn evaluation on the world: greedy answers with the gold history, split by how much history a question needs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from mmdialog.chat.session import ChatSession
from mmdialog.data.conversation import Image
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM

DISTANCE_BUCKETS = ("0", "1", "2", "3+")


def normalise(answer: str) -> str:
    return answer.strip().lower().rstrip(".").strip()


def distance_bucket(d: int) -> str:
    return str(d) if d < 3 else "3+"


def answer_with_gold_history(session: ChatSession, record: dict, world_dir: Path) -> list[dict]:
    """Ask every round of one dialogue; after each, the gold answer (not the model's) goes into the history."""
    session.reset()
    out = []
    for rd in record["rounds"]:
        parts = [Image(path=str(world_dir / record["image"])), rd["question"]] if rd["round"] == 0 else [rd["question"]]
        session.add("user", *parts)
        scored = rd.get("scored", True)
        pred = session.generate(commit=False) if scored else None  # captions and statements are not scored
        session.add("assistant", rd["answer"])
        if scored:
            out.append({
                "id": record["id"], "round": rd["round"], "question": rd["question"], "gold": rd["answer"],
                "pred": pred, "family": rd["family"], "ref": rd["ref"], "distance": rd["distance"],
                "correct": normalise(pred) == normalise(rd["answer"]),
            })
    return out


def summarise(preds: list[dict]) -> dict:
    def acc(rows):
        return sum(r["correct"] for r in rows) / len(rows) if rows else None

    groups: dict[str, dict[str, list]] = {"by_distance": defaultdict(list), "by_round": defaultdict(list),
                                          "by_family": defaultdict(list), "by_ref": defaultdict(list)}
    for r in preds:
        groups["by_distance"][distance_bucket(r["distance"])].append(r)
        groups["by_round"][str(r["round"])].append(r)
        groups["by_family"][r["family"]].append(r)
        groups["by_ref"][r["ref"]].append(r)
    accuracy: dict = {"overall": acc(preds)}
    counts: dict = {"overall": len(preds)}
    for name, g in groups.items():
        keys = list(DISTANCE_BUCKETS) if name == "by_distance" else sorted(g, key=lambda k: (len(k), k))
        accuracy[name] = {k: acc(g.get(k, [])) for k in keys}
        counts[name] = {k: len(g.get(k, [])) for k in keys}
    history = [r for r in preds if r["distance"] >= 1]
    accuracy["needs_history"] = acc(history)
    counts["needs_history"] = len(history)
    dialogues = defaultdict(list)
    for r in preds:
        dialogues[r["id"]].append(r["correct"])
    accuracy["dialogues_fully_right"] = acc([{"correct": all(v)} for v in dialogues.values()])
    return {"accuracy": accuracy, "counts": counts}


def evaluate(model: MultimodalLM, processor: Processor, records: list[dict], world_dir: str | Path, *,
             max_new_tokens: int = 8, progress: bool = True) -> tuple[dict, list[dict]]:
    world_dir = Path(world_dir)
    model.eval()
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
    preds: list[dict] = []
    failed: list[dict] = []  # a dialogue that cannot be run (unreadable image, too long) is counted, not fatal
    with torch.no_grad():
        for rec in tqdm(records, desc="eval", disable=not progress, leave=False):
            try:
                preds.extend(answer_with_gold_history(session, rec, world_dir))
            except MMDialogError as e:
                failed.append({"id": rec["id"], "error": str(e)})
    summary = summarise(preds)
    summary["failed_dialogues"] = failed
    return summary, preds


def write_predictions(preds: list[dict], path: str | Path) -> None:
    with open(path, "w") as f:
        for p in preds:
            f.write(json.dumps(p) + "\n")
