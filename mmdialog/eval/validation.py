"""Validation during training (train.eval_every / train.eval_file): the gold-history scorer of `mmdialog eval`
on held-out records. The trainer sits below eval and does not import it: the recipes hand Validator.build to
train() (its `validator` argument), which calls it once the model is set up when the config asks for validation.

    train.eval_file          a LLaVA / ShareGPT / OpenAI file, read and checked as `mmdialog eval --data` reads it
                             (its media relative to data.media_root when set, else to the file's directory);
                             empty: the built-in world's val split, when train.eval_every is set
    train.eval_format        auto | llava | sharegpt | openai
    train.eval_every         validate every N optimizer steps (0: only at the end, and only with an eval_file)
    train.eval_max_records   the first N valid records (0: all)

Each validation is one teacher-forced pass (eval/teacher_forced.py): val_accuracy is the share of assistant
turns greedy decoding would answer exactly right after the gold history, val_loss the mean negative
log-likelihood per reply token (<|end|> included). The trainer writes them into train_log.jsonl as
{"step", "val_accuracy", "val_loss", "val_turns", "val_seconds"} and shows val_accuracy on the progress bar.
"""

from __future__ import annotations

import time

import torch

from mmdialog.data.processor import Processor
from mmdialog.data.worlds.shapes import load_split
from mmdialog.errors import MMDialogError
from mmdialog.eval.contexts import Context, record_image
from mmdialog.eval.datafile import read_eval_file
from mmdialog.eval.teacher_forced import TeacherForcedScorer


class Validator:
    def __init__(self, records: list[dict], images: dict, processor, max_new_tokens: int, source: str):
        self.records, self.images, self.processor = records, images, processor
        self.max_new_tokens, self.source = max_new_tokens, source

    @classmethod
    def build(cls, cfg, model, tokenizer, world=None, log=None) -> "Validator":
        """The run's validator: on train.eval_file when set, else on the world's val split (the trainer calls
        this only when the config asks for validation: train/trainer.py's wants_validation)."""
        tc = cfg.train
        processor = Processor.for_model(tokenizer, model, max_length=cfg.model.decoder.max_seq_len)
        if tc.eval_file:
            data = read_eval_file(tc.eval_file, tc.eval_format, cfg.data.media_root or None, processor=processor,
                                  modalities=model.encoders.keys(), max_records=tc.eval_max_records)
            if not data.records:
                first = f" (first: {data.invalid[0]['id']}: {data.invalid[0]['reason']})" if data.invalid else ""
                raise MMDialogError(f"train.eval_file={tc.eval_file}: no valid record to validate on, "
                                    f"{len(data.invalid)} invalid{first}")
            if log:
                log(f"validation: {data.summary()}")
            return cls(data.records, {}, processor, cfg.eval.max_new_tokens, str(tc.eval_file))
        records = load_split(world, "val")
        records = records[:tc.eval_max_records] if tc.eval_max_records else records
        images = {r["id"]: record_image(r, world) for r in records}
        for im in images.values():
            im.load()  # read each picture once, not at every validation
        return cls(records, images, processor, cfg.eval.max_new_tokens, f"{world}/val.jsonl")

    def __call__(self, model) -> dict:
        t = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            scorer = TeacherForcedScorer(model, self.processor, max_new_tokens=self.max_new_tokens)
            ctx = Context()
            seqs = [s for rec in self.records for s in ctx.sequences(rec, self.images.get(rec["id"]))]
            with torch.no_grad():
                scores = [s for res in scorer.score(seqs) for s in res]
        finally:
            model.train(was_training)
        tokens = sum(s.tokens for s in scores)
        return {"val_accuracy": sum(s.correct for s in scores) / max(len(scores), 1),
                "val_loss": -sum(s.logprob for s in scores) / max(tokens, 1), "val_turns": len(scores),
                "val_seconds": round(time.perf_counter() - t, 3)}
