"""`mmdialog eval`: the lab on one or several checkpoints, on a split, on fresh seeds, on held-out splits.

    OUT/metrics.json            every number (the keys are described in lab.py); with several runs, the mean
                                over them, the std under "std" and the run names under "runs"
    OUT/summary.md              the same as tables, with the figures
    OUT/accuracy.png            accuracy by distance and by round: gold vs own history vs no history
    OUT/ablations.png           accuracy by distance per ablation, and the history gain
    OUT/heldout.png             accuracy by distance on each held-out split (when the world has them)
    OUT/predictions.jsonl       every scored question with the gold history (pred = the greedy reply as far
                                as teacher forcing determines it)
    OUT/predictions_own.jsonl   the same in a real chat (own history)
    OUT/predictions_ablations.jsonl, OUT/ranking.jsonl
    OUT/runs/<run>/             one such directory per run when there are several

With --data FILE (run_file_eval) the records of a LLaVA / ShareGPT / OpenAI file are evaluated by the same
lab: metrics.json then has "kind": "file", "records", "invalid" [{line, id, reason}], "gold_history" and
"own_history" ({"overall", "count", "f1", "by_round", "by": {label: {bucket: {"accuracy", "count"}}},
"dialogues_fully_right", "first_failed_round"}), "gap", "ablations", "history_gain" and "ranking".
"""

from __future__ import annotations

import json
from pathlib import Path

from mmdialog.config import EvalConfig
from mmdialog.data.worlds.shapes import heldout_info, load_split, touches_pairs, world_settings, write_split
from mmdialog.errors import MMDialogError
from mmdialog.eval.contexts import LastN
from mmdialog.eval.lab import DEFAULT_ABLATIONS, LabResult, aggregate, difference, run_lab, teacher_forced_rows, usable_records, \
    write_rows
from mmdialog.eval.contexts import Context, record_image
from mmdialog.eval.multiturn import summarise
from mmdialog.eval.plots import plot_lab
from mmdialog.eval.summary import lab_markdown
from mmdialog.eval.teacher_forced import TeacherForcedScorer


def heldout_metrics(model, processor, world: Path, *, max_new_tokens: int, max_dialogues: int = 0,
                    progress: bool = False) -> dict:
    """Gold-history and no-history accuracy on every held-out split the world has (heldout.py)."""
    info = heldout_info(world)
    pairs = info.get("pairs") or []
    scorer = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens)
    out = {}
    for split, meta in (info.get("splits") or {}).items():
        if not (world / f"{split}.jsonl").is_file():
            continue
        records = load_split(world, split)
        if max_dialogues:
            records = records[:max_dialogues]
        images = {r["id"]: record_image(r, world) for r in records}
        records, skipped = usable_records(processor, records, images)  # longer than the model's context: counted
        if not records:
            out[split] = {"skipped": len(skipped), "rounds": meta.get("rounds"), "description": meta.get("description")}
            continue
        annotate = (lambda rec, r: {"heldout_pair": touches_pairs(rec, r, pairs)}) if pairs and split == "test_combos" else None
        gold_rows = teacher_forced_rows(scorer, Context(), records, images, progress=progress, annotate=annotate)
        none_rows = teacher_forced_rows(scorer, LastN(0), records, images, progress=progress)
        gold, none = summarise(gold_rows), summarise(none_rows)
        m = {**gold, "no_history": none, "history_gain": difference(gold, none), "rounds": meta.get("rounds"),
             "description": meta.get("description"), "skipped": len(skipped)}
        if annotate:
            for key, want in (("pair_questions", True), ("other_questions", False)):
                rows = [r for r in gold_rows if r["heldout_pair"] == want]
                m[key] = {"accuracy": sum(r["correct"] for r in rows) / len(rows) if rows else None, "n": len(rows)}
        out[split] = m
    return out


