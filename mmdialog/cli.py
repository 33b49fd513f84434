"""`mmdialog {demo,world,train,pretrain,eval,explain,report,experiment,chat,data,export,serve}`: the flags of each
subcommand, and one function per subcommand that calls what does the work (a recipe in mmdialog/recipes/ or a
package's function) with them; errors print one clear line.

Each command declares its options once, as a dataclass of `option` fields (mmdialog/options.py): its flags are
built from it, and its values go to the function or config dataclass that does the work under that one's
parameter names, so adding an option is one field. demo, train, pretrain and experiment also take a config
(--config and KEY=VALUE overrides: `config_option` and `overrides_option`), which `_config` loads.
tests/test_cli.py checks that the fields are the flags and that their defaults are the functions'."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mmdialog.config import EvalConfig, WorldConfig
from mmdialog.config.sampling import SamplingParams
from mmdialog.errors import MMDialogError
from mmdialog.options import add_options, kwargs_for, option, read

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
PRETRAIN_CONFIG = DEMO_CONFIG.parent / "pretrain.yaml"


def config_option(default: Path = DEMO_CONFIG, help: str | None = None):
    """The --config field of a command that takes a config (none given: `default`, when it exists)."""
    return option(None, help or f"YAML config (default: configs/{default.name})")


def overrides_option(example: str = "train.max_steps=100"):
    """The KEY=VALUE positionals of a command that takes a config: overrides of its keys."""
    return option([], f"config overrides such as {example}", positional=True, nargs="*", metavar="KEY=VALUE")


def _config(o, default: Path = DEMO_CONFIG):
    """The config of options with `config` and `overrides` fields: the file (or `default`) with the overrides."""
    from mmdialog.config import load_config

    path = o.config or (default if default.is_file() else None)
    return load_config(path, o.overrides)


def _unless_negative(n: int) -> int | None:
    """-1 on the command line: None (all) for the lab."""
    return None if n < 0 else n


def _or_empty(values):
    """A list flag not given (None): ()."""
    return values or ()


@dataclass(kw_only=True)
class WorldOptions:
    """`mmdialog world`: generate_world's arguments, with the defaults of a config's world section."""

    out: str = option(help="directory to write", required=True)
    dialogues: int = option(WorldConfig.dialogues, f"number of dialogues over all splits (default: "
                                                   f"{WorldConfig.dialogues}, as world.dialogues)")
    seed: int = option(WorldConfig.seed)
    image_size: int = option(WorldConfig.image_size)
    rounds: int = option(8, "question rounds per dialogue after the caption")
    held_out: list[str] | None = option(
        None, "add held-out test splits, comma-separated or repeated: long (test_long: at least twice the rounds), "
              "combos (test_combos: shape-colour pairs that train/val/test never show; this changes "
              "train/val/test), paraphrase (test_paraphrase: questions in unseen wordings), or all",
        action="append", metavar="KINDS", convert=_or_empty)
    held_out_dialogues: int | None = option(None, "dialogues per held-out split (default: as many as test)")
    phrasing: str = option(WorldConfig.phrasing,
                           "ordinary (default): questions in the wordings and forms people type (color/colour, "
                           "objects/things, big/large, lower case, no '?', short follow-ups) and a few turns not about "
                           "the picture; canonical: every question in its template's words",
                           choices=["ordinary", "canonical"])
    long_rounds: int | None = option(None, "question rounds of test_long (default and minimum: 2 x --rounds)")
    modalities: str = option("image", "image (default: the picture world only), or with audio and/or video (e.g. "
                                      "image,audio,video or all): also write media dialogues to OUT/media/ "
                                      "(ShareGPT-style JSONL): clips of moving shapes, beeps, and second pictures in "
                                      "later turns", metavar="LIST")
    media_dialogues: int | None = option(None, "media dialogues over all splits (default: as many as --dialogues); "
                                               "with --modalities image: second pictures only")


def cmd_world(args) -> None:
    from mmdialog.data.worlds.shapes import generate_world

    o = read(WorldOptions, args)
    summary = generate_world(Path(o.out), **kwargs_for(o, generate_world))
    print(json.dumps(summary, indent=2))


@dataclass(kw_only=True)
class TrainOptions:
    """`mmdialog train`: the train recipe's main's arguments, and its config."""

    out: str = option("runs/train", "output directory")
    resume: bool = option(False, "continue from the latest checkpoint in OUT/checkpoints/ (weights, optimizer, "
                                 "schedule, RNG states, data position); starts afresh when there is none")
    config: str | None = config_option()
    overrides: list[str] = overrides_option()


def cmd_train(args) -> int:
    from mmdialog.recipes.train import main

    o = read(TrainOptions, args)
    return main(_config(o), **kwargs_for(o, main))


@dataclass(kw_only=True)
class PretrainOptions:
    """`mmdialog pretrain`: the pretrain recipe's main's arguments, and its config (default: configs/pretrain.yaml)."""

    out: str = option("runs/pretrain", "output directory (default: runs/pretrain)")
    resume: bool = option(False, "continue from the latest checkpoint in OUT/checkpoints/ (needs train.save_every)")
    config: str | None = config_option(PRETRAIN_CONFIG)
    overrides: list[str] = overrides_option("pretrain.objectives.masked=0 or train.max_steps=100")


def cmd_pretrain(args) -> int:
    from mmdialog.recipes.pretrain import main

    o = read(PretrainOptions, args)
    return main(_config(o, default=PRETRAIN_CONFIG), **kwargs_for(o, main))


ABLATIONS = ["no_history", "last_1", "last_2", "last_4", "shuffled_history", "no_media"]


@dataclass(kw_only=True)
class EvalOptions:
    """`mmdialog eval`: run_eval's arguments (world) and run_file_eval's (--data); -1 means all (None)."""

    checkpoint: list[str] = option(help="checkpoint or export directory; several (e.g. one per training seed): "
                                        "mean and std", required=True, nargs="+", metavar="CKPT")
    out: str = option(required=True)
    world: str | None = option(None, "world directory (default: the one the checkpoint was trained on)")
    data: str | None = option(None, "a dataset file (LLaVA JSON, ShareGPT or OpenAI chat JSONL) to evaluate instead "
                                    "of the world", metavar="FILE")
    format: str = option("auto", "--data's format (default: detected from its first records)",
                         choices=["auto", "llava", "sharegpt", "openai"], to="fmt")
    media_root: str | None = option(None, "--data's media paths are relative to it (default: the file's directory)")
    group_by: list[str] | None = option(
        None, "--data: split accuracy by these per-turn labels (meta.rounds[i] or the turn's labels); numeric ones "
              "bucketed 0 / 1 / 2 / 3-5 / 6+, missing ones as none", nargs="+", metavar="LABEL",
        convert=lambda v: tuple(v or ()))
    match: str = option("normalised", "--data: how a reply is matched with the gold one (normalised: case, "
                                      "surrounding whitespace, final punctuation, number words as digits); token F1 "
                                      "is always reported", choices=["exact", "normalised", "contains"])
    split: str = option(EvalConfig.split, choices=["train", "val", "test", "test_long", "test_combos",
                                                   "test_paraphrase"])
    seeds: list[int] | None = option(None, "evaluate on a fresh sample of the split drawn with each seed (written to "
                                           "OUT/worlds/), and report mean and std over them", nargs="+",
                                     metavar="SEED", convert=_or_empty)
    max_dialogues: int = option(EvalConfig.max_dialogues, "evaluate only the first N dialogues (with --data: the "
                                                         "first N valid records; 0: all)")
    own_history: int = option(-1, "run the real chat (own history, generated) on the first N dialogues (default: "
                                  "all; 0: skip)", metavar="N", convert=_unless_negative)
    ranking: int = option(-1, "rank candidate answers on the first N dialogues (default: all; 0: skip)", metavar="N",
                          convert=_unless_negative)
    ablations: list[str] = option(ABLATIONS, "ablations to run (default: all six; none: skip)", nargs="*",
                                  metavar="NAME", convert=tuple)
    ablation_dialogues: int = option(-1, "run the ablations on the first N dialogues (default: all)", metavar="N",
                                     convert=_unless_negative)
    no_heldout: bool = option(False, "skip the world's held-out splits", to="heldout", convert=lambda v: not v)
    gold_method: str = option("teacher_forced", "how gold-history answers are decided: teacher forced (default, one "
                                                "batched pass) or generated turn by turn (the slow reference; same "
                                                "verdicts up to tokenisation)", choices=["teacher_forced", "generate"])


def cmd_eval(args) -> None:
    from mmdialog.eval.run import run_eval, run_file_eval

    o = read(EvalOptions, args)
    if o.data:
        if len(o.checkpoint) > 1:
            raise MMDialogError(f"--data evaluates one checkpoint, got {len(o.checkpoint)}")
        run_file_eval(checkpoint=o.checkpoint[0], max_records=o.max_dialogues,
                      **kwargs_for(o, run_file_eval, skip={"checkpoint"}))
        print(f"wrote {Path(o.out) / 'metrics.json'} and {Path(o.out) / 'summary.md'}")
        return
    if o.world and Path(o.world).is_file():
        raise MMDialogError(f"--world takes a world directory; {o.world} is a file: pass it as --data {o.world}")
    run_eval(o.checkpoint, **kwargs_for(o, run_eval))
    print(f"wrote {Path(o.out) / 'metrics.json'} and {Path(o.out) / 'summary.md'}")


@dataclass(kw_only=True)
class ExplainOptions:
    """`mmdialog explain`: explain_checkpoint's arguments."""

    checkpoint: str = option(required=True)
    dialogue: str = option(help="dialogue id, e.g. test-00012", required=True, metavar="ID")
    out: str = option(required=True)
    world: str | None = option(None, "world directory (default: the one the checkpoint was trained on)")
    split: str | None = option(None, "split holding the dialogue (default: from the id, e.g. test for test-00012)")


