"""Fault suite, the command line's inputs: bad option values, input files with a bad line,
labelled data given to predict, paths that are folders or sit under a file, and a model
without its tokenizer each end in one line that names the problem and the fix (or,
for labels, do not stop prediction)."""
import io
import json
import shutil

import pytest

import bertcore
from bertcore import cli
from bertcore.cli import main
from bertcore.data import load_examples, read_text
from cli_testing import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


def saved_model(folder, checkpoint, name: str, head_type: str, labels: list):
    """A saved model of one head `name` with `labels` on the checkpoint, with its tokenizer/."""
    cfg = bertcore.BertConfig.from_pretrained(checkpoint)
    bertcore.TaskModel(bertcore.BertEncoder.from_pretrained(checkpoint),
                       {name: bertcore.create_head(head_type, cfg, labels=labels)},
                       tokenizer=bertcore.Tokenizer.from_pretrained(checkpoint)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, checkpoint):
    """A saved sentiment model (labels neg, pos)."""
    return saved_model(tmp_path_factory.mktemp("predict") / "m", checkpoint, "s", "classification", ["neg", "pos"])


FINETUNE = ["finetune", "--head", "ner", "--encoder", "e", "--train", "t", "--output", "o"]


# was: the demo failed inside torch and the bench ran with --threads 0 as "all cores"; a seed
# outside numpy's range failed with numpy's "Seed must be between 0 and 2**32 - 1" once the run had started
@pytest.mark.parametrize("argv, requirement", [
    (["demo", "--threads", "-1"], "must be 1 or more"), (["demo", "--threads", "0"], "must be 1 or more"),
    (["bench", "--threads", "0"], "must be 1 or more"),
    (["bench", "encoder", "--threads", "-1"], "must be 1 or more"),
    (["demo", "--seed", "-1"], "must be in [0, 2**32)"),
    ([*FINETUNE, "--seed", "4294967296"], "must be in [0, 2**32)")])
def test_option_values_out_of_range_are_refused_by_argparse(argv, requirement, monkeypatch, capsys):
    def ran(args):
        pytest.fail(f"{argv[0]} ran with {argv[-2]} {argv[-1]}")
    add, _ = cli.COMMANDS[argv[0]]
    monkeypatch.setitem(cli.COMMANDS, argv[0], (add, ran))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {argv[-2]}: {argv[-1]} {requirement}" in capsys.readouterr().err


