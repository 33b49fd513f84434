"""`mmdialog report RUN_DIR [RUN_DIR ...] --out report.html`: one self-contained HTML page (images inline).

What it reads from each run directory (whatever is there):

    metrics.json, or eval/metrics.json    the evaluation (`mmdialog eval` or the demo); the richer one wins
    train_log.jsonl                       the training curve
    transcript.md                         a chat with the model (the demo writes one)
    **/explain.json (+ its PNGs)          attention views written by `mmdialog explain`

The page holds the training curves, each run's accuracy tables and plots (by distance and by round, gold vs
own history, ablations, held-out splits, ranking), its explain heatmaps, and with several runs a side-by-side
comparison table and plot first.
"""

from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from pathlib import Path

from mmdialog.errors import MMDialogError
from mmdialog.eval.multiturn import FINE_BUCKETS
from mmdialog.eval.summary import get, lab_markdown

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%}
code{background:#f4f4f4;padding:0 3px}h1{border-bottom:2px solid #4878cf}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.run{border-left:4px solid #4878cf;padding-left:1em;margin:2em 0}nav a{margin-right:1em}"""


def find_metrics(run: Path) -> Path | None:
    """The run's evaluation: the metrics.json with the most sections, the run's own or its eval/ one."""
    cands = [p for p in (run / "metrics.json", run / "eval" / "metrics.json") if p.is_file()]
    if not cands:
        return None
    return max(cands, key=lambda p: len(json.loads(p.read_text())))


def _log_series(run: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every train_log.jsonl record that has `key`."""
    f = run / "train_log.jsonl"
    if not f.is_file():
        return []
    out = []
    for line in f.read_text().splitlines():
        try:
            rec = json.loads(line)
            out.append((int(rec["step"]), float(rec[key])))
        except (ValueError, KeyError):
            continue
    return out


def read_losses(run: Path) -> list[tuple[int, float]]:
    return _log_series(run, "loss")


def read_validation(run: Path) -> list[tuple[int, float]]:
    """(step, val_accuracy) of the validation records train.eval_every wrote into train_log.jsonl."""
    return _log_series(run, "val_accuracy")


def _img(path: Path, alt: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(md: str, images: dict[str, Path], heading_shift: int = 1) -> str:
    """The markdown subset summary.md and explain.md use: headings, tables, paragraphs, images."""
    out, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|(\s*-+\s*\|)+", r.replace(":", ""))]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if m := re.fullmatch(r"(#+)\s+(.*)", line):
            level = min(len(m[1]) + heading_shift, 6)
            out.append(f"<h{level}>{_inline(m[2])}</h{level}>")
        elif m := re.fullmatch(r"!\[(.*?)\]\((.*?)\)", line.strip()):
            path = images.get(m[2])
            out.append(_img(path, m[1]) if path and path.is_file() else f"<p>(missing figure {html.escape(m[2])})</p>")
        elif line.startswith("- "):
            out.append(f"<p>• {_inline(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def comparison(names: list[str], metrics: list[dict]) -> str:
    """Side-by-side table of the headline numbers of several runs."""
    rows = [("accuracy (gold history)", ("accuracy", "overall"))]
    rows += [(f"distance {b}", ("accuracy", "by_distance_fine", b)) for b in FINE_BUCKETS]
    rows += [("gold history (any data)", ("gold_history", "overall")),
             ("own history (any data)", ("own_history", "overall")),
             ("needs history (distance ≥ 1)", ("accuracy", "needs_history")),
             ("own history", ("modes", "own_history", "accuracy", "overall")),
             ("gap gold - own", ("gap", "overall")),
             ("own history, scripted answers", ("own_history_scripted", "overall")),
             ("dialogues fully right", ("accuracy", "dialogues_fully_right")),
             ("first failed round (normalised)", ("accuracy", "first_failed_round")),
             ("history gain", ("history_gain", "overall")),
             ("no_media", ("ablations", "no_media", "accuracy", "overall")),
             ("MRR", ("ranking", "mrr")), ("R@1", ("ranking", "r@1")), ("NDCG", ("ranking", "ndcg"))]
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    body = ""
    for label, path in rows:
        vals = [get(m, *path) for m in metrics]
        if all(v is None for v in vals):
            continue
        stds = [get(m.get("std"), *path) if isinstance(m.get("std"), dict) else None for m in metrics]
        cells = "".join("<td>-</td>" if v is None else f"<td>{v:.3f}{f' ± {s:.3f}' if s is not None else ''}</td>"
                        for v, s in zip(vals, stds))
        body += f"<tr><td>{html.escape(label)}</td>{cells}</tr>"
    return f"<table>{head}{body}</table>"


def build_report(run_dirs: list[str | Path], out: str | Path, title: str = "mmdialog report") -> Path:
    from mmdialog.eval.plots import plot_file, plot_lab, plot_losses_with_validation, plot_run_comparison
    from mmdialog.eval.summary import file_markdown

    runs = [Path(r) for r in run_dirs]
    for r in runs:
        if not r.is_dir():
            raise MMDialogError(f"run directory not found: {r}")
    names = _names(runs)
    found = {n: (r, find_metrics(r)) for n, r in zip(names, runs)}
    if not any(mp for _, mp in found.values()) and not any(read_losses(r) for r in runs):
        raise MMDialogError(f"nothing to report: no metrics.json or train_log.jsonl in {', '.join(map(str, runs))}")
    parts = [f"<h1>{html.escape(title)}</h1>", "<nav>" + "".join(f'<a href="#{_anchor(n)}">{html.escape(n)}</a>'
                                                                for n in names) + "</nav>"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        losses = {n: read_losses(r) for n, r in zip(names, runs)}
        with_metrics = [(n, json.loads(mp.read_text())) for n, (_, mp) in found.items() if mp]
        if len(with_metrics) > 1:
            parts.append("<h2>Comparison</h2>")
            parts.append(comparison([n for n, _ in with_metrics], [m for _, m in with_metrics]))
            parts.append(_img(plot_run_comparison(dict(with_metrics), tmp / "comparison.png"), "comparison"))
        if any(losses.values()):
            parts.append("<h2>Training curves</h2>")
            val = {n: read_validation(r) for n, r in zip(names, runs)}
            parts.append(_img(plot_losses_with_validation({n: v for n, v in losses.items() if v}, val,
                                                          tmp / "losses.png"), "training loss"))
        for n, (run, mp) in found.items():
            parts.append(f'<div class="run" id="{_anchor(n)}"><h2>{html.escape(n)}</h2>'
                         f"<p><code>{html.escape(str(run))}</code></p>")
            if mp:
                m = json.loads(mp.read_text())
                d = tmp / _anchor(n)
                d.mkdir()
                std = m.get("std") if isinstance(m.get("std"), dict) else None
                if m.get("kind") == "file":  # `mmdialog eval --data`
                    figs = plot_file(m, d)
                    md = file_markdown(m, title=f"Evaluation ({mp.relative_to(run)})", figures=[f.name for f in figs])
                else:
                    figs = plot_lab(m, d, std)
                    md = lab_markdown(m, title=f"Evaluation ({mp.relative_to(run)})", std=std,
                                      figures=[f.name for f in figs], runs=m.get("runs", []))
                parts.append(markdown_to_html(md, {f.name: f for f in figs}, heading_shift=2))
                train = m.get("train") or {}
                if train:
                    parts.append(f"<p>Training: {train.get('steps')} steps in {train.get('wall_seconds', 0):.0f}s, "
                                 f"final loss {train.get('final_loss', float('nan')):.4f}.</p>")
            for ex in sorted(run.rglob("explain.json")):
                md_file = ex.parent / "explain.md"
                if md_file.is_file():
                    imgs = {p.name: p for p in ex.parent.glob("*.png")}
                    parts.append(markdown_to_html(md_file.read_text(), imgs, heading_shift=2))
            transcript = run / "transcript.md"
            if transcript.is_file():
                text = re.sub(r"!\[.*?\]\(.*?\)", "", transcript.read_text())
                parts.append(markdown_to_html(text, {}, heading_shift=2))
            parts.append("</div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _names(runs: list[Path]) -> list[str]:
    """Short distinct names: the directory name, or as many trailing path parts as make them distinct."""
    for depth in range(1, 6):
        names = ["/".join(r.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            return names
    return [str(r) for r in runs]


def _anchor(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "run"