def cmd_explain(args) -> None:
    from mmdialog.explain import explain_checkpoint

    o = read(ExplainOptions, args)
    result = explain_checkpoint(**kwargs_for(o, explain_checkpoint))
    print(f"wrote {Path(o.out) / 'explain.md'}: " + ", ".join(result["files"]))


@dataclass(kw_only=True)
class ReportOptions:
    """`mmdialog report`: build_report's arguments."""

    runs: list[str] = option(help="directories holding metrics.json (or eval/metrics.json), train_log.jsonl, explain "
                                  "outputs", positional=True, nargs="+", metavar="RUN_DIR", to="run_dirs")
    out: str = option(help="the HTML file to write", required=True)


def cmd_report(args) -> None:
    from mmdialog.eval.report import build_report

    print(f"wrote {build_report(**kwargs_for(read(ReportOptions, args), build_report))}")


FUSIONS = ["concat", "cross_attention", "interactive", "hierarchical", "dynamic", "resampler"]


@dataclass(kw_only=True)
class ExperimentOptions:
    """`mmdialog experiment`: the arguments of the two experiments' main (each takes the ones it knows), and the
    config (--config and KEY=VALUE, as demo and train take them)."""

    name: str = option(help="the experiment to run", positional=True, choices=["multiturn", "fusion"])
    out: str = option(required=True)
    budget_minutes: float = option(30.0, "wall-clock budget; three quarters are split evenly between the training "
                                         "runs (default 30; 0 trains each run train.max_steps steps instead: the "
                                         "same work whatever else the machine does)")
    seeds: list[int] | None = option(None, "training seeds per variant or fusion (default: 0 1 for multiturn, 0 for "
                                           "fusion)", nargs="+")
    fusions: list[str] = option(FUSIONS, "fusion: the fusions to compare (default: all six)", nargs="+",
                                choices=FUSIONS, convert=tuple)
    variants: list[str] = option(["every_turn", "last_turn", "every_turn+augment"], nargs="+",
                                 choices=["every_turn", "last_turn", "every_turn+augment", "last_turn+augment"],
                                 convert=tuple)
    policies: list[str] = option(["full", "last_k:4", "token_budget:128", "summary:3"],
                                 "context policies at inference (as chat --policy takes them)", nargs="+",
                                 convert=tuple)
    eval_dialogues: int = option(300, "test dialogues each run is evaluated on")
    own_dialogues: int = option(100, "multiturn: of those, the ones chatted through (own history) under each policy")
    config: str | None = config_option()
    overrides: list[str] = overrides_option()


