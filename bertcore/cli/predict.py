"""`bertcore predict`, `bertcore evaluate` and `bertcore embed`: a saved model's outputs for
texts as JSON lines, its metrics on a labelled file, sentence embeddings."""
import argparse
import re
import sys
from pathlib import Path

from .export import head_name
from .options import add_rename_option, check_max_length, output_file, positive_int


def add_predict(sub):
    p = sub.add_parser(
        "predict", help="run a saved model's head on texts, a file or stdin; prints JSON lines",
        description="Prints one JSON line per input: the input (or its id) and the head's prediction.",
        epilog='examples: bertcore predict --model runs/sentiment/model "great phone" "broke in a day"; '
               'cat texts.txt | bertcore predict --model m -; '
               'bertcore predict --model runs/qa/model --question "who?" --context "..."')
    p.add_argument("--model", required=True, help="folder written by TaskModel.save_pretrained (<output>/model)")
    p.add_argument("--head", help="head name (needed when the model has several)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's tokenizer/)")
    p.add_argument("texts", nargs="*", help="texts to predict on; - reads stdin (one text or JSON object a line)")
    p.add_argument("--input", help="data file (JSONL/CSV/TSV/CoNLL/SQuAD; gold labels in it are ignored) or plain "
                   "text, one input per line; - = stdin")
    p.add_argument("--question", help="question answering: the question (with --context)")
    p.add_argument("--context", help="question answering: the context")
    p.add_argument("--output", type=output_file, help="write predictions as JSON lines to this file (its folder "
                   "must exist) instead of stdout")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--encoding", help="encoding of --input (default UTF-8)")
    add_rename_option(p)
    return p


def _read_inputs(args) -> tuple[list, list]:
    """Texts, (question, context), file examples and stdin lines, in that order, and where
    each came from: "file:line" (or "stdin:line"), None for the command line's own."""
    from ..data import CONLL_SUFFIXES, Records, load_examples, read_text, rename_columns, text_lines, where
    inputs = _command_line_texts(args.texts, "predict")
    rename, renamed = args.rename, False
    if args.question is not None or args.context is not None:
        if args.question is None or args.context is None:
            raise ValueError("--question and --context go together")
        inputs.append({"question": args.question, "context": args.context})
    places = [None] * len(inputs)
    sources = []
    if args.input and args.input != "-":
        path = Path(args.input)
        # the data formats finetune reads (.bio and .iob are CoNLL too); .txt and the rest are texts, a line each
        if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", *CONLL_SUFFIXES) and path.suffix != ".txt":
            records = load_examples(path, encoding=args.encoding, rename=rename)
            renamed = True
            inputs += records
            places += [where(records, i) for i in range(len(records))]
        else:
            sources.append((args.input, read_text(path, args.encoding)))
    if args.input == "-" or "-" in args.texts:
        sources.append(("stdin", sys.stdin.read()))
    for source, text in sources:
        lines = [(n, _line_input(line, f"{source}:{n}")) for n, line in enumerate(text_lines(text), 1) if line.strip()]
        # its JSON lines are records as a .jsonl file's are, renamed alike (--rename passed them by)
        records = Records(source, *zip(*[(item, n) for n, item in lines if isinstance(item, dict)]))
        if rename and records:
            rename_columns(records, rename)
            renamed = True
        objects = iter(records)
        for n, item in lines:
            inputs.append(next(objects) if isinstance(item, dict) else item)
            places.append(f"{source}:{n}")
    if rename and not renamed:
        raise ValueError("--rename renames the fields of records (a .jsonl, .csv or .tsv --input, or JSON lines); "
                         "these inputs are plain texts: drop --rename")
    if not inputs:
        raise ValueError("nothing to predict on: give texts, --input FILE, - for stdin, or --question/--context")
    return inputs, places


def _command_line_texts(texts: list, command: str) -> list:
    """The texts given on the command line, but not a file's name: `predict --model M
    dev.jsonl` predicted on the string "dev.jsonl" without a word."""
    for text in texts:
        try:
            is_file = text != "-" and Path(text).is_file()
        except OSError:     # a long review is no file name (ENAMETOOLONG)
            is_file = False
        if is_file:
            raise ValueError(f"{text} is a file; use --input {text} to read it (to {command} that text itself, "
                             f"give it on standard input: echo {text} | bertcore {command} ... -)")
    return [t for t in texts if t != "-"]