def test_predict_names_the_file_and_line_of_an_input_without_the_field_the_head_reads(
        tmp_path, model_dir, capsys):
    data = tmp_path / "inputs.jsonl"
    data.write_text('{"text": "good film"}\n\n{"question": "what film ?"}\n', encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    # a text before the file: the bad input is the 2nd of 3, on the file's line 3
    assert main(["predict", "--model", str(model_dir), "bad plot", "--input", str(data), "--output", str(out)]) == 2
    line = one_line_error(capsys.readouterr().err, "predict")
    assert f"error: {data}:3: " in line and "no 'text' (it has question)" in line, line   # was: "example 3 ..."
    assert not out.exists()


def test_predict_names_the_line_and_fix_of_invalid_json_in_a_text_file_and_stdin(
        tmp_path, model_dir, monkeypatch, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text('good film\n{"text": oops}\n', encoding="utf-8")
    assert main(["predict", "--model", str(model_dir), "--input", str(texts)]) == 2
    line = one_line_error(capsys.readouterr().err, "predict")
    assert f"{texts}:2: invalid JSON (" in line and "a line that starts with { must be one JSON object" in line, line
    monkeypatch.setattr("sys.stdin", io.StringIO('good film\n{"id": 7}\n'))
    assert main(["predict", "--model", str(model_dir), "-"]) == 2
    assert "stdin:2: " in one_line_error(capsys.readouterr().err, "predict")


def test_predict_reads_one_input_per_line_of_a_text_file(tmp_path, model_dir, checkpoint, monkeypatch, capsys):
    """Before: str.splitlines also cut at U+2028, U+0085 and form feeds inside a line, so a
    file of 3 lines gave 5 predictions, no longer beside the lines they came from."""
    texts = tmp_path / "texts.txt"
    texts.write_text("good\u2028film\r\nbad\x0cplot\n\nfine\x85movie\n", encoding="utf-8")
    assert main(["predict", "--model", str(model_dir), "--input", str(texts)]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")) == 3
    monkeypatch.setattr("sys.stdin", io.StringIO("good\u2028film\nbad plot\n"))
    assert main(["embed", "--encoder", str(checkpoint), "-"]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")) == 2


def test_predict_ignores_the_gold_labels_of_labelled_data(tmp_path, model_dir, capsys):
    """As transformers' run_glue drops the label column to predict: a class the model never
    saw (or a malformed gold field) does not stop prediction, and predictions are those of
    the same texts without labels."""
    labelled = tmp_path / "dev.jsonl"
    labelled.write_text('{"text": "good film", "label": "pos"}\n{"text": "bad plot", "label": "unseen"}\n'
                        '{"id": "x", "text": "the actor", "label": ["not", "a", "class"]}\n', encoding="utf-8")
    assert main(["predict", "--model", str(model_dir), "--input", str(labelled)]) == 0  # was: label 'unseen' is ...
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--model", str(model_dir), "good film", "bad plot", "the actor"]) == 0
    bare = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["scores"] for r in rows] == [pytest.approx(r["scores"]) for r in bare]
    assert rows[1]["input"] == {"text": "bad plot", "label": "unseen"} and rows[2]["id"] == "x"  # shown as given


def test_a_folder_given_as_a_file_says_it_is_a_folder(tmp_path, model_dir, capsys):
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    for path in (folder, tmp_path):                          # with and without a data suffix
        with pytest.raises(IsADirectoryError, match=f"^data file {path} is a folder; name a file"):
            load_examples(path)
    assert main(["predict", "--model", str(model_dir), "--input", str(tmp_path)]) == 2
    assert f"data file {tmp_path} is a folder; name a file" in one_line_error(capsys.readouterr().err, "predict")


def test_a_path_under_a_file_says_its_parent_is_a_file(tmp_path, model_dir, capsys):
    data = tmp_path / "some.jsonl"
    data.write_text('{"text": "good film"}\n', encoding="utf-8")
    for path in (data / "x", data / "x.jsonl", data / "deeper" / "x.txt"):
        with pytest.raises(NotADirectoryError, match=f"^data file {path} cannot exist: {data} is a file"):
            read_text(path)
    assert main(["predict", "--model", str(model_dir), "--input", str(data / "x.jsonl")]) == 2
    assert f"{data} is a file, not a folder" in one_line_error(capsys.readouterr().err, "predict")


def test_read_text_says_what_the_file_is_for(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"^data file {tmp_path / 'no.jsonl'} does not exist$"):
        read_text(tmp_path / "no.jsonl")                                    # the default wording stays
    with pytest.raises(FileNotFoundError, match=f"^head options file {tmp_path / 'no.json'} does not exist$"):
        read_text(tmp_path / "no.json", what="head options file")
    with pytest.raises(IsADirectoryError, match=f"^head options file {tmp_path} is a folder"):
        read_text(tmp_path, what="head options file")
    unreadable = tmp_path / "secret.json"
    unreadable.write_text("{}", encoding="utf-8")

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(type(unreadable), "read_bytes", refuse)
    with pytest.raises(PermissionError) as error:                           # was: [Errno 13] Permission denied: ...
        read_text(unreadable, what="head options file")
    assert str(error.value) == f"cannot read head options file {unreadable}: Permission denied"


def test_a_model_without_its_tokenizer_says_to_pass_tokenizer(tmp_path, model_dir, checkpoint, capsys):
    bare = tmp_path / "m"
    shutil.copytree(model_dir, bare)
    shutil.rmtree(bare / "tokenizer")
    assert main(["predict", "--model", str(bare), "good film"]) == 2
    line = one_line_error(capsys.readouterr().err, "predict")
    assert f"{bare} has no tokenizer/ folder" in line and "pass --tokenizer FOLDER" in line, line
    assert "tokenizer=" not in line and "TaskModel(" not in line     # was: Python for the API
    assert main(["predict", "--model", str(bare), "--tokenizer", str(checkpoint), "good film"]) == 0
    assert main(["predict", "--model", str(model_dir), "good film"]) == 0
    ours, saved = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ours == saved


def test_embed_of_a_model_without_its_tokenizer_says_to_pass_tokenizer(tmp_path, checkpoint, capsys):
    cfg = bertcore.BertConfig.from_pretrained(checkpoint)
    bertcore.TaskModel(bertcore.BertEncoder.from_pretrained(checkpoint),
                       {"e": bertcore.create_head("embedding", cfg)}).save_pretrained(tmp_path / "m")
    assert main(["embed", "--model", str(tmp_path / "m"), "good film"]) == 2
    assert "pass --tokenizer FOLDER" in one_line_error(capsys.readouterr().err, "embed")
    assert main(["embed", "--model", str(tmp_path / "m"), "--tokenizer", str(checkpoint), "good film"]) == 0
    assert len(json.loads(capsys.readouterr().out)["embedding"]) == cfg.hidden_size


def test_predict_reads_both_a_file_and_stdin(tmp_path, model_dir, monkeypatch, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("good film\n", encoding="utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO("bad plot\n"))
    assert main(["predict", "--model", str(model_dir), "--input", str(texts), "-"]) == 0   # was: stdin only
    assert [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()] == ["good film", "bad plot"]


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory, checkpoint):
    """A saved NER model (tags O, B-PER)."""
    return saved_model(tmp_path_factory.mktemp("ner") / "ner", checkpoint, "ner", "ner", ["O", "B-PER"])


def test_predict_reads_bio_and_iob_files_as_conll(tmp_path, ner_dir, capsys):
    """.bio and .iob are CoNLL files to finetune and evaluate, but predict read them as text,
    a line each: "john<TAB>B-PER" was one input, its gold tag tagged as a word."""
    for suffix in (".conll", ".bio", ".iob"):
        file = tmp_path / f"dev{suffix}"
        file.write_text("john\tB-PER\nlives\tO\n\nmary\tB-PER\n", encoding="utf-8")
        assert main(["predict", "--model", str(ner_dir), "--input", str(file)]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [len(row["tags"]) for row in rows] == [2, 1], suffix          # was: 3 lines, 2 words each


def test_evaluate_names_the_file_and_line_of_what_encoding_finds(tmp_path, ner_dir, capsys):
    """A problem found while encoding (a tagged accent the lowercasing tokenizer drops) said
    "example 2:", where predict and finetune name the file's line."""
    file = tmp_path / "test.conll"
    file.write_text("john\tB-PER\n\nmary\tO\n\u0301\tB-PER\n", encoding="utf-8")
    assert main(["evaluate", "--model", str(ner_dir), "--data", str(file)]) == 2
    line = one_line_error(capsys.readouterr().err, "evaluate")
    assert f"{file}:3: token 2" in line, line
