"""`mmdialog {demo,world,train,eval,chat}`: one function per subcommand; errors print one clear line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmdialog.errors import MMDialogError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _config(args):
    from mmdialog.config import load_config

    path = args.config or (DEMO_CONFIG if DEMO_CONFIG.is_file() else None)
    return load_config(path, args.overrides)


def cmd_world(args) -> None:
    from mmdialog.data.worlds.shapes import generate_world

    summary = generate_world(Path(args.out), dialogues=args.dialogues, seed=args.seed, image_size=args.image_size,
                             rounds=args.rounds)
    print(json.dumps(summary, indent=2))


def cmd_train(args) -> None:
    from mmdialog.demo import ensure_world
    from mmdialog.train.trainer import prepare, train

    cfg = _config(args)
    out = Path(args.out)
    world = ensure_world(cfg, out)
    tokenizer, model, _, dataset = prepare(cfg, world)
    result = train(cfg, model, tokenizer, dataset, out, meta={"world": str(world.resolve())})
    print(f"trained {result.steps} steps in {result.wall_seconds:.0f}s, final loss {result.final_loss:.4f}; "
          f"checkpoint: {out / 'checkpoint'}")


def cmd_eval(args) -> None:
    from mmdialog.data.worlds.shapes import load_split
    from mmdialog.eval.multiturn import evaluate, write_predictions
    from mmdialog.train.checkpoint import load_checkpoint

    ck = load_checkpoint(args.checkpoint)
    world = Path(args.world or ck.meta.get("world", ""))
    if not (world / "world.json").is_file():
        raise MMDialogError(f"no world at {world!s}; pass --world DIR")
    records = load_split(world, args.split)
    if args.max_dialogues:
        records = records[: args.max_dialogues]
    summary, preds = evaluate(ck.model, ck.processor, records, world, max_new_tokens=ck.config.eval.max_new_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    write_predictions(preds, out / "predictions.jsonl")
    acc = summary["accuracy"]
    print(f"accuracy {acc['overall']:.3f} over {summary['counts']['overall']} questions; by distance: "
          + ", ".join(f"{k}: {v:.3f}" if v is not None else f"{k}: -" for k, v in acc["by_distance"].items()))
    print(f"wrote {out / 'metrics.json'}")


def cmd_chat(args) -> None:
    from mmdialog.chat.cli import chat_loop
    from mmdialog.train.checkpoint import load_checkpoint

    ck = load_checkpoint(args.checkpoint)
    chat_loop(ck.model, ck.processor, max_new_tokens=args.max_new_tokens)


def cmd_demo(args) -> None:
    from mmdialog.demo import run_demo

    cfg = _config(args)
    m = run_demo(cfg, Path(args.out))
    acc = m["accuracy"]
    print(f"\naccuracy overall {acc['overall']:.3f}; by distance "
          + ", ".join(f"{k}: {v:.3f}" for k, v in acc["by_distance"].items() if v is not None)
          + f"; needs history {acc['needs_history']:.3f}")
    print(f"train: {m['train']['steps']} steps, {m['train']['wall_seconds']:.0f}s, {m['train']['tokens_per_second']:.0f} tokens/s; "
          f"model: {m['model']['parameters']:,} parameters")
    print(f"wrote {args.out}/metrics.json, transcript.md, plots.png, checkpoint/")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmdialog", description="Multimodal multi-turn dialogue models: build, train, evaluate, chat.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp):
        sp.add_argument("--config", help="YAML config (default: configs/demo.yaml)")
        sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides such as train.max_steps=100")

    sp = sub.add_parser("demo", help="generate the world, train, evaluate, write a transcript and plots",
                        description="The main job: world -> training -> multi-turn evaluation -> transcript + plots.")
    sp.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    with_config(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("world", help="write the built-in shapes world (JSONL + PNG, train/val/test)",
                        description="Generate the seeded shapes world: same seed, same bytes.")
    sp.add_argument("--out", required=True, help="directory to write")
    sp.add_argument("--dialogues", type=int, default=1000, help="number of dialogues over all splits")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--image-size", type=int, default=64)
    sp.add_argument("--rounds", type=int, default=8, help="question rounds per dialogue after the caption")
    sp.set_defaults(func=cmd_world)

    sp = sub.add_parser("train", help="train a model from a config", description="Train; writes OUT/checkpoint and OUT/train_log.jsonl.")
    sp.add_argument("--out", default="runs/train", help="output directory")
    with_config(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("eval", help="multi-turn accuracy of a checkpoint by dependency distance, round, family",
                        description="Greedy answers to every question with the gold history; writes OUT/metrics.json.")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--world", help="world directory (default: the one the checkpoint was trained on)")
    sp.add_argument("--split", default="test", choices=["train", "val", "test"])
    sp.add_argument("--max-dialogues", type=int, default=0, help="evaluate only the first N dialogues (0: all)")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("chat", help="terminal chat with a checkpoint (KV cache kept across turns)",
                        description="Chat in the terminal. Commands: /image PATH, /reset, /quit.")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--max-new-tokens", type=int, default=32)
    sp.set_defaults(func=cmd_chat)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MMDialogError as e:
        print(f"mmdialog {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
