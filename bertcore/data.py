"""Loading examples (one example = one dict, see DESIGN.md "Data formats").

`load_examples(source)` takes a list of dicts, anything indexable that yields dicts
(a `datasets.Dataset` works without being a dependency), or a file: JSONL, CSV/TSV,
CoNLL (`token<TAB>tag`, blank line between sentences) or SQuAD JSON. A bad file
raises `DataError` naming the file, the line and what was expected; examples read
from a file remember where each came from (`Records.where(i)` → "file:line"), so
that a head's complaint about one example names its line too.

Files are UTF-8 (with or without a BOM), or the UTF-16/32 their byte order mark
declares, unless the caller names another encoding; nothing is guessed, so a Latin-1
file is an error that says to pass its encoding, never text decoded wrongly.
"""
import codecs
import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

from .files import file_above

CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob", ".txt")


class DataError(ValueError):
    """A data file or example that does not have the expected shape."""


# ---- text files -----------------------------------------------------------------------

def read_text(path, encoding: str | None = None, what: str = "data file") -> str:
    """A text file as str, decoded as `encoding` (default: UTF-8, or the UTF-16/32 that a
    byte order mark declares). Bytes that do not decode → DataError naming the line and how
    to fix it. `what` says what the file is for in an error about its path (e.g. "head
    options file")."""
    path = Path(path)
    check_file(path, what)
    try:
        raw = path.read_bytes()
    except OSError as err:  # unreadable (permissions, I/O): errno's words, with the file named
        raise type(err)(f"cannot read {what} {path}: {err.strerror or err}") from None
    codec = encoding or _encoding_of_bom(raw)
    try:
        text = raw.decode(codec)
    except LookupError:
        raise DataError(f"encoding {encoding!r} is unknown; use a Python codec name such as utf-8, "
                        "latin-1 or gb18030") from None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        named = "UTF-8" if codec == "utf-8-sig" else codec
        raise DataError(f"{path}:{line}: byte 0x{raw[err.start]:02x} at column {column} is not {named}; "
                        "save the file as UTF-8, or name its encoding (encoding=, --encoding), e.g. latin-1 "
                        "or gb18030") from None
    # encoding="utf-8" keeps a BOM, which would glue itself to the first column or key
    return text[1:] if text.startswith("\ufeff") else text


def _encoding_of_bom(raw: bytes) -> str:
    """The encoding a byte order mark declares: Windows' "Unicode" text (Notepad, Excel's
    Unicode Text) is UTF-16 with one, which no UTF-8 file can start with. Not a guess: a
    file without a BOM is read as UTF-8."""
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):   # before UTF-16: FF FE 00 00 starts both
        return "utf-32"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"


def text_lines(text: str) -> list[str]:
    """A text file's lines, ending at \n, \r\n or \r only: str.splitlines also cuts at
    U+2028, U+0085, \x0c, ..., which a line of text (or a JSON string) may hold, and one
    input line would become two outputs."""
    return re.split(r"\r\n?|\n", text)


def check_file(path: Path, what: str = "data file") -> None:
    """Raise an OSError that says why `path` is not a file to read and what to name instead."""
    if path.is_file():
        return
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; name a file")
    # is_file() is False for "some.jsonl/x" too, which no folder can ever make exist
    blocker = file_above(path)
    if blocker is not None:
        raise NotADirectoryError(f"{what} {path} cannot exist: {blocker} is a file, not a folder; fix the path")
    raise FileNotFoundError(f"{what} {path} does not exist")


# ---- examples from anything -------------------------------------------------------------

class Records(list):
    """Examples read from a file: a list of dicts that knows where each one came from."""

    def __init__(self, path: Path, examples=(), locations=()):
        super().__init__(examples)
        self.path, self.locations = path, list(locations)

    def add(self, example: dict, location) -> None:
        self.append(example)
        self.locations.append(location)

    def where(self, i: int) -> str:
        """"file:line" (or "file: data[..]" for SQuAD) of example i."""
        return f"{self.path}:{self.locations[i]}" if isinstance(self.locations[i], int) else \
            f"{self.path}: {self.locations[i]}"


