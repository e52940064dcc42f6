"""Fault suite, the data's inputs: unusual files (Unicode line separators, long CSV fields,
unbalanced quotes, a BOM under encoding="utf-8", SQuAD JSON of the wrong shape) and
unusual values (NSP labels from a CSV, numbered class names, blank QA answers, NER
tokens the tokenizer drops) either load as written or end in one line naming the file,
the line or key, and the fix; never a silent change to an example."""
import contextlib
import csv
import io
import json
import re
import string
import sys

import pytest

import bertcore
from bertcore.cli import main
from bertcore.data import DataError, load_examples
from cli_testing import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the a of in is who where john lives paris london good bad film plot . ?".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """Every letter is a piece, so only what the tokenizer drops makes no sub-word."""
    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS + letters)]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return bertcore.Tokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def cfg(tok):
    return bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


def trainer(tmp_path, tok, cfg, kind, train, **options):
    model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {"h": bertcore.create_head(kind, cfg, **options)},
                               tokenizer=tok)
    return bertcore.Trainer(model, tokenizer=tok, train=train,
                            args=bertcore.TrainingArgs(str(tmp_path / "run"), progress=False))


def write(tmp_path, name, text):
    file = tmp_path / name
    file.write_bytes(text.encode("utf-8"))
    return file


# ---- files -----------------------------------------------------------------------------

def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    """json.dumps(ensure_ascii=False) leaves U+2028, U+2029 and U+0085 unescaped: valid JSON."""
    rows = [{"text": "a\u2028b", "label": "x"}, {"text": "c\x85d\u2029", "label": "y"}]
    file = write(tmp_path, "u.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows) + "oops\n")
    with pytest.raises(DataError, match=r"u.jsonl:3: invalid JSON"):    # was: u.jsonl:1: Unterminated string
        load_examples(file)
    file = write(tmp_path, "u.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    examples = load_examples(file)
    assert list(examples) == rows and examples.where(1).endswith("u.jsonl:2")


def test_a_csv_field_longer_than_the_csv_modules_limit_loads(tmp_path):
    text = "good " * 30000                                         # 150,000 characters: a long document
    file = write(tmp_path, "long.csv", f"text,label\n{text},pos\nbad,neg\n")
    limit = csv.field_size_limit()
    assert [len(e["text"]) for e in load_examples(file)] == [len(text), 3]  # was: csv.Error field larger than ...
    assert csv.field_size_limit() == limit                         # the process-wide limit is left as it was


def test_an_unbalanced_quote_is_an_error_not_rows_glued_into_one_text(tmp_path):
    # TSV fields are literal, as GLUE's are read: the quotes stay and every row is its own example
    tsv = write(tmp_path, "q.tsv", 'text\tlabel\n"loved it\tpos\nbad plot\tneg\n"the" film\tneg\n')
    assert [e["text"] for e in load_examples(tsv)] == ['"loved it', "bad plot", '"the" film']
    #                                          was: one example, text 'loved it\tpos\nbad plot\tneg\nthe" film'
    quoted = write(tmp_path, "q2.csv", 'text,label\n"loved it",pos\n"the" film,neg\n')
    with pytest.raises(DataError, match=r"q2.csv:3: a field opens with a quote whose closing quote is not right "
                                        r"before ',' or the line's end; quote the whole field"):
        load_examples(quoted)                  # was: text 'the film' (the quotes dropped without a word)
    csv_ = write(tmp_path, "q.csv", 'text,label\ngood,pos\n"bad film,neg\nthe plot,neg\n')
    with pytest.raises(DataError, match=r"q.csv:3: a quote opens a field that no quote closes before the end"):
        load_examples(csv_)                    # was: q.csv:4: 1 fields, expected 2
    ok = write(tmp_path, "ok.csv", 'text,label\n"two\nlines, quoted",pos\n"say ""hi""",neg\nbad,neg\n')
    examples = load_examples(ok)
    assert [e["text"] for e in examples] == ["two\nlines, quoted", 'say "hi"', "bad"]
    assert [examples.where(i).rsplit(":", 1)[1] for i in range(3)] == ["2", "4", "5"]  # was: 3, 4, 5 (row ends)


