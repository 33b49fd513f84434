"""`mmdialog experiment multiturn`: which training and inference choices make a model better at multi-turn?

Trains variants of the same model on the same world, with the same budget each, over several seeds, and
evaluates every one the same way:

    every_turn          loss on every assistant turn of a dialogue (the default: one pass trains them all)
    last_turn           each time a dialogue is drawn, it is cut after a random round and only that round's
                        answer is trained (one sample per turn, as many pipelines do)
    every_turn+augment  every turn, with history augmentation: with probability 1/2 the early question rounds
                        1..k (k up to half of them) are cut (the image round stays; answers that need a cut
                        round, directly or through the round they lean on, are not trained), and with probability 1/2 one or two distractor rounds ("How
                        many red things are there?", answered from the scene) are inserted before rounds that
                        do not refer to the round before them
    last_turn+augment   both (not in the default set)

and at inference, on every variant, the chat context policies full, last_k, token_budget and summary
(mmdialog.chat.policies), in a real chat (own history) and with the gold history (teacher forced).

DIR/experiment.json holds every number, DIR/experiment.md the tables (mean ± std over seeds, and each
variant's effect on distance >= 1 accuracy and on the own-history gap against every_turn, with
z = difference / its standard error over seeds: |z| >= 2 is called an effect, below it noise),
DIR/experiment.png the plot, DIR/report.html the report over every run, DIR/<variant>/seed<S>/ each run.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmdialog.chat.policies import parse_policy
from mmdialog.config import Config
from mmdialog.data.conversation import Conversation, Image
from mmdialog.data.dataset import ConversationDataset
from mmdialog.data.processor import Example, Processor
from mmdialog.data.worlds.shapes import load_split
from mmdialog.data.worlds.shapes.augment import augment_rounds
from mmdialog.errors import MMDialogError
from mmdialog.eval.contexts import WithPolicy, record_image
from mmdialog.eval.lab import aggregate, own_history_rows, run_lab, teacher_forced_rows
from mmdialog.eval.multiturn import summarise
from mmdialog.eval.summary import get
from mmdialog.eval.teacher_forced import TeacherForcedScorer, assistant_spans
from mmdialog.eval.validation import Validator
from mmdialog.modelio import world_meta
from mmdialog.objectives.lm import IGNORE_INDEX
from mmdialog.recipes.world import ensure_world

VARIANTS = ("every_turn", "last_turn", "every_turn+augment", "last_turn+augment")
DEFAULT_VARIANTS = ("every_turn", "last_turn", "every_turn+augment")
DEFAULT_POLICIES = ("full", "last_k:4", "token_budget:128", "summary:3")


# ----------------------------------------------------------------------------- training data variants

def keep_only_turn(ex: Example, turn: int, assistant_id: int, end_id: int) -> Example:
    """The example cut after assistant turn `turn`, with only that turn's reply (and <|end|>) supervised."""
    ids = ex.input_ids.tolist()
    start, end = assistant_spans(ids, assistant_id, end_id)[turn]
    labels = torch.full((end + 1,), IGNORE_INDEX, dtype=torch.long)
    labels[start:end + 1] = ex.input_ids[start:end + 1]
    return Example(ex.input_ids[: end + 1].clone(), labels, ex.images)


class LastTurnDataset(Dataset):
    """Each draw: a processed dialogue cut after a random assistant turn, only that turn trained."""

    def __init__(self, base: ConversationDataset, processor: Processor, seed: int):
        self.base, self.rng = base, random.Random(seed)
        tok = processor.tokenizer
        self.assistant_id, self.end_id = tok.role_ids["assistant"], tok.end_id
        self.turns = [sum(int(t) == self.assistant_id for t in ex.input_ids) for ex in base.examples]
        self.skipped = base.skipped

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Example:
        return keep_only_turn(self.base[i], self.rng.randrange(self.turns[i]), self.assistant_id, self.end_id)

    def report(self) -> str:
        return self.base.report() + "; each draw cut after a random turn, only that turn trained"