def where(examples, i: int) -> str:
    """Where example i is: its file and line when it came from one, else "example i+1"."""
    return examples.where(i) if isinstance(examples, Records) else f"example {i + 1}"


class Examples(Sequence):
    """A read-only view of an indexable source (e.g. `datasets.Dataset`) as dicts,
    converted one item at a time so large datasets are never copied."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        item = self.source[i]
        if not isinstance(item, dict):
            try:
                item = dict(item)
            except (TypeError, ValueError):
                raise DataError(f"example {i + 1} is a {type(item).__name__}; expected a dict such as "
                                "{'text': ..., 'label': ...}") from None
        return item


def load_examples(source, *, format: str | None = None, encoding: str | None = None,
                  rename: dict | None = None) -> Sequence:
    """Examples from a list of dicts, an indexable of dicts, or a data file.

    `format` forces "jsonl", "json" (SQuAD or a JSON list), "csv", "tsv" or "conll";
    by default the file suffix decides. `encoding` names a file's encoding (default
    UTF-8). `rename` maps a file's column names to the head's, e.g. {"sentence": "text"}
    for GLUE's files (a `datasets.Dataset` has `rename_columns`). What an example must
    hold is its head's business (`Head.check_example`, which the Trainer runs on every
    example).
    """
    if isinstance(source, (str, Path)):
        return rename_columns(load_file(Path(source), format, encoding), rename or {})
    if rename:
        raise TypeError("rename= renames a data file's columns; rename a dataset's own (datasets: rename_columns)")
    if isinstance(source, dict):
        raise DataError("got a dict; pass a list of example dicts (for multi-task training, "
                        "pass {head: data} as Trainer(train=...))")
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        return source if isinstance(source, list) else Examples(source)
    return list(source)  # an iterator or generator


def load_file(path: Path, format: str | None = None, encoding: str | None = None) -> Records:
    """One data file → example dicts that remember their lines (see `load_examples`)."""
    check_file(path)  # before the suffix: a folder or a missing file is the problem to report
    suffix = path.suffix.lower()
    format = format or {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                        ".tsv": "tsv"}.get(suffix) or ("conll" if suffix in CONLL_SUFFIXES else None)
    loaders = {"jsonl": load_jsonl, "json": load_json, "csv": load_csv, "tsv": load_csv, "conll": load_conll}
    if format not in loaders:
        raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'}; expected .jsonl, .json "
                        "(SQuAD), .csv, .tsv or .conll, or pass format=")
    text = read_text(path, encoding)
    examples = loaders[format](path, text, delimiter="\t") if format == "tsv" else loaders[format](path, text)
    if not examples:
        raise DataError(f"{path}: no examples in the file")
    return examples


def rename_columns(examples: Records, rename: dict) -> Records:
    """Each example's keys renamed {old: new}, in place. A name that no example has, or
    two columns renamed onto one, is refused: either would train on the wrong field or
    none, and the head's complaint would name a column the user never wrote."""
    if not rename:
        return examples
    present = {key for example in examples for key in example}
    for old in rename:
        if old not in present:
            raise DataError(f"{examples.path}: no column {old!r} to rename (its columns: {', '.join(sorted(present))})")
    for i, example in enumerate(examples):
        names = [rename.get(key, key) for key in example]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise DataError(f"{where(examples, i)}: renaming gives two {', '.join(map(repr, twice))} columns; "
                            "rename one of them to another name")
        examples[i] = dict(zip(names, example.values()))
    return examples


def load_jsonl(path: Path, text: str) -> Records:
    examples = Records(path)
    # lines end at "\n" only: str.splitlines would also cut at U+2028, U+0085, ..., which JSON
    # strings may hold unescaped (json.dumps(ensure_ascii=False) writes them as they are)
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: invalid JSON ({err.msg} at column {err.colno}); expected one "
                            "JSON object per line") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}:{n}: got a JSON {type(value).__name__}; expected an object such as "
                            '{"text": "...", "label": "pos"}')
        examples.add(value, n)
    return examples