def cmd_experiment(args) -> int:
    o = read(ExperimentOptions, args)
    cfg = _config(o)
    if o.name == "fusion":
        from mmdialog.recipes.fusion_experiment import main

        return main(cfg, seeds=o.seeds or [0], **kwargs_for(o, main, skip={"seeds"}))
    from mmdialog.recipes.experiment import main

    return main(cfg, seeds=o.seeds or [0, 1], **kwargs_for(o, main, skip={"seeds"}))


@dataclass(kw_only=True)
class ChatOptions:
    """`mmdialog chat`: the sampling fields are SamplingParams', with its defaults (config/sampling.py, without
    torch), the rest chat_loop's. --stop starts as None (argparse appends to it) and goes on as SamplingParams'
    empty list."""

    checkpoint: str = option(required=True)
    max_new_tokens: int = option(SamplingParams.max_new_tokens)
    policy: str = option("full", "context policy: full, last_k:K, token_budget:TOKENS or summary:KEEP (default: full)")
    system: str | None = option(None, "a system prompt for the conversation")
    temperature: float = option(SamplingParams.temperature, "0 (default): greedy")
    top_k: int = option(SamplingParams.top_k, "0 (default): off")
    top_p: float = option(SamplingParams.top_p, "1.0 (default): off")
    repetition_penalty: float = option(SamplingParams.repetition_penalty, "1.0 (default): off")
    stop: list[str] | None = option(None, "end a reply at TEXT (repeatable)", action="append", metavar="TEXT",
                                    convert=lambda v: v or [])
    seed: int | None = option(SamplingParams.seed, "seed for sampling (same seed, same replies)")