class AugmentedDataset(Dataset):
    """Each draw: the dialogue with its history augmented (augment_rounds), processed on the fly;
    with last_turn, then cut after a random trained turn."""

    def __init__(self, records: list[dict], world: Path, processor: Processor, seed: int, last_turn: bool = False):
        self.records, self.processor, self.rng, self.last_turn = records, processor, random.Random(seed), last_turn
        self.images = {r["id"]: Image(pixels=record_image(r, world).load()) for r in records}
        tok = processor.tokenizer
        self.assistant_id, self.end_id = tok.role_ids["assistant"], tok.end_id
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example:
        rec = self.records[i]
        rounds = augment_rounds(rec, self.rng)
        conv = Conversation()
        for j, rd in enumerate(rounds):
            conv.add("user", *([self.images[rec["id"]], rd["question"]] if j == 0 else [rd["question"]]))
            conv.add("assistant", rd["answer"])
        ex = self.processor(conv, where=f"conversation {rec['id']}")
        spans = assistant_spans(ex.input_ids.tolist(), self.assistant_id, self.end_id)
        trained = [t for t, rd in enumerate(rounds) if rd["train"]]
        if self.last_turn:
            return keep_only_turn(ex, self.rng.choice(trained), self.assistant_id, self.end_id)
        labels = ex.labels.clone()
        for t, rd in enumerate(rounds):
            if not rd["train"]:
                start, end = spans[t]
                labels[start:end + 1] = IGNORE_INDEX
        return Example(ex.input_ids, labels, ex.images)

    def report(self) -> str:
        return f"{len(self.records)} conversations, history augmented on every draw"


def training_set(variant: str, base: ConversationDataset, records: list[dict], world: Path, processor: Processor,
                 seed: int):
    if variant == "every_turn":
        return base
    if variant == "last_turn":
        return LastTurnDataset(base, processor, seed)
    if variant in ("every_turn+augment", "last_turn+augment"):
        return AugmentedDataset(records, world, processor, seed, last_turn=variant.startswith("last_turn"))
    raise MMDialogError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


# ----------------------------------------------------------------------------- evaluation

def evaluate_run(model, processor, records: list[dict], world: Path, *, max_new_tokens: int, own_dialogues: int,
                 policies: tuple[str, ...], progress: bool) -> dict:
    """Gold and own history, no_history, and every policy (own history and gold history) on `records`."""
    lab = run_lab(model, processor, records, world, max_new_tokens=max_new_tokens, ablations=("no_history",),
                  own_history=own_dialogues, ranking=0, progress=progress)
    m = lab.metrics
    subset = records[:own_dialogues]
    images = {r["id"]: record_image(r, world) for r in subset}
    scorer = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens)
    counter = _counter(processor)
    m["policies"] = {}
    for spec in policies:
        if spec == "full":
            own = m["modes"]["own_history"]
            gold = m["modes"]["gold_history_same_dialogues"]
        else:
            rows = _own_with_policy(model, processor, subset, images, spec, max_new_tokens, progress)
            own = summarise(rows)
            gold = summarise(teacher_forced_rows(scorer, WithPolicy(parse_policy(spec), counter), subset, images))
        m["policies"][spec] = {"own_history": own, "gold_history": gold,
                               "gap": None if gold["accuracy"]["overall"] is None or own["accuracy"]["overall"] is None
                               else gold["accuracy"]["overall"] - own["accuracy"]["overall"]}
    return m


def _counter(processor: Processor):
    def count(conv: Conversation) -> int:
        ids = processor.token_ids(conv, add_generation_prompt=True)
        return len(ids) + len(conv.media("image")) * (processor.image_tokens - 1)
    return count


def _own_with_policy(model, processor, records, images, spec, max_new_tokens, progress) -> list[dict]:
    return own_history_rows(model, processor, records, images, max_new_tokens=max_new_tokens, progress=progress,
                            mode=f"own {spec}", policy=parse_policy(spec))