def load_json(path: Path, text: str) -> Records:
    """SQuAD JSON ({"data": [{"paragraphs": [...]}]}) or a JSON list of example objects."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); expected SQuAD JSON or a list "
                        "of example objects (for one object per line use .jsonl)") from None
    if isinstance(value, list):
        for i, v in enumerate(value):
            if not isinstance(v, dict):
                raise DataError(f"{path}: [{i}] is a JSON {json_type(v)}; expected a list of example objects "
                                'such as {"text": "...", "label": "pos"}')
        return Records(path, value, [f"[{i}]" for i in range(len(value))])
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        return squad_examples(value, path)
    raise DataError(f"{path}:1: expected SQuAD JSON ({{\"data\": [{{\"paragraphs\": ...}}]}}) or a JSON list "
                    "of example objects")


def squad_examples(value: dict, path: Path) -> Records:
    """Flatten SQuAD v1/v2 into one dict per question (empty answers = unanswerable, which
    SQuAD 2.0 says with `is_impossible`; a question without `answers` is an error)."""
    examples = Records(path)
    for a, article in enumerate(value["data"]):
        if isinstance(article, dict) and "paragraphs" in article and not isinstance(article["paragraphs"], list):
            raise DataError(f"{path}: data[{a}].paragraphs is a JSON {json_type(article['paragraphs'])}; "
                            "expected a list of {context, qas} objects")
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: data[{a}]: expected a SQuAD article {{\"paragraphs\": [...]}}, got "
                            f"{_shape(article)}; for examples of other heads use .jsonl, or a .json list of objects")
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or "context" not in paragraph or "qas" not in paragraph:
                raise DataError(f"{path}: {where}: expected keys context and qas")
            if not isinstance(paragraph["qas"], list):
                raise DataError(f"{path}: {where}.qas is a JSON {json_type(paragraph['qas'])}; expected a list "
                                "of {question, answers} objects")
            for q, qa in enumerate(paragraph["qas"]):
                here = f"{where}.qas[{q}]"
                if not isinstance(qa, dict):
                    raise DataError(f"{path}: {here} is a JSON {json_type(qa)}; expected a {{question, answers}} "
                                    "object")
                if "question" not in qa:
                    raise DataError(f"{path}: {here}: expected a question")
                if qa.get("is_impossible") not in (True, False, None):  # "false" is truthy: answers would go
                    raise DataError(f"{path}: {here}: is_impossible is {qa['is_impossible']!r}; expected true or "
                                    "false")
                if not qa.get("is_impossible") and "answers" not in qa:
                    raise DataError(f"{path}: {here}: no answers; give answers: [{{text, answer_start}}], "
                                    "or is_impossible: true for a question without one")
                answers = [] if qa.get("is_impossible") else qa["answers"]
                if not isinstance(answers, list) or not all(
                        isinstance(x, dict) and "text" in x and "answer_start" in x for x in answers):
                    raise DataError(f"{path}: {here}: answers must be a list of {{text, answer_start}} objects")
                examples.add({
                    "id": str(qa.get("id", f"{a}-{p}-{q}")),
                    "question": qa["question"],
                    "context": paragraph["context"],
                    "answers": {"text": [x["text"] for x in answers],
                                "answer_start": [x["answer_start"] for x in answers]},
                }, here)
    return examples


def json_type(value) -> str:
    """The JSON name of a parsed value's type (a str is a "string", a dict an "object")."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def _shape(value) -> str:
    """A parsed JSON value, briefly: an object by its keys, anything else by its type."""
    if isinstance(value, dict):
        return "an object with keys " + (", ".join(map(str, list(value)[:6])) or "none")
    return f"a JSON {json_type(value)}"