def _line_input(line: str, place: str):
    """One line of a text file or stdin: a JSON object when it starts with {, else a text."""
    import json
    if not line.strip().startswith("{"):
        return line
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{place}: invalid JSON ({err.msg} at column {err.colno}); a line that starts with {{ "
                         "must be one JSON object, such as {\"text\": \"...\"} (other lines are texts)") from None


# The fields that hold an example's gold answer in bertcore's data formats. Prediction reads
# none of them, so they are dropped, as transformers' run_glue drops its label column:
# labelled data (a dev set) then predicts even where a label is one the model never saw.
_GOLD_FIELDS = ("label", "tags", "answers", "next_sentence_label")


def _unlabelled(item):
    return {k: v for k, v in item.items() if k not in _GOLD_FIELDS} if isinstance(item, dict) else item


def _load_model(folder: str, tokenizer: str | None, device=None):
    """A saved TaskModel, with --tokenizer's tokenizer when given; one whose tokenizer/ is
    gone needs it (TaskModel's own error speaks of Python arguments, not options)."""
    from ..taskmodel import TaskModel
    from ..tokenizer import Tokenizer
    model = TaskModel.from_pretrained(folder, device=device)
    if tokenizer:
        model.tokenizer = Tokenizer.from_pretrained(tokenizer)
    elif model.tokenizer is None:
        raise FileNotFoundError(f"{folder} has no tokenizer/ folder; pass --tokenizer FOLDER: the tokenizer the "
                                "model was trained with (e.g. the --encoder checkpoint folder it was fine-tuned from)")
    return model


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

    from ..files import write_text

    inputs, places = _read_inputs(args)
    model = _load_model(args.model, args.tokenizer, args.device)
    name = head_name(model, args.head)    # the library's error says head=NAME, not --head NAME
    try:
        predictions = model.predict([_unlabelled(x) for x in inputs], head=name, batch_size=args.batch_size)
    except ValueError as err:
        # TaskModel.encode names a bad input "example N", counting from 1 over all of them
        found = re.match(r"example (\d+)\b", str(err))
        place = places[int(found[1]) - 1] if found else None
        if place is None:
            raise
        raise ValueError(f"{place}: {err}") from err
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


def add_evaluate(sub):
    p = sub.add_parser(
        "evaluate", help="score a saved model's head on a labelled data file; prints its metrics as JSON",
        description="Prints the head's metrics on labelled examples (accuracy and macro F1, entity F1, exact "
                    "match and F1, ...) and the mean loss, as one JSON object: the numbers finetune reports for "
                    "its --eval file, for a test set the run never saw.",
        epilog="example: bertcore evaluate --model runs/sentiment/model --data test.jsonl")
    p.add_argument("--model", required=True, help="folder written by TaskModel.save_pretrained (<output>/model)")
    p.add_argument("--data", required=True, help="labelled data file (JSONL/CSV/TSV/CoNLL/SQuAD), as finetune reads")
    p.add_argument("--head", help="head name (needed when the model has several)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's tokenizer/)")
    p.add_argument("--max-length", type=positive_int, help="tokens per example, as the model was trained with "
                   "(default: 128, as finetune's)")
    p.add_argument("--output", type=output_file, help="also write the metrics to this JSON file (its folder must "
                   "exist)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--encoding", help="encoding of --data (default UTF-8)")
    add_rename_option(p)
    p.set_defaults(default_max_length=128)
    return p


def cmd_evaluate(args) -> int:
    import json

    from ..data import load_examples, where
    from ..files import write_text

    examples = load_examples(args.data, encoding=args.encoding, rename=args.rename)   # before the model loads
    model = _load_model(args.model, args.tokenizer, args.device)
    name = head_name(model, args.head)
    check_max_length(args, model.encoder.config)
    try:
        metrics = model.evaluate(examples, head=name, batch_size=args.batch_size, max_length=args.max_length)
    except ValueError as err:   # what encode finds in "example N" (its checks name FILE:LINE already)
        found = re.match(r"example (\d+)\b:? *", str(err))
        if not found:
            raise
        raise ValueError(f"{where(examples, int(found[1]) - 1)}: {str(err)[found.end():]}") from err
    text = json.dumps(_json_safe({"head": name, "examples": len(examples), **metrics}), ensure_ascii=False)
    if args.output:
        write_text(args.output, text + "\n")
    print(text)
    return 0


def add_embed(sub):
    p = sub.add_parser(
        "embed", help="sentence embeddings of texts with the embedding head; prints one JSON line per text",
        description="Embeds texts with an encoder checkpoint and the embedding head (bertcore-embedding). A "
                    "sentence-transformers folder (modules.json, 1_Pooling/config.json, sentence_bert_config.json) "
                    "sets the pooling, the normalisation and the maximum length, so the vectors equal "
                    "SentenceTransformer(folder).encode's; a plain BERT folder gets mean pooling, normalised. "
                    "--model takes a saved TaskModel with an embedding head instead (e.g. from finetune).",
        epilog='example: bertcore embed --encoder sentence-transformers/all-MiniLM-L6-v2 "a sentence" "another one"')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--encoder", help="BERT or sentence-transformers checkpoint folder")
    source.add_argument("--model", help="folder written by TaskModel.save_pretrained, with an embedding head")
    p.add_argument("texts", nargs="*", help="texts to embed; - reads stdin (one text a line)")
    p.add_argument("--input", help="text file, one text per line (.jsonl, .csv, .tsv: each record's \"text\"); "
                   "- reads stdin")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the --encoder folder, or --model's tokenizer/)")
    p.add_argument("--head", help="head name in --model (needed when it has several)")
    p.add_argument("--pooling", help="override the checkpoint's pooling: mean, cls, max or mean_sqrt_len_tokens, or "
                   "several joined by commas (their vectors concatenated, as sentence-transformers does)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the vectors (default: as the checkpoint says; yes without ST files)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-length", type=positive_int, help="tokens per text (default: the checkpoint's max_seq_length, "
                   "which this replaces)")
    p.add_argument("--encoding", help="encoding of --input (default UTF-8)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cpu)")
    add_rename_option(p)
    p.set_defaults(default_max_length=None)   # check_max_length: no default of embed's own, the checkpoint's
    return p


RECORD_SUFFIXES = (".jsonl", ".csv", ".tsv")   # embed's inputs read as records ("text"); other files a text a line


def _embed_inputs(source: str, encoding: str | None = None, rename: dict | None = None) -> list[str]:
    """Texts from a file or stdin (-): one per non-empty line; JSONL, CSV and TSV records
    give their "text" (a CSV read as lines embedded its header as a text, and "a,pos" whole)."""
    from ..data import load_examples, read_text, text_lines, where
    if source != "-" and Path(source).suffix.lower() in RECORD_SUFFIXES:
        # data's readers: JSONL lines end at "\n" only (a JSON string may hold U+2028
        # unescaped), CSV fields may be quoted, and an error names the file's own line
        records = load_examples(Path(source), encoding=encoding, rename=rename)
        return [_record_text(records[i], where(records, i)) for i in range(len(records))]
    text = sys.stdin.read() if source == "-" else read_text(source, encoding)
    return [line for line in text_lines(text) if line.strip()]


def _record_text(row: dict, where: str) -> str:
    """A record's "text"; anything but a string is refused (str() would embed "None")."""
    from ..data import json_type
    fix = ('give each record a string "text" (JSONL: {"text": "a sentence"}; CSV, TSV: a text column), '
           'or --rename OLD=text')
    if "text" not in row:
        raise ValueError(f'{where}: no "text" field (it has {", ".join(row) or "nothing"}); {fix}')
    if not isinstance(row["text"], str):
        raise ValueError(f'{where}: "text" must be a string (got {json_type(row["text"])}); {fix}')
    return row["text"]


def cmd_embed(args) -> int:
    import json

    from ..taskmodel import TaskModel

    # - among the texts reads stdin as in predict; with --input - as well, stdin is read once
    sources = [args.input] if args.input else []
    if "-" in args.texts and "-" not in sources:
        sources.append("-")
    texts = _command_line_texts(args.texts, "embed") + [t for source in sources
                                                        for t in _embed_inputs(source, args.encoding,
                                                                               args.rename)]
    if not texts:
        raise ValueError("give texts to embed, or --input FILE (- reads standard input)")
    if args.rename and not (args.input and Path(args.input).suffix.lower() in RECORD_SUFFIXES):
        raise ValueError("--rename renames the columns of a .jsonl, .csv or .tsv --input; these texts are read "
                         "as they are (a line each): drop --rename")
    if args.model:
        if args.pooling or args.normalize is not None:
            raise ValueError("--pooling and --normalize go with --encoder; a saved model keeps its head's settings")
        model = _load_model(args.model, args.tokenizer, args.device)
        name = head_name(model, args.head)
        if model.heads[name].name != "embedding":   # before its predict says what inputs it takes
            raise ValueError(f"head {name!r} of {args.model} is a {model.heads[name].name} head; embed needs an "
                             "embedding head (bertcore predict runs the others)")
        if args.max_length:
            model.heads[name].max_seq_length = args.max_length
    else:
        from ..model import BertEncoder
        from ..plugins import get_head_type
        from ..pretraining import checkpoint_tokenizer
        from ..tokenizer import Tokenizer
        head_type, name = get_head_type("embedding"), "embedding"
        options = head_type.options_from_checkpoint(args.encoder)  # the sentence-transformers files
        pooling = args.pooling and [mode.strip() for mode in args.pooling.split(",")]
        options.update({k: v for k, v in (("pooling", pooling), ("normalize", args.normalize),
                                          ("max_seq_length", args.max_length)) if v is not None})
        encoder = BertEncoder.from_pretrained(args.encoder, device=args.device)
        tok = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else \
            checkpoint_tokenizer(args.encoder, encoder.config.vocab_size)
        model = TaskModel(encoder, {name: head_type(encoder.config, **options)}, tokenizer=tok)
    check_max_length(args, model.encoder.config)
    predictions = model.predict(texts, head=name, batch_size=args.batch_size, max_length=args.max_length)
    for text, prediction in zip(texts, predictions):
        print(json.dumps({"text": text, "embedding": prediction["embedding"]}, ensure_ascii=False))
    return 0


COMMANDS = {"predict": (add_predict, cmd_predict), "evaluate": (add_evaluate, cmd_evaluate),
            "embed": (add_embed, cmd_embed)}