# ----------------------------------------------------------------------------- the experiment

HEADLINES = {
    "gold overall": ("accuracy", "overall"),
    "gold d0": ("accuracy", "by_distance", "0"),
    "gold d>=1": ("accuracy", "needs_history"),
    "own overall": ("modes", "own_history", "accuracy", "overall"),
    "own d>=1": ("modes", "own_history", "accuracy", "needs_history"),
    "gap (gold-own)": ("gap", "overall"),
    "own fully right": ("modes", "own_history", "accuracy", "dialogues_fully_right"),
    "history gain": ("history_gain", "overall"),
}


def effect(runs_a: list[dict], runs_b: list[dict], path) -> dict:
    """mean(b) - mean(a) over seeds, its standard error and z; |z| >= 2 is called an effect."""
    a = [v for v in (get(m, *path) for m in runs_a) if v is not None]
    b = [v for v in (get(m, *path) for m in runs_b) if v is not None]
    if not a or not b:
        return {"diff": None, "se": None, "z": None, "verdict": "n/a"}

    def var(x):
        mu = sum(x) / len(x)
        return sum((v - mu) ** 2 for v in x) / (len(x) - 1) if len(x) > 1 else 0.0

    diff = sum(b) / len(b) - sum(a) / len(a)
    se = math.sqrt(var(a) / len(a) + var(b) / len(b))
    z = diff / se if se > 0 else (math.inf if diff else 0.0) * (1 if diff >= 0 else -1)
    verdict = "n/a (one seed)" if len(a) < 2 or len(b) < 2 else ("effect" if abs(z) >= 2 else "noise")
    return {"diff": diff, "se": se, "z": z, "verdict": verdict}


def run_experiment(cfg: Config, out: str | Path, *, budget_minutes: float = 30.0, seeds=(0, 1),
                   variants=DEFAULT_VARIANTS, policies=DEFAULT_POLICIES, eval_dialogues: int = 300,
                   own_dialogues: int = 100, progress: bool = True, log=print) -> dict:
    from mmdialog.eval.report import build_report
    from mmdialog.train.trainer import prepare, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for v in variants:
        if v not in VARIANTS:
            raise MMDialogError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    for p in policies:
        parse_policy(p)
    t0 = time.perf_counter()
    world = ensure_world(cfg, out, progress, log)
    train_records = load_split(world, "train")
    test = load_split(world, cfg.eval.split)[:eval_dialogues]
    n_runs = len(variants) * len(seeds)
    # a quarter of the budget is kept for evaluation; the rest is split evenly between the runs
    # (--budget-minutes 0: every run trains train.max_steps steps instead, the same work whatever the machine does)
    minutes = max(0.2, 0.75 * budget_minutes / n_runs) if budget_minutes > 0 else 0.0
    each = f"{minutes:.1f} min of training each" if minutes else f"{cfg.train.max_steps} steps each"
    log(f"experiment: {len(variants)} variants x {len(seeds)} seeds, {each}; "
        f"evaluation on {len(test)} {cfg.eval.split} dialogues (own history and policies on {own_dialogues})")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    run_dirs = []
    for seed in seeds:
        for variant in variants:
            run_cfg = replace(cfg, train=replace(cfg.train, seed=seed, max_minutes=minutes))  # and train.max_steps
            run_dir = out / variant.replace("+", "_") / f"seed{seed}"
            tokenizer, model, processor, base = prepare(run_cfg, world, progress)
            data = training_set(variant, base, train_records, world, processor, seed)
            res = train(run_cfg, model, tokenizer, data, run_dir, progress=progress, log=log,
                        meta={**world_meta(world), "variant": variant}, validator=Validator.build)
            with torch.no_grad():
                m = evaluate_run(model, processor, test, Path(world), max_new_tokens=cfg.eval.max_new_tokens,
                                 own_dialogues=own_dialogues, policies=policies, progress=progress)
            m["train"] = {"steps": res.steps, "wall_seconds": res.wall_seconds, "final_loss": res.final_loss,
                          "tokens": res.tokens}
            m["variant"], m["seed"] = variant, seed
            (run_dir / "metrics.json").write_text(json.dumps(m, indent=2))
            results[variant].append(m)
            run_dirs.append(run_dir)
            log(f"{variant} seed {seed}: {res.steps} steps, gold {m['accuracy']['overall']:.3f}, "
                f"d>=1 {m['accuracy']['needs_history'] or 0:.3f}, own {m['modes']['own_history']['accuracy']['overall']:.3f}")
    summary = summarise_experiment(results, variants, policies)
    summary["settings"] = {"budget_minutes": budget_minutes, "train_minutes_per_run": minutes,
                           "max_steps": cfg.train.max_steps, "seeds": list(seeds),
                           "variants": list(variants), "policies": list(policies), "eval_dialogues": len(test),
                           "own_dialogues": own_dialogues, "world": str(world),
                           "wall_seconds": round(time.perf_counter() - t0, 1)}
    (out / "experiment.json").write_text(json.dumps(summary, indent=2))
    plot_experiment(summary, out / "experiment.png")
    (out / "experiment.md").write_text(experiment_markdown(summary))
    build_report(run_dirs, out / "report.html", title="mmdialog experiment: multi-turn")
    return summary


