"""Multi-turn evaluation on the world: greedy answers with the gold history, split by how much history a question needs.

`mmdialog.eval.lab` computes the gold-history accuracy by teacher forcing in one batched pass (tests hold it
equal to a ChatSession generating every answer), plus the model's own history, ablations and ranking.
`summarise` turns per-question rows into the metrics it writes.
"""

from __future__ import annotations

from collections import defaultdict



DISTANCE_BUCKETS = ("0", "1", "2", "3+")
FINE_BUCKETS = ("0", "1", "2", "3-5", "6+")  # the issue's split; "3+" stays for the files the demo has written


def distance_bucket(d: int) -> str:
    return str(d) if d < 3 else "3+"


def fine_bucket(d: int) -> str:
    return str(d) if d < 3 else "3-5" if d < 6 else "6+"


def first_failed_round(rows: list[dict], n_rounds: int) -> float:
    """First wrong round / n_rounds (the caption counted, so rounds + 1 for `rounds` questions); 1.0 if none fails."""
    wrong = [r["round"] for r in rows if not r["correct"]]
    return min(wrong) / n_rounds if wrong else 1.0


def summarise(preds: list[dict]) -> dict:
    def acc(rows):
        return sum(r["correct"] for r in rows) / len(rows) if rows else None

    groups: dict[str, dict[str, list]] = {"by_distance": defaultdict(list), "by_distance_fine": defaultdict(list),
                                          "by_round": defaultdict(list), "by_family": defaultdict(list),
                                          "by_ref": defaultdict(list)}
    fixed = {"by_distance": DISTANCE_BUCKETS, "by_distance_fine": FINE_BUCKETS}
    for r in preds:
        groups["by_distance"][distance_bucket(r["distance"])].append(r)
        groups["by_distance_fine"][fine_bucket(r["distance"])].append(r)
        groups["by_round"][str(r["round"])].append(r)
        groups["by_family"][r["family"]].append(r)
        groups["by_ref"][r["ref"]].append(r)
    accuracy: dict = {"overall": acc(preds)}
    counts: dict = {"overall": len(preds)}
    for name, g in groups.items():
        keys = list(fixed[name]) if name in fixed else sorted(g, key=lambda k: (len(k), k))
        accuracy[name] = {k: acc(g.get(k, [])) for k in keys}
        counts[name] = {k: len(g.get(k, [])) for k in keys}
    history = [r for r in preds if r["distance"] >= 1]
    accuracy["needs_history"] = acc(history)
    counts["needs_history"] = len(history)
    dialogues = defaultdict(list)
    for r in preds:
        dialogues[r["id"]].append(r)
    accuracy["dialogues_fully_right"] = acc([{"correct": all(x["correct"] for x in v)} for v in dialogues.values()])
    # rows may carry "n_rounds" (the dialogue's rounds, caption included); else the last scored round + 1
    ffr = [first_failed_round(v, max(x.get("n_rounds", x["round"] + 1) for x in v)) for v in dialogues.values()]
    accuracy["first_failed_round"] = sum(ffr) / len(ffr) if ffr else None
    counts["dialogues"] = len(dialogues)
    return {"accuracy": accuracy, "counts": counts}


# ----------------------------------------------------------------------------- any labels (one path for files and the world)

WORLD_LABELS = ("family", "ref", "distance")  # what a world round carries; a file round carries "labels"
WORLD_GROUPS, WORLD_NUMERIC = ("distance", "family", "ref"), frozenset({"distance"})
NONE = "none"  # the bucket of a turn without the label


def labels_of(row: dict) -> dict:
    """A scored turn's labels: a file record's "labels", or the world round's family, ref and distance."""
    return row["labels"] if "labels" in row else {k: row[k] for k in WORLD_LABELS if k in row}


def bucket(value, numeric: bool) -> str:
    """0 / 1 / 2 / 3-5 / 6+ for a numeric label (read_eval_file checked it is a whole number >= 0), the value
    itself for any other, `none` when the turn has no such label."""
    if value is None:
        return NONE
    return fine_bucket(int(value)) if numeric else str(value)


def summarise_groups(rows: list[dict], group_by=(), numeric=frozenset(), key: str = "correct") -> dict:
    """{"overall", "count", "f1", "by_round": {round: {"accuracy", "count"}}, "by": {label: {bucket: {...}}},
    "dialogues", "dialogues_fully_right", "first_failed_round"}; `key` names the verdict (correct, exact)."""

    def cell(rs):
        return {"accuracy": sum(bool(r[key]) for r in rs) / len(rs) if rs else None, "count": len(rs)}

    f1 = [r["f1"] for r in rows if r.get("f1") is not None]
    out = {"overall": cell(rows)["accuracy"], "count": len(rows), "f1": sum(f1) / len(f1) if f1 else None}
    rounds: dict[int, list] = defaultdict(list)
    for r in rows:
        rounds[r["round"]].append(r)
    out["by_round"] = {str(k): cell(rounds[k]) for k in sorted(rounds)}
    out["by"] = {}
    for label in group_by:
        groups: dict[str, list] = defaultdict(list)
        for r in rows:
            groups[bucket(labels_of(r).get(label), label in numeric)].append(r)
        keys = list(FINE_BUCKETS) if label in numeric else sorted(k for k in groups if k != NONE)
        out["by"][label] = {k: cell(groups.get(k, [])) for k in keys + ([NONE] if NONE in groups else [])}
    dialogues: dict[str, list] = defaultdict(list)
    for r in rows:
        dialogues[r["id"]].append(r)
    out["dialogues"] = len(dialogues)
    out["dialogues_fully_right"] = (sum(all(x[key] for x in v) for v in dialogues.values()) / len(dialogues)
                                    if dialogues else None)
    ffr = []
    for v in dialogues.values():
        wrong = [x["round"] for x in v if not x[key]]
        n = max(x.get("n_rounds", x["round"] + 1) for x in v)
        ffr.append(min(wrong) / n if wrong else 1.0)
    out["first_failed_round"] = sum(ffr) / len(ffr) if ffr else None
    return out


def difference_groups(a: dict, b: dict) -> dict:
    """a - b for every figure of two summarise_groups results (None where either is None)."""

    def d(x, y):
        return None if x is None or y is None else x - y

    out = {k: d(a.get(k), b.get(k)) for k in ("overall", "f1", "dialogues_fully_right", "first_failed_round")}
    out["by_round"] = {k: d(v["accuracy"], (b["by_round"].get(k) or {}).get("accuracy"))
                       for k, v in a["by_round"].items()}
    out["by"] = {label: {k: d(v["accuracy"], ((b["by"].get(label) or {}).get(k) or {}).get("accuracy"))
                         for k, v in groups.items()} for label, groups in a["by"].items()}
    return out
