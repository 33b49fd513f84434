"""Interpretability: where a model's answers look, written as PNGs, JSON and a markdown report.

`mmdialog explain --checkpoint CKPT --dialogue ID --out DIR` (explain_checkpoint; or `explain_dialogue` on a
model in hand) runs one teacher-forced pass over a dialogue with its gold history and writes:

    DIR/attention_rounds.png   per answer: attention to the image, to each earlier round, to the current
                               question and to its own reply so far; one panel per decoder layer and the
                               average over layers (the dependency round boxed)
    DIR/attention_image.png    per answer: attention over the image patches, laid over the image
    DIR/fusion_gates.png       a fusion's gates or weights for this example, if the fusion exposes any
    DIR/explain.json           the numbers behind the plots, per round
    DIR/explain.md             the report: the dialogue, the verdicts, the shares, the PNGs

Fusion hook: a fusion that has gates or mixing weights exposes them by overriding Fusion.explain_values
(`explain_values(self) -> dict[str, torch.Tensor]`), the values of its most recent forward pass, each with
the batch as first dimension (e.g. {"gate": (B, layers)}). Fusions that keep the default (None, as concat
does) have nothing to show, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mmdialog.data.collate import Collator
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.eval.contexts import Context, record_image
from mmdialog.eval.teacher_forced import TeacherForcedScorer
from mmdialog.explain.attention import RoundAttention, answer_attention, recording
from mmdialog.explain.plots import gate_plot, patch_overlays, round_heatmaps
from mmdialog.fusion.common import Fusion
from mmdialog.model import MultimodalLM

__all__ = ["answer_attention", "explain_dialogue", "fusion_values", "recording"]


def fusion_values(fusion: Fusion) -> dict[str, np.ndarray] | None:
    """The fusion's explain_values() for the first example of its last forward, or None if it has none."""
    values = fusion.explain_values()
    if values is None:
        return None
    return {k: v.detach().float()[0].cpu().numpy() for k, v in values.items()}


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@torch.no_grad()
def explain_dialogue(model: MultimodalLM, processor: Processor, record: dict, world_dir: str | Path,
                     out_dir: str | Path, *, max_new_tokens: int = 8) -> dict:
    """Write the attention views of one dialogue to out_dir; returns what explain.json holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    image = record_image(record, world_dir)
    seq = Context().sequences(record, image)[0]
    ex = processor(seq.conv, where=f"dialogue {record['id']}")
    ids = ex.input_ids.tolist()
    tok = processor.tokenizer
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in Collator(tok.pad_id)([ex]).items() if k not in ("labels", "attention_mask")}
    with recording(model.decoder) as maps:
        model(**batch, return_logits=False)
    gates = fusion_values(model.fusion)
    layers = [m[0] for m in maps.values() if m]
    if not layers:
        raise MMDialogError("the decoder has no mmdialog Attention layers to record (an HF decoder?); "
                            "attention views need the built-in causal decoder")
    verdicts = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens).score([seq])[0]
    n_rounds = len(record["rounds"])
    rounds: list[RoundAttention] = answer_attention(
        layers, ids, placeholder_id=tok.media_ids["image"], role_ids=tok.role_ids, end_id=tok.end_id,
        scored=seq.scored, n_rounds=n_rounds)

    rows = [ra.round for ra in rounds]
    depends = [record["rounds"][r]["depends_on"] for r in rows]
    L = len(layers)
    per_layer = [np.stack([ra.by_layer[layer] for ra in rounds]) for layer in range(L)]  # each (R_scored, n+3)
    mean = np.mean(per_layer, axis=0)
    files = []
    title = f"{record['id']}: where each answer's attention goes"
    files.append(round_heatmaps([mean] + per_layer, ["mean over layers"] + [f"layer {i}" for i in range(L)],
                                rows, depends, n_rounds, out / "attention_rounds.png", suptitle=title))

    pixels = image.load()
    n_img = 0 if rounds[0].image_patches is None else rounds[0].image_patches.shape[1]
    g = int(round(n_img ** 0.5))
    image_note = None
    if n_img and g * g == n_img:
        grids, titles, targets = [], [], []
        for ra, v in zip(rounds, verdicts):
            rd = record["rounds"][ra.round]
            grids.append(ra.image_patches.mean(0).reshape(g, g))
            share = float(ra.by_layer[:, 0].mean())
            titles.append(f"r{ra.round} {_short(rd['question'])}\ngold {rd['answer']} · "
                          f"{'right' if v.correct else 'wrong: ' + v.pred} · image {share:.2f}")
            t = rd["program"].get("target")
            obj = record["scene"]["objects"][t] if t is not None else None
            scale = pixels.shape[1] / record["scene"]["size"]
            targets.append((obj["x"] * scale, obj["y"] * scale) if obj else None)
        files.append(patch_overlays(pixels, grids, titles, targets, out / "attention_image.png"))
    else:
        image_note = f"no square patch grid to draw ({n_img} image tokens)"
    if gates:
        files.append(gate_plot(gates, out / "fusion_gates.png", f"{record['id']}: fusion gates / weights"))

    result = {"id": record["id"], "layers": L, "columns": ["image"] + [f"round {k}" for k in range(n_rounds)]
              + ["answer", "other"], "rounds": [], "fusion": {k: v.tolist() for k, v in gates.items()} if gates else None,
              "files": [p.name for p in files]}
    for ra, v in zip(rounds, verdicts):
        rd = record["rounds"][ra.round]
        m = ra.by_layer.mean(0)
        earlier = {k: float(m[1 + k]) for k in range(ra.round)}
        dep = rd["depends_on"]
        result["rounds"].append({
            "round": ra.round, "question": rd["question"], "gold": rd["answer"], "pred": v.pred, "correct": v.correct,
            "family": rd["family"], "ref": rd["ref"], "distance": rd["distance"], "depends_on": dep,
            "image": float(m[0]), "question_share": float(m[1 + ra.round]), "answer": float(m[n_rounds + 1]),
            "earlier_rounds": earlier,
            "dependency_share": None if dep is None else earlier.get(dep),
            "dependency_rank": None if dep is None else 1 + sum(s > earlier[dep] for s in earlier.values()),
            "by_layer": ra.by_layer.tolist(),
        })
    (out / "explain.json").write_text(json.dumps(result, indent=2))
    write_report(result, record, out / "explain.md", gates_note=None if gates else
                 f"the fusion ({type(model.fusion).__name__}) exposes no gates or weights (no explain_values())",
                 image_note=image_note)
    return result


def explain_checkpoint(checkpoint: str | Path, dialogue: str, out: str | Path, *, world: str | None = None,
                       split: str | None = None) -> dict:
    """`mmdialog explain`: explain_dialogue on the dialogue called `dialogue` (e.g. test-00012) of a checkpoint
    or export, from `world` (default: the world it was trained on) and `split` (default: from the id)."""
    from mmdialog.data.worlds.shapes import load_split
    from mmdialog.modelio import load_any, world_of

    ck = load_any(checkpoint)
    world = world_of(ck, world)
    split = split or dialogue.rsplit("-", 1)[0]
    records = load_split(world, split)
    match = [r for r in records if r["id"] == dialogue]
    if not match:
        raise MMDialogError(f"no dialogue {dialogue!r} in {world / (split + '.jsonl')} "
                            f"(ids run {records[0]['id']} .. {records[-1]['id']})" if records else f"{split} is empty")
    return explain_dialogue(ck.model, ck.processor, match[0], world, out, max_new_tokens=ck.config.eval.max_new_tokens)


def write_report(result: dict, record: dict, path: Path, gates_note: str | None, image_note: str | None) -> None:
    lines = [f"# Where the answers look: {result['id']}", "",
             "Teacher-forced pass over the gold history. Shares of each answer's attention (mean over heads, "
             f"over its reply's positions and over the {result['layers']} decoder layers).", "",
             "| round | question | gold | greedy | needs | image | question | earlier rounds (all) | "
             "dependency round | its rank among earlier |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rounds"]:
        dep = "-" if r["depends_on"] is None else f"r{r['depends_on']} ({r['distance']} back)"
        share = "-" if r["dependency_share"] is None else f"{r['dependency_share']:.2f}"
        rank = "-" if r["dependency_rank"] is None else f"{r['dependency_rank']} of {r['round']}"
        lines.append(f"| {r['round']} | {r['question']} | {r['gold']} | {'ok' if r['correct'] else r['pred'] + ' ✗'} | "
                     f"{dep} | {r['image']:.2f} | {r['question_share']:.2f} | {sum(r['earlier_rounds'].values()):.2f} | "
                     f"{share} | {rank} |")
    lines += ["", "## Figures", ""]
    captions = {"attention_rounds.png": "Attention of each answer (rows) to the image, each earlier round, its own "
                                        "question (dot) and its reply so far; the round it depends on is boxed. "
                                        "First panel: mean over layers; then one panel per layer.",
                "attention_image.png": "Attention of each answer over the image patches (the object asked about, "
                                       "where there is one, dashed circle).",
                "fusion_gates.png": "The fusion's gates / weights for this example."}
    for f in result["files"]:
        lines += [f"- `{f}`: {captions.get(f, '')}", "", f"![{f}]({f})", ""]
    if image_note:
        lines += [f"No image heatmap: {image_note}.", ""]
    if gates_note:
        lines += [f"No fusion plot: {gates_note}.", ""]
    path.write_text("\n".join(lines) + "\n")