def cmd_chat(args) -> None:
    from mmdialog.chat.cli import chat_loop
    from mmdialog.chat.policies import parse_policy
    from mmdialog.modelio import load_any

    o = read(ChatOptions, args)
    policy = parse_policy(o.policy)
    sampling = SamplingParams(**kwargs_for(o, SamplingParams))
    ck = load_any(o.checkpoint)
    chat_loop(ck.model, ck.processor, policy=policy, sampling=sampling, **kwargs_for(o, chat_loop, skip={"policy"}))


@dataclass(kw_only=True)
class ServeOptions:
    """`mmdialog serve`: serve()'s arguments, with its defaults (tests/test_cli.py checks them)."""

    checkpoint: str = option(help="a training checkpoint or an export", required=True)
    host: str = option("127.0.0.1", "interface to listen on (default: %(default)s, this machine only)")
    port: int = option(8000, "port to listen on (default: %(default)s)")
    api_key: list[str] | None = option(
        None, "require 'Authorization: Bearer KEY' on the /v1 endpoints; /health and the page at / (which asks for "
              "the key) stay open. Repeat it for several clients: each key's cached sessions are its own (default: "
              "$MMDIALOG_API_KEY, else none: anyone who reaches the port may use it)", action="append", metavar="KEY")
    allowed_host: list[str] = option([], "a name the Host header may carry besides IP addresses, localhost and --host "
                                         "(repeatable; other names are refused, against DNS rebinding) (default: "
                                         "none)", action="append", metavar="NAME", to="allowed_hosts")
    allow_dir: str | None = option(None, "let requests name local image files under this directory (default: none)")
    model_name: str | None = option(None, "the model id clients send and /v1/models lists (default: mmdialog)")
    max_new_tokens: int = option(64, "reply length when a request gives no max_tokens (default: %(default)s)")
    cache_mb: int = option(512, "memory for what is kept between requests: sessions' KV caches, token ids and "
                                "conversations, and encoded images; least recently used go first (default: "
                                "%(default)s)")
    max_body_mb: float = option(16, "largest request body accepted (default: %(default)s)")
    max_images: int = option(8, "most images in one request (default: %(default)s)")
    max_image_pixels: int = option(4096 * 4096, "most pixels (width x height) of one image, read from its header "
                                                "before it is decoded (default: %(default)s)")
    workers: int = option(4, "requests parsed, tokenised and generated at once (default: %(default)s)")
    queue: int = option(64, "requests that may wait for a worker; beyond them 429 with Retry-After (default: "
                            "%(default)s)")
    timeout: float = option(300, "seconds a request may take, waiting included, before it gets 504 (default: "
                                 "%(default)s)", to="timeout_s")