def test_csv_lines_may_end_in_a_lone_carriage_return(tmp_path):
    file = write(tmp_path, "mac.csv", 'text,label\r"good\r\nfilm",pos\rbad,neg\r')   # Excel's "CSV (Macintosh)"
    examples = load_examples(file)                       # was: csv.Error new-line character seen in unquoted field
    assert list(examples) == [{"text": "good\r\nfilm", "label": "pos"}, {"text": "bad", "label": "neg"}]
    assert examples.where(1).endswith("mac.csv:4")


@pytest.mark.parametrize("name, text, fix", [
    ("excel.csv", "text;label\ngood;pos\n", "by ';', and a .csv file is read split at ','; "
                                              "save it with commas (.csv) or tabs (.tsv)"),
    ("tabs.csv", "text\tlabel\ngood\tpos\n", "by '\\t', and a .csv file is read split at ','; rename it .tsv"),
    ("commas.tsv", "text,label\ngood,pos\n", "by ',', and a .tsv file is read split at '\\t'; rename it .csv")])
def test_a_file_split_at_another_delimiter_is_named_so(tmp_path, name, text, fix):
    """A European Excel's CSV (semicolons) read as one column "text;label": the head then said
    "missing text, label (it has text;label)", and options read from the data named no class."""
    with pytest.raises(DataError, match=re.escape(f"{name}:1: the header {text.split(chr(10))[0]!r} is one column: "
                                                  f"this file separates its fields {fix}")):
        load_examples(write(tmp_path, name, text))
    assert load_examples(write(tmp_path, "one.csv", "text\ngood; fine\n"))[0] == {"text": "good; fine"}


def test_a_bom_is_no_part_of_the_first_column_under_encoding_utf8(tmp_path):
    file = write(tmp_path, "bom.csv", "\ufefftext,label\ngood,pos\n")
    assert load_examples(file, encoding="utf-8") == [{"text": "good", "label": "pos"}]  # was: key '\ufefftext'
    file = write(tmp_path, "bom.jsonl", '\ufeff{"text": "good"}\n')
    assert load_examples(file, encoding="utf-8") == [{"text": "good"}]          # was: invalid JSON (BOM)


def squad(paragraphs=None, qas=None, article=None):
    qas = qas if qas is not None else [{"question": "q", "answers": []}]
    paragraphs = paragraphs if paragraphs is not None else [{"context": "c", "qas": qas}]
    return {"data": [article if article is not None else {"paragraphs": paragraphs}]}


@pytest.mark.parametrize("value, message", [
    (squad(article="an article"), r"data\[0\]: expected a SQuAD article \{\"paragraphs\": \[...\]\}, got a JSON "
                                  r"string"),                                   # was: AttributeError
    (squad(article={"text": "a", "label": "b"}), r"data\[0\]: .*got an object with keys text, label; for examples "
                                                 r"of other heads use .jsonl"),  # was: no examples in the file
    (squad(article={"paragraphs": {"context": "c"}}), r"data\[0\].paragraphs is a JSON object; expected a list"),
    (squad(paragraphs=["context qas"]), r"data\[0\].paragraphs\[0\]: expected keys context and qas"),  # TypeError
    (squad(paragraphs=[{"context": "c", "qas": {"question": "q"}}]), r"data\[0\].paragraphs\[0\].qas is a JSON "
                                                                      r"object; expected a list"),  # AttributeError
    (squad(qas=["question answers"]), r"data\[0\].paragraphs\[0\].qas\[0\] is a JSON string; expected a "
                                      r"\{question, answers\} object"),           # was: AttributeError
    (squad(qas=[{"question": "q", "answers": [{"text": "c", "answer_start": 0}], "is_impossible": "false"}]),
     r"qas\[0\]: is_impossible is 'false'; expected true or false"),  # was: answers dropped, unanswerable
    ([{"text": "a"}, "b"], r"x.json: \[1\] is a JSON string; expected a list of example objects"),
])
def test_json_of_the_wrong_shape_names_the_key(tmp_path, value, message):
    with pytest.raises(DataError, match=message):
        load_examples(write(tmp_path, "x.json", json.dumps(value)))