def write_metrics_and_rows(result: LabResult | None, metrics: dict, out: Path) -> None:
    """OUT/metrics.json and the predictions of every mode (gold, own history, ablations) and the ranking."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if result is None:
        return
    write_rows(result.predictions.get("gold_history", []), out / "predictions.jsonl")
    if "own_history" in result.predictions:
        write_rows(result.predictions["own_history"], out / "predictions_own.jsonl")
    abl = [r for k, rows in result.predictions.items() if k not in ("gold_history", "own_history") for r in rows]
    if abl:
        write_rows(abl, out / "predictions_ablations.jsonl")
    if result.ranking_rows:
        write_rows(result.ranking_rows, out / "ranking.jsonl")


def write_outputs(result: LabResult | None, metrics: dict, out: Path, *, title: str, std: dict | None = None,
                  runs: list[str] = ()) -> list[Path]:
    write_metrics_and_rows(result, metrics, out)
    figures = plot_lab(metrics, out, std)
    (out / "summary.md").write_text(lab_markdown(metrics, title=title, std=std, figures=[f.name for f in figures],
                                                 runs=runs))
    return figures


def run_eval(checkpoints: list[str], out: str | Path, *, world: str | None = None, split: str = EvalConfig.split,
             seeds: list[int] = (), max_dialogues: int = EvalConfig.max_dialogues, own_history: int | None = None,
             ranking: int | None = None, ablations: tuple[str, ...] = DEFAULT_ABLATIONS,
             ablation_dialogues: int | None = None, heldout: bool = True,
             gold_method: str = "teacher_forced", progress: bool = True, log=print) -> dict:
    """Evaluate every checkpoint on the split (or on a fresh sample per seed); write OUT; return metrics."""
    from mmdialog.modelio import load_any

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, dict, LabResult]] = []
    for ci, path in enumerate(checkpoints):
        ck = load_any(path)
        wdir = Path(world or ck.meta.get("world", ""))
        if not (wdir / "world.json").is_file() and not (wdir / f"{split}.jsonl").is_file():
            raise MMDialogError(f"no world at {wdir!s}; pass --world DIR")
        max_new = ck.config.eval.max_new_tokens
        datasets: list[tuple[str, Path, list[dict]]] = []
        if seeds:
            settings = world_settings(wdir)
            n = max_dialogues or settings.get("counts", {}).get(split) or len(load_split(wdir, split))
            for s in seeds:
                d = out / "worlds" / f"seed-{s}"
                if not (d / f"{split}.jsonl").is_file() or len(load_split(d, split)) != n:
                    write_split(d, split, n, seed=s, image_size=settings.get("image_size", 64),
                                rounds=settings.get("rounds", 8), phrasing=settings.get("phrasing", "canonical"))
                datasets.append((f"seed{s}", d, load_split(d, split)))
        else:
            records = load_split(wdir, split)
            datasets.append(("", wdir, records[:max_dialogues] if max_dialogues else records))
        held = heldout_metrics(ck.model, ck.processor, wdir, max_new_tokens=max_new, max_dialogues=max_dialogues,
                               progress=progress) if heldout and split in ("test", "val") else {}
        for name, d, records in datasets:
            result = run_lab(ck.model, ck.processor, records, d, max_new_tokens=max_new, ablations=ablations,
                             own_history=own_history, ranking=ranking, ablation_dialogues=ablation_dialogues,
                             gold_method=gold_method, progress=progress)
            m = result.metrics
            if held:
                m["heldout"] = held
            m["checkpoint"], m["world"], m["split"] = str(path), str(d), split
            run = "-".join(x for x in ((f"ckpt{ci}" if len(checkpoints) > 1 else ""), name) if x) or "run"
            runs.append((run, m, result))
    if len(runs) == 1:
        run, m, result = runs[0]
        write_outputs(result, m, out, title=f"Multi-turn evaluation: {checkpoints[0]} on {split}")
        _log_line(m, log)
        return m
    for run, m, result in runs:
        write_outputs(result, m, out / "runs" / run, title=f"Multi-turn evaluation: {run}")
    agg = aggregate([m for _, m, _ in runs])
    metrics = {**agg["mean"], "std": agg["std"], "runs": [r for r, _, _ in runs],
               "checkpoints": list(map(str, checkpoints)), "seeds": list(seeds), "split": split}
    write_outputs(None, metrics, out, title=f"Multi-turn evaluation over {len(runs)} runs on {split}", std=agg["std"],
                  runs=metrics["runs"])
    _log_line(metrics, log, agg["std"])
    return metrics


def _log_line(m: dict, log, std: dict | None = None) -> None:
    if not log:
        return
    acc = m["accuracy"]

    def f(v, s=None):
        return "-" if v is None else f"{v:.3f}" + (f"±{s:.3f}" if s is not None else "")

    sd = (std or {}).get("accuracy", {})
    log(f"accuracy {f(acc['overall'], sd.get('overall'))} over {m['counts']['overall']:.0f} questions; by distance: "
        + ", ".join(f"{k}: {f(v, (sd.get('by_distance_fine') or {}).get(k))}" for k, v in acc["by_distance_fine"].items()))
    if "gap" in m:
        log(f"own history {f(m['modes']['own_history']['accuracy']['overall'])} vs gold "
            f"{f(m['modes']['gold_history_same_dialogues']['accuracy']['overall'])} on the same dialogues "
            f"(gap {f(m['gap']['overall'])})" + (f"; on the world's scripted answers {f(sc['overall'])}"
                                                  if (sc := m.get("own_history_scripted")) else ""))
    if "history_gain" in m:
        log("history gain by distance: " + ", ".join(f"{k}: {f(v)}" for k, v in m["history_gain"]["by_distance_fine"].items()))
    if m.get("ranking"):
        r = m["ranking"]
        log(f"ranking: MRR {f(r['mrr'])}, R@1 {f(r['r@1'])}, R@5 {f(r['r@5'])}, R@10 {f(r['r@10'])}, "
            f"mean rank {f(r['mean_rank'])}, NDCG {f(r['ndcg'])}")
    for name, h in (m.get("heldout") or {}).items():
        log(f"held-out {name}: accuracy {f(h['accuracy']['overall'])}")


# ----------------------------------------------------------------------------- a dataset file

FILE_KEYS = ("gold_history", "own_history", "gold_history_same_dialogues", "gap", "ablations", "ablation_reference",
             "history_gain", "ranking", "eval")


def run_file_eval(checkpoint: str, data: str | Path, out: str | Path, *, fmt: str = "auto",
                  media_root: str | None = None, group_by: tuple[str, ...] = (), match: str = "normalised",
                  max_records: int = EvalConfig.max_dialogues, own_history: int | None = None,
                  ranking: int | None = None, ablations: tuple[str, ...] = DEFAULT_ABLATIONS,
                  ablation_dialogues: int | None = None,
                  gold_method: str = "teacher_forced", progress: bool = True, log=print) -> dict:
    """`mmdialog eval --data FILE`: every assistant turn of every valid record, with the gold and the model's
    own history, by round and by the labels in group_by, the ablations and the candidates' ranking (the lab
    of lab.py, the same one the world runs). Writes OUT as the module docstring lists, plus OUT/invalid.jsonl."""
    from mmdialog.eval.datafile import read_eval_file
    from mmdialog.eval.matching import check_match
    from mmdialog.modelio import load_any

    check_match(match)
    ck = load_any(checkpoint)
    ed = read_eval_file(data, fmt, media_root, processor=ck.processor, modalities=ck.model.encoders.keys(),
                        group_by=group_by, max_records=max_records)
    if log:
        log(ed.summary())
    if not ed.records:
        first = f"; first: {ed.invalid[0]['id']}: {ed.invalid[0]['reason']}" if ed.invalid else ""
        raise MMDialogError(f"{data}: no valid record to evaluate ({len(ed.invalid)} invalid{first})")
    result = run_lab(ck.model, ck.processor, ed.records, None, max_new_tokens=ck.config.eval.max_new_tokens,
                     ablations=ablations, own_history=own_history, ranking=ranking,
                     ablation_dialogues=ablation_dialogues, gold_method=gold_method, progress=progress,
                     match=match, group_by=ed.group_by, numeric=ed.numeric)
    m = result.metrics
    lines = {r["id"]: r["line"] for r in ed.records}
    refused = [f for f in m["failed_dialogues"] if "mode" not in f]  # the processor refused the gold conversation
    invalid = sorted(ed.invalid + [{"line": lines[f["id"]], "id": f["id"], "reason": f["error"]} for f in refused],
                     key=lambda x: x["line"])
    metrics = {"kind": "file", "file": str(data), "format": ed.format, "checkpoint": str(checkpoint), "match": match,
               "group_by": list(ed.group_by), "records": ed.read, "scored_records": len(ed.records) - len(refused),
               "invalid": invalid, "own_history_failed": [f for f in m["failed_dialogues"] if "mode" in f],
               **{k: m[k] for k in FILE_KEYS if k in m}}
    if not metrics["ablations"]:
        metrics.pop("ablations")
    write_file_outputs(result, metrics, Path(out))
    if log:
        g, o = metrics["gold_history"], metrics.get("own_history")
        f1 = f", token F1 {g['f1']:.3f}" if g.get("f1") is not None else ""
        log(f"gold history {g['overall']:.3f} over {g['count']} turns{f1}"
            + (f"; own history {o['overall']:.3f} (gap {metrics['gap']['overall']:+.3f})" if o else ""))
        if metrics.get("history_gain"):
            log(f"history gain (gold - no_history, exact match): {metrics['history_gain']['overall']:+.3f}")
        if metrics.get("ranking"):
            r = metrics["ranking"]
            log(f"ranking: MRR {r['mrr']:.3f}, R@1 {r['r@1']:.3f}, R@5 {r['r@5']:.3f}, R@10 {r['r@10']:.3f}, "
                f"NDCG {r['ndcg'] if r['ndcg'] is None else round(r['ndcg'], 3)}")
    return metrics


def write_file_outputs(result: LabResult, metrics: dict, out: Path) -> list[Path]:
    from mmdialog.eval.plots import plot_file
    from mmdialog.eval.summary import file_markdown

    write_metrics_and_rows(result, metrics, out)
    write_rows(metrics["invalid"], out / "invalid.jsonl")
    figures = plot_file(metrics, out)
    (out / "summary.md").write_text(file_markdown(metrics, title=f"Multi-turn evaluation: {metrics['file']}",
                                                  figures=[f.name for f in figures]))
    return figures