def cmd_serve(args) -> None:
    import os

    from mmdialog.serve import serve

    o = read(ServeOptions, args)
    keys = o.api_key or [k for k in [os.environ.get("MMDIALOG_API_KEY")] if k]
    serve(**{**kwargs_for(o, serve), "api_key": keys})


@dataclass(kw_only=True)
class DataCheckOptions:
    """`mmdialog data check`: the data-check recipe's arguments."""

    files: list[str] = option(help="JSON array or JSON Lines file", positional=True, nargs="+", metavar="FILE")
    format: str = option("auto", "record format (default: auto, from the first records' fields)",
                         choices=["auto", "llava", "sharegpt", "openai"], to="fmt")
    media_root: str | None = option(None, "media paths are relative to this directory and may not leave it "
                                          "(default: each file's directory)")
    max_length: int = option(0, "longest record: tokens with --checkpoint (default: its max_seq_len), else "
                                "characters")
    checkpoint: str | None = option(None, "a checkpoint or export: count tokens with its processor, and refuse media "
                                          "it cannot encode, exactly as training on it would")
    json: bool = option(False, "print a JSON object: records, valid, invalid [{file, line, reason}], files [per-file "
                               "reports]", to="as_json")


def cmd_data_check(args) -> int:
    from mmdialog.recipes.data_check import main

    return main(**kwargs_for(read(DataCheckOptions, args), main))


@dataclass(kw_only=True)
class ExportOptions:
    """`mmdialog export`: export()'s arguments."""

    checkpoint: str = option(help="checkpoint directory (or an earlier export)", positional=True, metavar="CKPT")
    out: str = option(help="directory to write (replaced only if empty or an earlier export)", required=True)
    max_shard_size: str = option("5GB", "largest weight file, e.g. 5GB, 500MB, 200MiB (default: 5GB)")


def cmd_export(args) -> None:
    from mmdialog.modelio import export

    s = export(**kwargs_for(read(ExportOptions, args), export))
    print(f"exported {s['tensors']} tensors ({s['bytes']:,} bytes, {s['shards']} shard(s)) to {s['out']}: "
          + ", ".join(s["files"]))


@dataclass(kw_only=True)
class DemoOptions:
    """`mmdialog demo`: the demo recipe's main's arguments, and its config."""

    out: str = option("runs/demo", "output directory (default: runs/demo)")
    config: str | None = config_option()
    overrides: list[str] = overrides_option()


def cmd_demo(args) -> int:
    from mmdialog.recipes.demo import main

    o = read(DemoOptions, args)
    return main(_config(o), **kwargs_for(o, main))


def _demo_parser(sub) -> None:
    sp = sub.add_parser("demo", help="generate the world, train, evaluate, write a transcript and plots",
                        description="The main job: world -> training -> multi-turn evaluation -> transcript + plots.")
    add_options(sp, DemoOptions)
    sp.set_defaults(func=cmd_demo)


def _world_parser(sub) -> None:
    sp = sub.add_parser("world", help="write the built-in shapes world (JSONL + PNG, train/val/test)",
                        description="Generate the seeded shapes world: same seed, same bytes.")
    add_options(sp, WorldOptions)
    sp.set_defaults(func=cmd_world)