# ---- values ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    (7, r"answer text 7 is not a non-blank string"),              # was: TypeError: object of type 'int' has no len()
    ("", r"answer text '' is not a non-blank string"),            # was: StopIteration
    (" ", r"answer text ' ' is not a non-blank string"),          # was: trained on start 6 > end 5
])
def test_qa_answers_must_have_words(tmp_path, tok, cfg, text, message):
    context = "john lives in paris ."
    good = {"question": "where ?", "context": context, "answers": {"text": ["paris"], "answer_start": [14]}}
    bad = {**good, "answers": [{"text": text, "answer_start": 10}]}
    file = write(tmp_path, "qa.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"qa.jsonl:2: {message}; give the answer's words, or answers \[\]"):
        trainer(tmp_path, tok, cfg, "qa", file)


def test_nsp_labels_from_a_csv_and_labels_it_cannot_take(tmp_path, tok, cfg):
    rows = "text,text_pair,label\ngood film,bad plot,1\nthe film,good plot,0\nthe plot,is good,IsNext\n"
    data = trainer(tmp_path, tok, cfg, "nsp", write(tmp_path, "nsp.csv", rows)).train_sets[0]
    assert [f["next_sentence_label"] for f in data.features] == [1, 0, 0]   # was: tuple.index(x): x not in tuple
    for label in (2, -1, True, "yes"):                 # was: 2 and -1 failed in the loss, True trained as 1
        file = write(tmp_path, "nsp.jsonl", json.dumps({"text": "a", "text_pair": "b", "label": label}) + "\n")
        with pytest.raises(DataError, match=rf"nsp.jsonl:1: label {label!r} is not an NSP label; expected 0 or "
                                            r"IsNext \(B follows A\), 1 or NotNext"):
            trainer(tmp_path, tok, cfg, "nsp", file)
    file = write(tmp_path, "nsp.jsonl", json.dumps({"text": "a", "text_pair": None, "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"nsp.jsonl:1: text_pair is NoneType None; expected a string"):
        trainer(tmp_path, tok, cfg, "nsp", file)     # was: trained as a single sentence


def test_nsp_finetune_on_a_csv_from_the_command_line(tmp_path, checkpoint, capsys):
    data = write(tmp_path, "nsp.csv", "text,text_pair,label\ngood film,bad plot,1\nthe film,good plot,0\n")
    assert main(["finetune", "--head", "nsp", "--encoder", str(checkpoint), "--train", str(data), "--output",
                 str(tmp_path / "out"), "--epochs", "1", "--no-progress"]) == 0   # was: 2, tuple.index(x): ...
    assert "error" not in capsys.readouterr().err


def test_an_int_label_is_no_class_index_when_the_class_names_are_numbers(tok, cfg):
    head = bertcore.create_head("classification", cfg, labels=["1", "2", "3", "4", "5"])   # star ratings
    with pytest.raises(ValueError, match=r"label 0 is not one of the head's labels \['1', '2', '3', '4', '5'\]"):
        head.check_example({"text": "good", "label": 0})                 # was: class '1' (index 0), silently
    assert head.encode({"text": "good", "label": 5}, tok)[0]["labels"] == 4   # a number names its class
    named = bertcore.create_head("classification", cfg, labels=["neg", "pos"])
    assert named.label_index(1) == 1                                     # indices still work for named classes
    multi = bertcore.create_head("classification", cfg, labels=["a", "b"], multi_label=True)
    with pytest.raises(ValueError, match=r"label \[True\] is not a label or a list of labels"):
        multi.check_example({"text": "good", "label": [True]})           # was: class 'b' (True == 1)


def test_digit_labels_of_a_csv_are_class_indices_as_a_jsonl_files_ints_are(tmp_path, checkpoint, capsys):
    """GLUE's TSVs label SST-2 with 0/1. Before: with --labels neg,pos the TSV was refused
    ("label '1' is not one of the head's labels") where the same data as JSONL trained."""
    tsv = write(tmp_path, "sst2.tsv", "text\tlabel\ngood film\t1\nbad plot\t0\nfine actor\t1\n")
    jsonl = write(tmp_path, "sst2.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n"
                                                  for t, y in (("good film", 1), ("bad plot", 0), ("fine actor", 1))))
    for data in (tsv, jsonl):
        assert main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(data),
                     "--labels", "neg,pos", "--output", str(tmp_path / data.suffix[1:]), "--max-steps", "1",
                     "--no-progress"]) == 0, capsys.readouterr().err
    head = bertcore.create_head("classification", bertcore.BertConfig(vocab_size=10), labels=["neg", "pos"])
    assert [head.label_index(y) for y in ("0", "1", 1, "pos")] == [0, 1, 1, 1]
    with pytest.raises(ValueError, match=r"label '2' is not one of the head's labels \['neg', 'pos'\]; data with "
                                         r"another label set needs a new head \(its labels are fixed when it is "
                                         r"built: given, or read from the training data\)"):
        head.label_index("2")     # it said "(labels are read from the training data)", also of given ones


def test_a_glue_file_is_read_with_its_columns_renamed(tmp_path, checkpoint, capsys, monkeypatch):
    """GLUE's SST-2 names its text column "sentence". Before: the file could not be read
    at all (rewrite it, or load it in Python), and the error did not say how."""
    tsv = write(tmp_path, "sst2.tsv", "sentence\tlabel\ngood film\t1\nbad plot\t0\nfine actor\t1\n")
    finetune = ["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(tsv),
                "--labels", "neg,pos", "--output", str(tmp_path / "out"), "--max-steps", "1", "--no-progress"]
    assert main(finetune) == 2
    assert ("sst2.tsv:2: missing text; a classification example needs text, label (it has sentence, label); to read "
            "another column as text: --rename OLD=text") in one_line_error(capsys.readouterr().err, "finetune")
    assert main([*finetune, "--rename", "sentence=text"]) == 0
    capsys.readouterr()
    model = str(tmp_path / "out" / "model")
    for rename, error in (("sentense=text", "sst2.tsv: no column 'sentense' to rename (its columns: label, sentence)"),
                          ("sentence=label", "sst2.tsv:2: renaming gives two 'label' columns"),
                          ("sentence", "argument --rename: 'sentence': expected OLD=NEW, e.g. sentence=text")):
        with pytest.raises(SystemExit) if "=" not in rename else contextlib.nullcontext():
            assert main(["evaluate", "--model", model, "--data", str(tsv), "--rename", rename]) == 2
        assert error in one_line_error(capsys.readouterr().err, "evaluate")
    with pytest.raises(SystemExit):              # was: the last of the two, silently
        main(["evaluate", "--model", model, "--data", str(tsv), "--rename", "sentence=text", "--rename", "sentence=x"])
    assert "'sentence' is renamed twice (sentence=text, sentence=x); give it once" in capsys.readouterr().err
    assert main(["evaluate", "--model", model, "--data", str(tsv), "--rename", "sentence=text"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 3
    assert main(["predict", "--model", model, "--input", str(tsv), "--rename", "sentence=text"]) == 0
    assert [json.loads(line)["input"]["text"] for line in capsys.readouterr().out.splitlines()] == \
        ["good film", "bad plot", "fine actor"]
    # JSON lines on stdin are records too (--rename passed them by: "missing text"), plain texts are not
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"sentence": "good film"}\nbad plot\n'))
    assert main(["predict", "--model", model, "-", "--rename", "sentence=text"]) == 0
    assert [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()] == \
        [{"text": "good film"}, "bad plot"]
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"text": "good film"}\n'))
    assert main(["predict", "--model", model, "-", "--rename", "sentence=text"]) == 2
    assert "stdin: no column 'sentence' to rename (its columns: text)" in one_line_error(capsys.readouterr().err,
                                                                                         "predict")
    assert main(["predict", "--model", model, "good film", "--rename", "sentence=text"]) == 2   # was: ignored
    assert "these inputs are plain texts: drop --rename" in one_line_error(capsys.readouterr().err, "predict")
    # the API: a swap is one rename, not a clash; a dataset renames its own columns
    swapped = load_examples(tsv, rename={"sentence": "label", "label": "sentence"})
    assert swapped[0] == {"label": "good film", "sentence": "1"} and swapped.where(0).endswith("sst2.tsv:2")
    with pytest.raises(TypeError, match="rename_columns"):
        load_examples([{"sentence": "a"}], rename={"sentence": "text"})


def test_ner_tags_on_tokens_the_tokenizer_drops_are_refused(tmp_path, tok, cfg):
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    rows = [{"tokens": ["john", "lives"], "tags": ["B-PER", "O"]},
            {"tokens": ["john", "\u200b", "paris"], "tags": ["B-PER", "I-PER", "B-LOC"]}]
    file = write(tmp_path, "ner.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"ner.jsonl:2: token 2 '\\u200b' is tagged I-PER but the tokenizer makes no "
                                        r"sub-word of it .* remove the token or tag it O"):
        trainer(tmp_path, tok, cfg, "ner", file, labels=labels)          # was: the tag dropped, unseen
    accent = [{"tokens": ["john", "\u0301"], "tags": ["B-PER", "I-PER"]}]   # dropped by this (uncased) tokenizer
    with pytest.raises(ValueError, match=r"token 2 '\u0301' is tagged I-PER but the tokenizer makes no sub-word"):
        trainer(tmp_path, tok, cfg, "ner", accent, labels=labels)
    as_o = [{"tokens": ["john", "\u200b", "paris"], "tags": ["B-PER", "O", "B-LOC"]}]
    assert trainer(tmp_path, tok, cfg, "ner", as_o, labels=labels).train_sets[0].features   # an O costs nothing


def test_ner_sentences_without_tokens(tmp_path, tok, cfg):
    labels = ["O", "B-PER"]
    file = write(tmp_path, "ner.jsonl", '{"tokens": ["john"], "tags": ["B-PER"]}\n{"tokens": [], "tags": []}\n')
    with pytest.raises(DataError, match=r"ner.jsonl:2: tokens is empty; a sentence needs one token at least"):
        trainer(tmp_path, tok, cfg, "ner", file, labels=labels)        # was: IndexError: list index out of range
    model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {"n": bertcore.create_head("ner", cfg, labels=labels)},
                               tokenizer=tok)
    assert model.predict([(), ("john",)])[0] == {"entities": [], "tags": []}   # was: IndexError
    with pytest.raises(ValueError, match=r"labels: 'B-PER' is given twice; name each tag once"):
        bertcore.create_head("ner", cfg, labels=["O", "B-PER", "B-PER"])    # was: a class no tag ever trains


