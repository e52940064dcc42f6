"""`bertcore finetune` and `bertcore pretrain`."""
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .options import (add_rename_option, add_training_options, check_max_length, fraction, positive_int,
                      training_args)


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
    add_rename_option(p)
    p.add_argument("--head-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a head option (VALUE read as JSON when it parses, else a string); repeatable")
    p.add_argument("--head-options", metavar="FILE.json", help="head options as a JSON object")
    p.add_argument("--multi-label", action="store_true", help="classification: several labels per text")
    p.add_argument("--regression", action="store_true", help="classification: one number per text")
    p.add_argument("--name", help="head name in the saved model (default: the head type)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    p.add_argument("--layerwise-lr-decay", type=float, default=1.0)
    p.add_argument("--early-stopping", type=positive_int, help="stop after N evaluations without improvement")
    add_training_options(p, lr=5e-5, epochs=3, batch=32, max_length=128)
    return p


def _head_options(args, train, head_type) -> tuple[dict, str | None]:
    """--head-options FILE, --head-option K=V, --labels, --multi-label/--regression; what
    is still missing is read from the training data, and the line that says so (printed
    once the data passed the head's checks: labels=['None'] read from data without labels
    would precede the error that it has none)."""
    import json
    options = {}
    if args.head_options:
        from ..data import read_text
        try:
            options = json.loads(read_text(args.head_options, what="head options file"))
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
        options["labels"] = [label.strip() for label in args.labels.split(",")]   # "neg, pos": no " pos" class
    if args.multi_label and args.regression:
        raise ValueError("--multi-label and --regression contradict each other; give one")
    if args.multi_label and not any(isinstance(ex.get("label"), list) for ex in train):
        # a CSV cell "per,loc" would be one class of its own, the task silently single-label
        raise ValueError(f"--multi-label: no example of {args.train} gives its labels as a list; multi-label data "
                         'is JSONL with "label": ["per", "loc"] (a CSV or TSV cell holds one label)')
    if args.multi_label:
        options["multi_label"] = True
    if args.regression:
        options.pop("labels", None)
        options["num_labels"] = 1
    from_checkpoint = {k: v for k, v in head_type.options_from_checkpoint(args.encoder).items() if k not in options}
    options.update(from_checkpoint)
    said = None
    if not {"labels", "num_labels"} & set(options):
        read = head_type.options_from_examples(train)
        read = {k: v for k, v in read.items() if k not in options}
        if read:
            shown = ", ".join(f"{k}={v if not isinstance(v, list) or len(v) <= 8 else v[:8] + ['...']}"
                              for k, v in read.items())
            said = f"bertcore: {args.head} head options read from {args.train}: {shown}"
        options.update(read)
    return options, said


def _check_resume(args) -> None:
    """--resume into a folder no run has checkpointed yet: the fix is to drop it (the
    library's "no complete checkpoint at X: X does not exist" leaves that to guess)."""
    from ..files import folder_candidates
    from ..runfolder import kept_checkpoints
    last = Path(args.output) / "last"
    if args.resume and not folder_candidates(last) and not kept_checkpoints(Path(args.output)):
        raise FileNotFoundError(f"--resume: no checkpoint in {args.output} yet ({last} does not exist); "
                                "drop --resume to start the run")


def cmd_finetune(args) -> int:
    from ..plugins import get_head_type
    head_type = get_head_type(args.head)   # before anything loads; a typo gets "did you mean"
    _check_resume(args)
    # every input read and checked before --overwrite removes the earlier run: a bad data file,
    # encoder or head option loses no run
    model, train, evaluation = _finetune_inputs(args, head_type)
    with _output_folder(args, ("--tokenizer", args.tokenizer), ("--encoder", args.encoder), ("--train", args.train),
                        ("--eval", args.eval)):
        return _finetune(args, model, train, evaluation)


def _finetune_inputs(args, head_type) -> tuple:
    """(the TaskModel to train, train examples, eval examples or None), all checked."""
    from .. import set_seed
    from ..data import load_examples
    from ..model import BertEncoder
    from ..taskmodel import TaskModel
    from ..tokenizer import Tokenizer
    from ..pretraining import checkpoint_tokenizer
    from ..plugins import create_head
    from ..training import check_examples

    train = load_examples(args.train, encoding=args.encoding, rename=args.rename)
    evaluation = load_examples(args.eval, encoding=args.encoding, rename=args.rename) if args.eval else None
    # before options are read from the data: a missing label is named, not the one class the others imply
    check_examples(head_type, train, keys_only=True)
    options, said = _head_options(args, train, head_type)
    encoder = BertEncoder.from_pretrained(args.encoder)
    check_max_length(args, encoder.config)
    # without --tokenizer, the encoder's own: in its folder, or beside it (pretrain's model/encoder, model/tokenizer)
    tok = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else \
        checkpoint_tokenizer(args.encoder, encoder.config.vocab_size)
    set_seed(args.seed)  # before the head is built: one seed, one set of initial weights
    head = create_head(head_type.name, encoder.config, **options)
    check_examples(head, train)      # the Trainer checks them too; here before `said`
    if said:
        print(said, file=sys.stderr)
    return TaskModel(encoder, {args.name or args.head: head}, tokenizer=tok), train, evaluation


def _finetune(args, model, train, evaluation) -> int:
    from ..training import Trainer
    name = model.head_names()[0]
    tok = model.tokenizer
    targs = training_args(args, freeze_encoder=args.freeze_encoder, layerwise_lr_decay=args.layerwise_lr_decay,
                           early_stopping_patience=args.early_stopping, load_best_at_end=evaluation is not None)
    trainer = Trainer(model, tokenizer=tok, train=train, eval=evaluation, args=targs, head=name)
    trainer.fit(resume_from=True if args.resume else None)
    if evaluation is not None:
        state = trainer.state
        which = f"best checkpoint, step {state.best_step}" if state.best_step is not None else \
            f"last step, {state.step}"
        print(f"final evaluation ({which}): " + ", ".join(f"{k}={v:.4f}" for k, v in trainer.evaluate().items()))
    if trainer.rank == 0:
        saved = model.save_pretrained(f"{args.output}/model")
        print(f"model saved to {saved} (load it with bertcore.TaskModel.from_pretrained)")
    return 0


def _other_rank() -> bool:
    """A torchrun process other than rank 0 (RANK alone, without WORLD_SIZE, is no torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


@contextmanager
def _output_folder(args, *inputs):
    """Rank 0 holds --output from its check to the saved model (the Trainer joins the lock).
    A new run refuses an earlier run's model/ and checkpoints there (--overwrite removes
    them) and inputs read from inside them (`finetune --output runs/pre --encoder
    runs/pre/model/encoder` would replace the encoder it reads)."""
    from ..runfolder import CHECKPOINT_FOLDERS, FINAL_MODEL_DIR, RunLock, check_new_run
    if _other_rank():
        yield          # under torchrun: rank 0 checks and holds the folder
        return
    with RunLock(args.output, joinable=True):
        if not args.resume:
            check_new_run(args.output, (FINAL_MODEL_DIR, *CHECKPOINT_FOLDERS), args.overwrite,
                          [(f"{flag} {path}", path) for flag, path in inputs if path])
        yield


def add_pretrain(sub):
    p = sub.add_parser(
        "pretrain", help="pretrain a BERT with masked LM + next-sentence prediction",
        description="Corpus: text files in the original BERT format, one sentence per line and a blank "
                    "line between documents (UTF-8, or --encoding). Without --tokenizer the --encoder checkpoint's "
                    "tokenizer is used (with --resume, the run's own), else a WordPiece vocabulary is trained on "
                    "the corpus; without --encoder a new encoder is built from the size options (with --resume, "
                    "the run's own shape when none is given).",
        epilog="example: bertcore pretrain --corpus wiki.txt --output runs/bert-small --layers 4 --max-steps 10000")
    p.add_argument("--corpus", nargs="+", required=True, help="corpus text file(s)")
    p.add_argument("--tokenizer", help="existing tokenizer folder (default: --encoder's, the run's own with "
                                       "--resume, else train one)")
    p.add_argument("--vocab-size", type=positive_int, help="size of a newly trained vocabulary (default 8000)")
    p.add_argument("--cased", action="store_true", help="keep case when training a vocabulary")
    p.add_argument("--encoder", help="checkpoint folder to continue pretraining from")
    # Sizes of a new encoder (None: not given, so that --encoder can refuse them rather than ignore them)
    p.add_argument("--hidden-size", type=positive_int, help="hidden size of a new encoder (default 256)")
    p.add_argument("--layers", type=positive_int, help="layers of a new encoder (default 4)")
    p.add_argument("--heads", type=positive_int, help="attention heads of a new encoder (default 4)")
    p.add_argument("--intermediate-size", type=positive_int, help="feed-forward size (default 4 x hidden)")
    p.add_argument("--mlm-probability", type=fraction, default=0.15,
                   help="share of tokens picked for masked LM (default 0.15, BERT's)")
    p.add_argument("--whole-word-masking", action="store_true",
                   help="mask a word's ## pieces together with it (BERT's whole-word masking)")
    p.add_argument("--eval-fraction", type=fraction, default=0.02,
                   help="share of the documents held out for MLM/NSP accuracy (default 0.02, at least 2)")
    add_training_options(p, lr=1e-4, epochs=1, batch=32, max_length=128)
    return p


def cmd_pretrain(args) -> int:
    from ..config import MAX_POSITIONS
    from ..data import check_file
    for file in args.corpus:
        check_file(Path(file), "corpus file")        # a folder is said to be one, not to be missing
    args.max_length = args.max_length or args.default_max_length
    if args.max_length < 8:
        raise ValueError(f"--max-length {args.max_length} is too short for a sentence pair; use 8 or more")
    if args.mlm_probability == 0:
        raise ValueError("--mlm-probability 0 masks no token, and MLM would learn nothing; use a share in (0, 1), "
                         "BERT's is 0.15")
    _new_encoder_sizes(args)
    if args.max_length > MAX_POSITIONS and not args.encoder:
        raise ValueError(f"--max-length {args.max_length} exceeds BERT's {MAX_POSITIONS} positions; "
                         f"use at most {MAX_POSITIONS}")
    if args.hidden_size is not None and args.hidden_size % args.heads:   # (the config's message names fields)
        raise ValueError(f"--hidden-size {args.hidden_size} is not divisible by --heads {args.heads}; "
                         "each head takes an equal share of the hidden size")
    _check_resume(args)
    from ..masking import read_corpus
    from ..pretraining import check_corpus
    from ..tokenizer import Tokenizer
    # read and checked before --overwrite removes the earlier run: a bad corpus or tokenizer loses no run
    corpus = check_corpus(read_corpus([Path(f) for f in args.corpus], encoding=args.encoding))
    tok = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    if args.encoder:
        _check_positions(args)
    with _output_folder(args, ("--tokenizer", args.tokenizer), ("--encoder", args.encoder),
                        *[("--corpus", file) for file in args.corpus]):
        return _pretrain(args, corpus, tok)


NEW_ENCODER_SIZES = {"vocab_size": 8000, "hidden_size": 256, "layers": 4, "heads": 4}


def _new_encoder_sizes(args) -> None:
    """The size options' defaults, for a new encoder; with --encoder, given ones are refused:
    the checkpoint keeps its own shape and vocabulary (they were silently ignored)."""
    given = [name for name in (*NEW_ENCODER_SIZES, "intermediate_size") if getattr(args, name) is not None]
    if args.encoder and given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{options} size a new encoder, but --encoder {args.encoder} keeps its own shape and "
                         f"vocabulary; drop {options}, or drop --encoder to build a new one")
    if args.resume and not args.encoder and not given:
        return     # the run's own shape and vocabulary, read from its checkpoint (the defaults were refused)
    for name, default in NEW_ENCODER_SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _pretrain(args, corpus, tok) -> int:
    from ..config import BertConfig
    from ..pretraining import pretrain

    cfg = args.encoder or args.hidden_size and BertConfig(   # neither: --resume reads the run's own
        hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size or 4 * args.hidden_size,
        max_position_embeddings=max(128, args.max_length))
    model = pretrain(corpus, tok, cfg, training_args(args), resume=args.resume, vocab_size=args.vocab_size,
                     lowercase=not args.cased,
                     mlm_probability=args.mlm_probability, whole_word=args.whole_word_masking,
                     eval_fraction=args.eval_fraction)
    if _other_rank():
        return 0       # rank 0 reports and saved the model
    if model.history:
        last = model.history[-1]
        print(f"held-out MLM accuracy {last.get('mlm/accuracy', float('nan')):.4f}, "
              f"NSP accuracy {last.get('nsp/accuracy', float('nan')):.4f}")
    print(f"model saved to {args.output}/model (encoder/ loads with bertcore.BertEncoder.from_pretrained)")
    return 0


def _check_positions(args) -> None:
    """--max-length within the positions of the --encoder continued (the library's message names
    args.max_length and max_position_embeddings, not the option)."""
    from ..checkpoint import resolve_pretrained
    from ..config import BertConfig
    try:
        positions = BertConfig.from_pretrained(resolve_pretrained(args.encoder)).max_position_embeddings
    except (OSError, ValueError):
        return     # no readable config: loading the encoder names what is wrong with the folder
    if args.max_length > positions:
        raise ValueError(f"--max-length {args.max_length} exceeds the {positions} positions of --encoder "
                         f"{args.encoder}; use at most {positions} (an encoder keeps the positions it was built with)")


COMMANDS = {"finetune": (add_finetune, cmd_finetune), "pretrain": (add_pretrain, cmd_pretrain)}