def _train_parser(sub) -> None:
    sp = sub.add_parser("train", help="train a model from a config (torchrun for several processes)",
                        description="Train; writes OUT/checkpoint (the final model) and OUT/train_log.jsonl, and with "
                                    "train.save_every=N resumable checkpoints in OUT/checkpoints/ (the last "
                                    "train.keep_last). SIGTERM saves one and exits with status 143. Data parallel: "
                                    "torchrun --nproc_per_node=N -m mmdialog train ... (gloo on CPU, NCCL on CUDA; "
                                    "train.batch_size is the global batch).")
    add_options(sp, TrainOptions)
    sp.set_defaults(func=cmd_train)


def _pretrain_parser(sub) -> None:
    sp = sub.add_parser("pretrain", help="pretrain on (media, caption[, question, answer]) pairs with a weighted "
                                         "mixture of objectives; fine-tune the result with train.init_from",
                        description="Pretrain the model of the config's model section on paired data with the "
                                    "weighted sum of the objectives in pretrain.objectives: contrastive (InfoNCE "
                                    "between mean-pooled media and text embeddings, learnable temperature, gathered "
                                    "across processes under torchrun), matching (does this caption fit this media? "
                                    "hard negatives from the contrastive similarities), masked (masked caption tokens "
                                    "predicted from the media and the rest), captioning (next-token loss on the "
                                    "caption), qa (next-token loss on answers; pretrain.qa_head=true adds a "
                                    "classification head over the closed answer set). Pairs come from the built-in "
                                    "world (the world section; captions from the scene metadata) or from "
                                    "pretrain.pairs_file, JSONL of {\"image\": PATH, \"text\": CAPTION} with optional "
                                    "\"question\" and \"answer\" (\"audio\"/\"video\" instead of \"image\"); bad "
                                    "records are skipped and listed. Training is mmdialog train's: train.* keys, "
                                    "progress bar, OUT/train_log.jsonl (with each objective's loss), resumable "
                                    "checkpoints (train.save_every, --resume), torchrun. Writes OUT/checkpoint (the "
                                    "model alone: mmdialog train ... train.init_from=OUT/checkpoint fine-tunes it), "
                                    "OUT/pretrain_heads.*, and OUT/metrics.json + plots.png on held-out pairs "
                                    "(retrieval R@1/5/10 both ways, captioning BLEU-4 and CIDEr-D, QA accuracy).")
    add_options(sp, PretrainOptions)
    sp.set_defaults(func=cmd_pretrain)


def _eval_parser(sub) -> None:
    sp = sub.add_parser("eval", help="multi-turn evaluation lab: accuracy by distance, gold vs own history, "
                                     "ablations, ranking, held-out splits",
                        description="Evaluate checkpoints on a split of the world: exact-match accuracy overall, by "
                                    "dependency distance (0, 1, 2, 3-5, 6+), round, family and reference with counts; "
                                    "the gold history (teacher forced: one batched pass) vs the model's own answers "
                                    "(a real chat) and the gap; dialogues fully right and the first failed round; "
                                    "ablations (no_history, last_1/2/4, shuffled_history, no_media) and the history "
                                    "gain per distance; candidate answers ranked by likelihood (MRR, R@1/5/10, mean "
                                    "rank, NDCG); every held-out split the world has. Writes OUT/metrics.json, "
                                    "OUT/summary.md, plots and predictions. Several checkpoints or --seeds: mean and "
                                    "std over the runs. With --data FILE: the same on every assistant turn of a LLaVA, "
                                    "ShareGPT or OpenAI file (read and checked as training reads it; invalid records "
                                    "listed with their reasons), by round and by per-turn labels (--group-by), answers "
                                    "matched by --match with token F1, candidates (meta.candidates) ranked.")
    add_options(sp, EvalOptions)
    sp.set_defaults(func=cmd_eval)


def _explain_parser(sub) -> None:
    sp = sub.add_parser("explain", help="attention views of one dialogue: per answer, to each earlier round, the "
                                        "image and the question; image-patch heatmaps",
                        description="For each answer of a dialogue (gold history): how much attention went to each "
                                    "earlier round, to the image tokens, to the current question and to its own reply "
                                    "so far, per decoder layer and averaged, as heatmaps over rounds; attention over "
                                    "the image patches laid over the image; the fusion's gates or weights where it "
                                    "exposes them. Writes PNGs, explain.json and explain.md (the report).")
    add_options(sp, ExplainOptions)
    sp.set_defaults(func=cmd_explain)


