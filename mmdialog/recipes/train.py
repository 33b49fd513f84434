"""`mmdialog train`: the built-in world (generated into OUT/world when missing) or data.train_file -> train()
-> OUT/checkpoint, under torchrun too; OUT/skipped.jsonl lists the conversations left out, with the reason."""

from __future__ import annotations

from pathlib import Path

from mmdialog.config import Config
from mmdialog.errors import MMDialogError
from mmdialog.recipes.world import ensure_world


def main(cfg: Config, out: str | Path, *, resume: bool = False) -> int:
    """Train cfg's model; 0 when done, 143 when stopped by a signal (continue with --resume)."""
    from mmdialog.data.dataset import report_skipped
    from mmdialog.eval.validation import Validator
    from mmdialog.modelio import world_meta
    from mmdialog.train.checkpoint import latest_training_checkpoint
    from mmdialog.train.distributed import destroy_distributed, init_distributed
    from mmdialog.train.trainer import prepare, resolve_device, train

    out = Path(out)
    # under torchrun: join the group first; process 0 writes the world while the others wait for it
    dist = init_distributed(resolve_device(cfg.train.device).type)
    try:
        world = None
        if not cfg.data.train_file:
            if dist.is_main:
                world = ensure_world(cfg, out, progress=dist.is_main)
            dist.barrier()
            world = world or ensure_world(cfg, out)
        tokenizer = None
        latest = latest_training_checkpoint(out / "checkpoints") if resume else None
        if latest is not None:  # the run's own tokenizer, whatever the data would train now
            from mmdialog.data.tokenizer import ChatTokenizer

            tokenizer = ChatTokenizer.load(latest)
        tokenizer, model, _, dataset = prepare(cfg, world, progress=dist.is_main, tokenizer=tokenizer)
        if len(dataset) < cfg.train.batch_size:
            raise MMDialogError(f"{len(dataset)} usable conversations, fewer than train.batch_size={cfg.train.batch_size}; "
                                + dataset.report())
        _check_same(dist, tokenizer)
        meta = {"data": _data_files(cfg)} if world is None else world_meta(world)
        log = print if dist.is_main else (lambda *a, **k: None)
        result = train(cfg, model, tokenizer, dataset, out, meta=meta, resume=resume, dist=dist,
                       progress=dist.is_main, log=log, validator=Validator.build)
    finally:
        destroy_distributed()
    if not dist.is_main:
        return 143 if result.stopped else 0
    if result.stopped:
        print(f"stopped by {result.stopped} at step {result.steps}; continue with: mmdialog train ... --resume")
        return 143  # 128 + SIGTERM: the job did not finish
    print(f"trained {result.steps} steps in {result.wall_seconds:.0f}s, final loss {result.final_loss:.4f}; "
          f"checkpoint: {out / 'checkpoint'}")
    report_skipped(dataset.skipped, out / "skipped.jsonl")
    return 0


def _check_same(dist, tokenizer) -> None:
    """Every process must have built the same tokenizer (and so the same vocabulary and data)."""
    if not dist.enabled:
        return
    import hashlib

    digest = hashlib.sha1(tokenizer.tok.to_str().encode()).hexdigest()
    digests = dist.gather(digest)
    if len(set(digests)) > 1:
        raise MMDialogError(f"the processes built different tokenizers ({digests}); pass data.tokenizer=DIR")


def _data_files(cfg):
    """meta's "data": the training file's path, or the list of them (data.train_file: several, or a glob)."""
    from mmdialog.data.formats import expand_files

    files = [str(p.resolve()) for p in expand_files(cfg.data.train_file)]
    return files[0] if isinstance(cfg.data.train_file, str) and len(files) == 1 else files
