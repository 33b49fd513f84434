"""Evaluation speed: the gold history teacher forced vs generated, and what each part of the lab costs.

    python benchmarks/eval_speed.py --checkpoint runs/demo/checkpoint [--dialogues 600] [--threads 2]
    python benchmarks/eval_speed.py --checkpoint runs/demo/checkpoint --file-path [--dialogues 500] [--rounds 10]

--file-path: `mmdialog eval --data` against the world-only path on the same dialogues. A fresh world split of
--dialogues dialogues of --rounds question rounds is written (seeded), then scored with the gold and the own
history (no ablations, no ranking) by the world path (run_lab on the world records) and by the file path (the
split written as a ShareGPT file with its labels, read back with the training readers and checks, scored
under normalised matching with token F1: the wrong gold-history replies are generated too); then the file
path again with the six ablations. The world path is timed twice: as it was (the own history by one
ChatSession per dialogue) and as it is now (batched, eval/batched_chat.py). Prints seconds, accuracies and
the ratios.

Prints wall seconds for the gold history by teacher forcing (one batched pass) and by generation (a
ChatSession per dialogue, the reference), how many verdicts differ (and which), and the time of each
ablation, of the real chat (own history) and of the likelihood ranking per dialogue. Figures, no asserts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mmdialog.data.worlds.shapes import load_split
from mmdialog.eval.contexts import ABLATIONS, Context, record_image
from mmdialog.eval.lab import gold_generated_rows, own_history_rows, teacher_forced_rows
from mmdialog.eval.ranking import LikelihoodRanker, world_candidates
from mmdialog.eval.teacher_forced import TeacherForcedScorer
from mmdialog.modelio import load_any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--world", help="default: the checkpoint's")
    ap.add_argument("--split", default="test")
    ap.add_argument("--dialogues", type=int, default=600)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--own", type=int, default=100, help="dialogues for the own-history chat timing")
    ap.add_argument("--rank", type=int, default=50, help="dialogues for the ranking timing")
    ap.add_argument("--file-path", action="store_true", help="time `eval --data` against the world-only path")
    ap.add_argument("--rounds", type=int, default=10, help="--file-path: question rounds per dialogue")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ck = load_any(args.checkpoint)
    if args.file_path:
        return file_path(ck, args)
    world = Path(args.world or ck.meta["world"])
    records = load_split(world, args.split)[: args.dialogues]
    images = {r["id"]: record_image(r, world) for r in records}
    for im in images.values():
        im.load()  # read every PNG once, outside the timings
    max_new = ck.config.eval.max_new_tokens
    n_q = sum(rd["scored"] for r in records for rd in r["rounds"])
    print(f"{len(records)} dialogues, {n_q} scored questions, max_new_tokens {max_new}, "
          f"{torch.get_num_threads()} torch threads")

    scorer = TeacherForcedScorer(ck.model, ck.processor, max_new_tokens=max_new)
    with torch.no_grad():
        t = time.perf_counter()
        tf = teacher_forced_rows(scorer, Context(), records, images)
        t_tf = time.perf_counter() - t
        t = time.perf_counter()
        gen = gold_generated_rows(ck.model, ck.processor, records, images, max_new_tokens=max_new)
        t_gen = time.perf_counter() - t
    diff = [(a, b) for a, b in zip(tf, gen) if a["correct"] != b["correct"]]
    acc_tf, acc_gen = (sum(r["correct"] for r in rows) / len(rows) for rows in (tf, gen))
    print(f"gold history, teacher forced: {t_tf:6.1f}s   accuracy {acc_tf:.4f}")
    print(f"gold history, generated:      {t_gen:6.1f}s   accuracy {acc_gen:.4f}   ({t_gen / t_tf:.1f}x slower)")
    print(f"verdicts that differ: {len(diff)} of {len(tf)}")
    for a, b in diff[:10]:
        print(f"  {a['id']} round {a['round']}: gold {a['gold']!r}, generated {b['pred']!r} "
              f"(teacher forced: {'right' if a['correct'] else 'wrong'})")

    with torch.no_grad():
        for name, make in ABLATIONS.items():
            t = time.perf_counter()
            rows = teacher_forced_rows(scorer, make(), records, images)
            print(f"ablation {name:17s} {time.perf_counter() - t:6.1f}s   accuracy "
                  f"{sum(r['correct'] for r in rows) / len(rows):.4f}")
        sub = records[: args.own]
        t = time.perf_counter()
        own_history_rows(ck.model, ck.processor, sub, images, max_new_tokens=max_new)
        dt = time.perf_counter() - t
        print(f"own history (chat):     {dt:6.1f}s for {len(sub)} dialogues ({dt / len(sub) * 1000:.0f} ms each)")
        sub = records[: args.rank]
        golds = sorted({rd["answer"] for r in records for rd in r["rounds"] if rd["scored"]})
        ranker = LikelihoodRanker(ck.model, ck.processor, world_candidates(golds))
        t = time.perf_counter()
        for r in sub:
            ranker.score_record(r, world)
        dt = time.perf_counter() - t
        print(f"ranking ({len(ranker.candidates.texts)} candidates): {dt:6.1f}s for {len(sub)} dialogues "
              f"({dt / len(sub) * 1000:.0f} ms each)")


def file_path(ck, args) -> None:
    import tempfile

    from mmdialog.data.worlds.shapes import world_settings, write_split
    from mmdialog.eval.datafile import read_eval_file, world_to_file
    from mmdialog.eval.lab import run_lab

    settings = world_settings(Path(args.world or ck.meta["world"]))
    max_new = ck.config.eval.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp)
        write_split(world, "test", args.dialogues, seed=12345, image_size=settings.get("image_size", 64),
                    rounds=args.rounds, phrasing=settings.get("phrasing", "ordinary"))
        records = load_split(world, "test")
        n_turns = sum(len(r["rounds"]) for r in records)
        n_scored = sum(rd["scored"] for r in records for rd in r["rounds"])
        print(f"{len(records)} dialogues of {args.rounds} question rounds ({n_turns} assistant turns, {n_scored} "
              f"scored questions), max_new_tokens {max_new}, {torch.get_num_threads()} torch threads")

        images = {r["id"]: record_image(r, world) for r in records}
        t = time.perf_counter()
        with torch.no_grad():
            scorer = TeacherForcedScorer(ck.model, ck.processor, max_new_tokens=max_new)
            gold = teacher_forced_rows(scorer, Context(), records, images)
            own = own_history_rows(ck.model, ck.processor, records, images, max_new_tokens=max_new, batched=False)
        t_before = time.perf_counter() - t
        print(f"world path before (a ChatSession per dialogue): {t_before:6.1f}s   gold "
              f"{sum(r['correct'] for r in gold) / len(gold):.4f}, own {sum(r['correct'] for r in own) / len(own):.4f}")

        t = time.perf_counter()
        world_lab = run_lab(ck.model, ck.processor, records, world, max_new_tokens=max_new, ablations=(),
                            ranking=0, progress=False)
        t_world = time.perf_counter() - t
        m = world_lab.metrics
        print(f"world path now (own history batched):          {t_world:6.1f}s   gold {m['accuracy']['overall']:.4f}, own "
              f"{m['modes']['own_history']['accuracy']['overall']:.4f}   ({world_lab.metrics['eval']['seconds']})")

        path = world_to_file(records, world, world / "test.sharegpt.jsonl", "sharegpt")
        t = time.perf_counter()
        data = read_eval_file(path, "sharegpt", processor=ck.processor, modalities=ck.model.encoders.keys(),
                              group_by=("distance", "family"))
        t_read = time.perf_counter() - t
        file_lab = run_lab(ck.model, ck.processor, data.records, None, max_new_tokens=max_new, ablations=(),
                           ranking=0, progress=False, match="normalised", group_by=data.group_by, numeric=data.numeric)
        t_file = time.perf_counter() - t
        g, o = file_lab.metrics["gold_history"], file_lab.metrics["own_history"]
        print(f"file path (eval --data), gold + own history:   {t_file:6.1f}s   gold {g['overall']:.4f} (F1 {g['f1']:.4f}), own "
              f"{o['overall']:.4f}   (reading {t_read:.1f}s, {file_lab.metrics['eval']['seconds']}; "
              f"{len(data.invalid)} invalid)")
        print(f"file path / world path now: {t_file / t_world:.2f}x; file path / world path before: "
              f"{t_file / t_before:.2f}x")

        t = time.perf_counter()
        abl = run_lab(ck.model, ck.processor, data.records, None, max_new_tokens=max_new, ranking=0, progress=False,
                      match="normalised", group_by=data.group_by, numeric=data.numeric)
        t_abl = time.perf_counter() - t
        print(f"file path with the six ablations: {t_abl:6.1f}s   ({t_abl / t_file:.2f}x the file path without them); "
              f"history gain {abl.metrics['history_gain']['overall']:+.4f}")


if __name__ == "__main__":
    main()