def summarise_experiment(results: dict[str, list[dict]], variants, policies) -> dict:
    base = results[variants[0]]
    table = {}
    for v in variants:
        agg = aggregate(results[v])
        row = {name: {"mean": get(agg["mean"], *p), "std": get(agg["std"], *p)} for name, p in HEADLINES.items()}
        row["effects"] = {name: effect(base, results[v], HEADLINES[name])
                          for name in ("gold d>=1", "gap (gold-own)", "own d>=1")} if v != variants[0] else {}
        row["policies"] = {}
        for p in policies:
            pa = aggregate([m["policies"][p] for m in results[v]])
            row["policies"][p] = {k: {"mean": get(pa["mean"], *path), "std": get(pa["std"], *path)} for k, path in {
                "own overall": ("own_history", "accuracy", "overall"),
                "own d>=1": ("own_history", "accuracy", "needs_history"),
                "gold overall": ("gold_history", "accuracy", "overall"),
                "gold d>=1": ("gold_history", "accuracy", "needs_history"),
                "gap": ("gap",)}.items()}
            if p != policies[0]:
                row["policies"][p]["effect own d>=1 vs full"] = effect(
                    [m["policies"][policies[0]] for m in results[v]], [m["policies"][p] for m in results[v]],
                    ("own_history", "accuracy", "needs_history"))
        row["seeds"] = [m["seed"] for m in results[v]]
        row["steps"] = [m["train"]["steps"] for m in results[v]]
        table[v] = row
    return {"variants": table, "baseline": variants[0]}


def mean_std(cell) -> str:
    if cell is None or cell.get("mean") is None:
        return "-"
    s = cell.get("std")
    return f"{cell['mean']:.3f}" + (f" ± {s:.3f}" if s else "")