def _report_parser(sub) -> None:
    sp = sub.add_parser("report", help="one self-contained HTML page over run directories",
                        description="Build one HTML page (images embedded) from run directories: training curves, "
                                    "accuracy tables and plots (by distance and round, gold vs own history, "
                                    "ablations, held-out splits, ranking), explain heatmaps if present, and for "
                                    "several runs a side-by-side comparison.")
    add_options(sp, ReportOptions)
    sp.set_defaults(func=cmd_report)


def _experiment_parser(sub) -> None:
    sp = sub.add_parser("experiment", help="train variants and compare their multi-turn skill (the lab's experiment)",
                        description="multiturn: train variants of the same model on the same world (loss on every "
                                    "assistant turn vs the last one only; with and without history augmentation) "
                                    "over several seeds, evaluate each with the context policies full, last_k, "
                                    "token_budget and summary at inference, and compare them in one table and plot "
                                    "(OUT/experiment.md, experiment.json, experiment.png, report.html). "
                                    "fusion: train each fusion (concat, cross_attention, interactive, hierarchical, "
                                    "dynamic, resampler) on the same world with the same budget and compare accuracy "
                                    "by dependency distance, parameters, training tokens/s and image tokens in the "
                                    "sequence (OUT/fusion.md, fusion.json, fusion.png, report.html).")
    add_options(sp, ExperimentOptions)
    sp.set_defaults(func=cmd_experiment)


def _chat_parser(sub) -> None:
    sp = sub.add_parser("chat", help="terminal chat with a checkpoint (KV cache kept across turns)",
                        description="Chat in the terminal; replies stream in. Commands: /image PATH, /policy NAME [ARG], "
                                    "/undo, /retry, /reset, /save FILE, /load FILE, /help, /quit.")
    add_options(sp, ChatOptions)
    sp.set_defaults(func=cmd_chat)


def _data_parser(sub) -> None:
    sp = sub.add_parser("data", help="check dataset files (LLaVA, ShareGPT, OpenAI chat) before training",
                        description="Dataset files in LLaVA, ShareGPT-style or OpenAI chat format.")
    data = sp.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    sp = data.add_parser("check", help="count valid records; list each invalid one with its line and reason",
                         description="Read each FILE record by record (streamed) and report records read, valid, and "
                                     "every invalid record with its line and reason: broken role order, tag count "
                                     "differing from media count, missing or undecodable media, empty reply, over "
                                     "the maximum length. Training applies the same checks. Exit status 1 when a "
                                     "record is invalid.")
    add_options(sp, DataCheckOptions)
    sp.set_defaults(func=cmd_data_check)


def _export_parser(sub) -> None:
    sp = sub.add_parser("export", help="write a checkpoint as config.json + safetensors + tokenizer files",
                        description="Export a checkpoint to a directory in the Hugging Face layout: config.json, "
                                    "model.safetensors (sharded past --max-shard-size, with "
                                    "model.safetensors.index.json), tokenizer.json, tokenizer_config.json, "
                                    "chat_template.jinja. eval, chat, serve and data check take the directory as --checkpoint.")
    add_options(sp, ExportOptions)
    sp.set_defaults(func=cmd_export)


def _serve_parser(sub) -> None:
    sp = sub.add_parser("serve", help="OpenAI-compatible HTTP API and a web chat page",
                        description="Serve /v1/chat/completions (streaming too), /v1/models, /health and a chat page "
                                    "at /. Sessions are cached across requests that extend an earlier conversation, "
                                    "and reused only within one API key (and one cache_salt or user field).")
    add_options(sp, ServeOptions)
    sp.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmdialog", description="Multimodal multi-turn dialogue models: build, train, evaluate, chat, serve.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_demo_parser, _world_parser, _train_parser, _pretrain_parser, _eval_parser, _explain_parser,
                _report_parser, _experiment_parser, _chat_parser, _data_parser, _export_parser, _serve_parser):
        add(sub)  # in this order in --help
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except MMDialogError as e:
        print(f"mmdialog {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