def load_csv(path: Path, text: str, delimiter: str | None = None) -> Records:
    """CSV/TSV with a header row naming the columns (text, text_pair, label, ...). CSV
    fields may be quoted ("a, b" and "" for a quote); TSV fields are literal, quotes
    included, as GLUE's TSVs are read (a TSV field cannot hold a tab or a line break)."""
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    # strict: a quote that opens a field must close it, else the reader would run on through
    # the following lines and glue rows into one text without a word
    # newline="": lines end at \n, \r\n or \r (a classic Mac export), as the csv module wants them
    # skipinitialspace: "good, pos" is the label pos, not " pos", a class of its own; and , "a, b" is quoted
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True, quoting=quoting,
                        skipinitialspace=delimiter != "\t")
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a long document is no error
    try:
        header = _next_row(reader, path, delimiter)
        if header is None:
            raise DataError(f"{path}:1: empty file; expected a header row such as text{delimiter}label")
        header = [h.strip() for h in header]
        other = next((d for d in (";", "\t", ",") if d != delimiter and len(header) == 1 and d in header[0]), None)
        if other:   # every row would be one field, and the head's check would name a column "text;label"
            fix = {"\t": "rename it .tsv", ",": "rename it .csv"}.get(other, "save it with commas (.csv) or tabs (.tsv)")
            raise DataError(f"{path}:1: the header {header[0]!r} is one column: this file separates its fields by "
                            f"{other!r}, and a {path.suffix or 'CSV'} file is read split at {delimiter!r}; {fix}")
        if len(set(header)) != len(header) or not all(header):
            raise DataError(f"{path}:1: the header {header} has empty or repeated column names")
        examples = Records(path)
        while True:
            first = reader.line_num + 1                 # where the row starts (a quoted newline may span lines)
            row = _next_row(reader, path, delimiter)
            if row is None:
                return examples
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{first}: {len(row)} fields, expected {len(header)} "
                                f"({delimiter.join(header)!r}); quote fields that contain the delimiter")
            examples.add(dict(zip(header, row)), first)
    finally:
        csv.field_size_limit(limit)


def _next_row(reader, path: Path, delimiter: str) -> list[str] | None:
    """The reader's next row, None at the end; a row the csv module refuses → DataError."""
    first = reader.line_num + 1
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise DataError(f"{path}:{first}: a quote opens a field that no quote closes before the end of "
                            "the file; close it, or write a quote inside a field as \"\"") from None
        if "expected after" not in str(err):
            raise DataError(f"{path}:{first}: {err}") from None
        runs_on = f", on line {reader.line_num}," if reader.line_num > first else ""
        raise DataError(f"{path}:{first}: a field opens with a quote whose closing quote{runs_on} is not right "
                        f"before {delimiter!r} or the line's end; quote the whole field and write a quote inside "
                        'it as ""') from None


def load_conll(path: Path, text: str) -> Records:
    """CoNLL: one `token<TAB>tag` (or whitespace-separated, tag last) per line, a blank
    line between sentences; `-DOCSTART-` lines are skipped."""
    examples, tokens, tags, first = Records(path), [], [], 0
    for n, line in enumerate(text_lines(text), 1):
        if not line.strip():
            if tokens:
                examples.add({"tokens": tokens, "tags": tags}, first)
                tokens, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        line = line.rstrip()   # a trailing tab made the tag an empty last field
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise DataError(f"{path}:{n}: {line!r} has one field; expected token<TAB>tag "
                            "(a blank line between sentences)")
        tag = fields[-1].strip()
        if tag != "O" and not re.fullmatch(r"[BIESLU]-\S+", tag):
            raise DataError(f"{path}:{n}: tag {tag!r} is not BIO; expected O, B-TYPE or I-TYPE")
        first = first if tokens else n
        tokens.append(fields[0].strip())
        tags.append(tag)
    if tokens:
        examples.add({"tokens": tokens, "tags": tags}, first)
    return examples