def experiment_markdown(summary: dict) -> str:
    st = summary.get("settings", {})
    lines = ["# Experiment: what makes the model better at multi-turn dialogue", "",
             f"Seeds {st.get('seeds')}, "
             + (f"{st['train_minutes_per_run']:.1f} min of training per run" if st.get("train_minutes_per_run")
                else f"{st.get('max_steps')} steps of training per run") + ", evaluated on "
             f"{st.get('eval_dialogues')} test dialogues (own history and policies on {st.get('own_dialogues')}). "
             "Mean ± std over seeds.", "", "## Training variants (inference: full history)", ""]
    cols = list(HEADLINES)
    lines += ["| variant | " + " | ".join(cols) + " | steps |", "|---|" + "---|" * (len(cols) + 1)]
    for v, row in summary["variants"].items():
        lines.append(f"| {v} | " + " | ".join(mean_std(row[c]) for c in cols)
                     + f" | {', '.join(map(str, row['steps']))} |")
    lines += ["", f"Effects against {summary['baseline']} (difference of means; z = difference / standard error "
                  "over seeds; |z| >= 2: effect, else noise):", "",
              "| variant | gold d>=1 | own d>=1 | gap (gold-own) |", "|---|---|---|---|"]
    for v, row in summary["variants"].items():
        if row["effects"]:
            cells = []
            for k in ("gold d>=1", "own d>=1", "gap (gold-own)"):
                e = row["effects"][k]
                cells.append("-" if e["diff"] is None else f"{e['diff']:+.3f} (z {e['z']:+.1f}, {e['verdict']})")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "## Context policies at inference", "",
              "Own history: a real chat with the policy; gold history: the policy applied to the gold history "
              "(teacher forced). last_k and summary drop the image together with the rounds they cut; "
              "token_budget drops the image first.", "",
              "| variant | policy | own overall | own d>=1 | gold overall | gold d>=1 | gap | own d>=1 vs full |",
              "|---|---|---|---|---|---|---|---|"]
    for v, row in summary["variants"].items():
        for p, cell in row["policies"].items():
            e = cell.get("effect own d>=1 vs full")
            eff = "-" if not e or e["diff"] is None else f"{e['diff']:+.3f} (z {e['z']:+.1f}, {e['verdict']})"
            lines.append(f"| {v} | {p} | {mean_std(cell['own overall'])} | {mean_std(cell['own d>=1'])} | "
                         f"{mean_std(cell['gold overall'])} | {mean_std(cell['gold d>=1'])} | "
                         f"{mean_std(cell['gap'])} | {eff} |")
    lines += ["", "![experiment](experiment.png)", "", "Every run: `report.html`, `<variant>/seed<S>/metrics.json`.", ""]
    return "\n".join(lines)


def plot_experiment(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(summary["variants"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
    keys = ["gold d0", "gold d>=1", "own d>=1", "gap (gold-own)"]
    x = np.arange(len(variants))
    w = 0.8 / len(keys)
    for i, k in enumerate(keys):
        cells = [summary["variants"][v][k] for v in variants]
        ax1.bar(x + (i - (len(keys) - 1) / 2) * w, [c["mean"] if c["mean"] is not None else np.nan for c in cells], w,
                yerr=[c["std"] or 0 for c in cells], capsize=2, label=k)
    ax1.set_xticks(x, variants, fontsize=8)
    ax1.axhline(0, color="black", linewidth=0.6)
    ax1.set_title("training variants (mean ± std over seeds)")
    ax1.legend(fontsize=7)
    policies = list(next(iter(summary["variants"].values()))["policies"])
    w = 0.8 / len(variants)
    px = np.arange(len(policies))
    for i, v in enumerate(variants):
        cells = [summary["variants"][v]["policies"][p]["own d>=1"] for p in policies]
        ax2.bar(px + (i - (len(variants) - 1) / 2) * w, [c["mean"] if c["mean"] is not None else np.nan for c in cells], w,
                yerr=[c["std"] or 0 for c in cells], capsize=2, label=v)
    ax2.set_xticks(px, policies, fontsize=8)
    ax2.set_ylim(0, 1)
    ax2.set_title("own-history accuracy at distance >= 1, by context policy")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(cfg: Config, out: str | Path, *, budget_minutes: float = 30.0, seeds=(0, 1), variants=DEFAULT_VARIANTS,
         policies=DEFAULT_POLICIES, eval_dialogues: int = 300, own_dialogues: int = 100) -> int:
    """`mmdialog experiment multiturn`: run_experiment, then the files it wrote."""
    s = run_experiment(cfg, Path(out), budget_minutes=budget_minutes, seeds=seeds, variants=variants,
                       policies=policies, eval_dialogues=eval_dialogues, own_dialogues=own_dialogues)
    print(f"wrote {Path(out) / 'experiment.md'}, experiment.json, experiment.png, report.html "
          f"({s['settings']['wall_seconds']:.0f}s)")
    return 0