@pytest.mark.parametrize("head, options, message", [
    # each was built, trained and saved: a softmax over one class, a tagger that only says O, tags
    # the data check refuses and the decoder reads as no entity
    ("classification", {"labels": ["pos"]}, r"labels=\['pos'\] name one class, which a classifier always predicts"),
    ("ner", {"labels": ["O"]}, r"labels \['O'\] name no entity type"),
    ("ner", {"labels": ["O", "PER"]}, r"labels: tag 'PER' is not BIO/BIOES"),
    ("ner", {"labels": ["O", "X-PER", "B-PER"]}, r"labels: tag 'X-PER' is not BIO/BIOES")])
def test_a_head_that_could_learn_nothing_is_refused(cfg, head, options, message):
    with pytest.raises(ValueError, match=message):
        bertcore.create_head(head, cfg, **options)
    assert bertcore.create_head("classification", cfg, labels=["pos"], multi_label=True).num_labels == 1  # a yes/no tag


def test_training_data_of_one_label_is_refused_before_a_run(tmp_path, checkpoint, capsys):
    data = write(tmp_path, "all-pos.csv", "text,label\ngood film,pos\nfine actor,pos\n")
    assert main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(data),
                 "--output", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"]) == 2
    assert "labels=['pos'] name one class" in one_line_error(capsys.readouterr().err, "finetune")
    assert not (tmp_path / "run").exists()
    # what the head's checks refuse is named by its line, not by the labels the rest of the data gives
    for name, text, error in (
            ("missing.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad"}\n', "missing.jsonl:2: missing label"),
            ("io.jsonl", '{"tokens": ["john"], "tags": ["PER"]}\n{"tokens": ["mary"], "tags": ["B-PER"]}\n',
             "io.jsonl:1: word 1 ('john'): tag 'PER' is not BIO/BIOES"),
            ("no-tags.jsonl", '{"tokens": ["john"], "tags": ["O"]}\n{"tokens": ["mary"]}\n',
             "no-tags.jsonl:2: missing tags")):
        head, data = "ner" if "tokens" in text else "classification", write(tmp_path, name, text)
        assert main(["finetune", "--head", head, "--encoder", str(checkpoint), "--train", str(data),
                     "--output", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"]) == 2
        assert error in one_line_error(capsys.readouterr().err, "finetune")


def test_conll_lines_end_at_line_breaks_only(tmp_path):
    # a form feed or U+2028 inside a token is no line break (str.splitlines made it one: the
    # token's line lost its tag, "has one field", and the line numbers after it drifted)
    file = write(tmp_path, "ner.conll", "Paris\u2028x\tB-LOC\nis\tO\r\n\r\nRome\x0c\tB-LOC\nbad\n")
    with pytest.raises(DataError, match=r"ner.conll:5: 'bad' has one field"):
        load_examples(file)
    file = write(tmp_path, "ok.conll", "Paris\u2028x\tB-LOC\nis\tO\r\n\r\nRome\x0c\tB-LOC\n")
    examples = load_examples(file)
    assert [e["tags"] for e in examples] == [["B-LOC", "O"], ["B-LOC"]]
    assert examples[0]["tokens"][0] == "Paris\u2028x" and examples.where(1).endswith("ok.conll:4")


def test_numbers_as_text_that_are_not_whole_make_a_regression(tmp_path):
    # an STS-B-like CSV: its scores are text cells; before, every distinct score became a class
    from bertcore_classification import ClassificationHead
    file = write(tmp_path, "sts.csv", "text,text_pair,label\na,b,3.8\nc,d,0.5\ne,f,5.0\n")
    assert ClassificationHead.options_from_examples(load_examples(file)) == {"num_labels": 1}
    whole = [{"label": "1"}, {"label": "2"}, {"label": "2"}]          # whole numbers: classes, as before
    assert ClassificationHead.options_from_examples(whole) == {"labels": ["1", "2"]}
    mixed = [{"label": "3.8"}, {"label": "nan"}]                        # not all finite numbers: classes
    assert ClassificationHead.options_from_examples(mixed) == {"labels": ["3.8", "nan"]}


def test_a_space_after_a_csv_comma_is_no_part_of_the_field(tmp_path):
    # before: labels " pos" and "pos" were two classes, and , "a, b" split at its comma
    file = write(tmp_path, "spaced.csv", 'text, label\ngood film, pos\n"bad, really", neg\nfine,pos\n')
    assert list(load_examples(file)) == [{"text": "good film", "label": "pos"},
                                         {"text": "bad, really", "label": "neg"}, {"text": "fine", "label": "pos"}]


def test_a_trailing_tab_or_space_is_no_empty_tag(tmp_path):
    """'john<TAB>B-PER<TAB>' made the tag '' ("tag '' is not BIO"), naming no fix (NER walk)."""
    examples = load_examples(write(tmp_path, "t.conll", "john\tB-PER\t\nlives\tO \n"))
    assert [e["tags"] for e in examples] == [["B-PER", "O"]]
