"""Argument types and the training options that finetune and pretrain share."""
import argparse
import os
import sys
from pathlib import Path

from ..files import file_above


def _checked(text: str, convert, noun: str, ok, requirement: str):
    """`text` converted, or argparse's one-line error saying what it is not or must be."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} {requirement}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, "a whole number", lambda v: v >= 1, "must be 1 or more")


def seed(text: str) -> int:
    return _checked(text, int, "a whole number", lambda v: 0 <= v < 2**32, "must be in [0, 2**32) (numpy's seeds)")


def fraction(text: str) -> float:
    return _checked(text, float, "a number", lambda v: 0 <= v < 1, "must be in [0, 1)")


def non_negative(text: str) -> float:
    return _checked(text, float, "a number", lambda v: 0 <= v < float("inf"), "must be a finite number >= 0")


def positive_float(text: str) -> float:
    return _checked(text, float, "a number", lambda v: 0 < v < float("inf"), "must be a finite number > 0")


def output_folder(text: str) -> str:
    """An --output folder that can be made and written, checked before any work: an empty
    value (an unset shell variable) would write into the current folder, and a file in the
    way or a read-only disk would only fail at the end, after the run."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; name a folder (. for this one)")
    path = Path(text)
    blocker = path if path.is_file() else file_above(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{blocker} is a file, not a folder; name a folder")
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {existing} (read-only or not yours); "
                                         "name a folder you can write")
    return text


def output_file(text: str) -> str:
    """An --output FILE whose folder exists, checked before any work: writing it made a
    missing folder (a typo in the path) without a word; a training --output FOLDER is
    created, a file's folder is not."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; name a file")
    if text == "-":
        return None     # standard output, as --input - reads standard input
    path = Path(text).expanduser()   # --output=~/p.jsonl: the shell leaves that ~ alone
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it (e.g. {path / 'predictions.jsonl'})")
    folder = path.parent
    blocker = folder if folder.is_file() else file_above(folder)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{blocker} is a file, not a folder; name a file in an existing folder")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist; create it first (mkdir -p {folder}) "
                                         "or name a file in an existing folder")
    return str(path)


def rename_pair(text: str) -> tuple[str, str]:
    """--rename OLD=NEW: a data column under the name the head reads."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected OLD=NEW, e.g. sentence=text")
    return old.strip(), new.strip()


class _Renames(argparse.Action):
    """--rename given any number of times, gathered into {old: new}; one column renamed
    twice is refused (a dict kept the last silently)."""

    def __call__(self, parser, namespace, pair, option_string=None):
        renames = dict(getattr(namespace, self.dest) or {})
        old, new = pair
        if renames.get(old, new) != new:
            parser.error(f"argument --rename: {old!r} is renamed twice ({old}={renames[old]}, {old}={new}); "
                         "give it once")
        renames[old] = new
        setattr(namespace, self.dest, renames)


def add_rename_option(p) -> None:
    p.add_argument("--rename", type=rename_pair, action=_Renames, default={}, metavar="OLD=NEW",
                   help="read a data column under the head's name for it, e.g. sentence=text for GLUE's files; "
                        "repeatable")


def add_training_options(p, lr: float, epochs: int, batch: int, max_length: int):
    g = p.add_argument_group("training")
    g.add_argument("--output", required=True, help="output folder: checkpoints, metrics.jsonl, curves.png, model/")
    g.add_argument("--epochs", type=positive_int, default=epochs)
    g.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=positive_int, default=batch, help=f"per process (default {batch})")
    g.add_argument("--eval-batch-size", type=positive_int, help="default: twice --batch-size")
    g.add_argument("--lr", type=non_negative, default=lr, help=f"peak learning rate (default {lr})")
    g.add_argument("--warmup-ratio", type=fraction, default=0.1)
    g.add_argument("--weight-decay", type=non_negative, default=0.01)
    g.add_argument("--grad-accum", type=positive_int, default=1, help="gradient accumulation steps")
    g.add_argument("--max-length", type=positive_int, help=f"tokens per sequence (default {max_length}, "
                   "or the model's max_position_embeddings when smaller)")
    g.set_defaults(default_max_length=max_length)
    g.add_argument("--eval-every", type=positive_int, help="evaluate and checkpoint every N steps (default: each epoch)")
    g.add_argument("--logging-steps", type=positive_int, default=10, help="log the training loss every N steps")
    g.add_argument("--metric-for-best", help="eval metric that picks best/ (default: the head's main metric)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    g.add_argument("--encoding", help="encoding of the data files (default UTF-8)")
    g.add_argument("--seed", type=seed, default=42, help="one seed repeats a CPU run exactly, on the same threads; "
                   "pretraining from scratch also needs the first run's --tokenizer (default 42)")
    g.add_argument("--resume", action="store_true", help="continue from <output>/last")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --output (its checkpoints and model/); refused otherwise")
    g.add_argument("--no-progress", action="store_true")


def training_args(args, **extra):
    from ..training import TrainingArgs
    if args.bf16 and (args.device or "cpu").startswith("cpu") and not _cpu_has_bf16():
        print("bertcore: warning: this CPU has no native bfloat16 (AVX512-BF16/AMX); --bf16 will be slower "
              "than float32 here", file=sys.stderr)
    return TrainingArgs(output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps,
                        batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=args.warmup_ratio,
                        weight_decay=args.weight_decay, grad_accum_steps=args.grad_accum,
                        max_length=args.max_length, eval_every=args.eval_every, bf16=args.bf16, seed=args.seed,
                        eval_batch_size=args.eval_batch_size, logging_steps=args.logging_steps,
                        metric_for_best=args.metric_for_best, device=args.device,
                        progress=not args.no_progress, overwrite_output_dir=args.overwrite, **extra)


def _cpu_has_bf16() -> bool:
    import torch
    if torch.cuda.is_available():
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def check_max_length(args, config) -> None:
    """--max-length within what a sequence needs and the model's positions (the default fits;
    a command without one of its own leaves None, the checkpoint's choice)."""
    if args.max_length is None:
        if args.default_max_length is None:
            return
        args.max_length = min(args.default_max_length, config.max_position_embeddings)
    max_length = args.max_length
    if max_length > config.max_position_embeddings:
        raise ValueError(f"--max-length {max_length} exceeds the encoder's max_position_embeddings="
                         f"{config.max_position_embeddings}; use at most that")
    from ..taskmodel import check_text_room
    check_text_room(max_length, named=f"--max-length {max_length}")
