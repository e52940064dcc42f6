"""Fault suite, `bertcore embed` and the embedding head: a JSONL line whose "text" is not a
string is refused with its file:line (it was embedded as "None"), `-` reads stdin as in
`bertcore predict`, and a cached Hub name keeps its sentence-transformers pooling."""
import io
import json
import os
import sys

import pytest

import bertcore_embedding as E
from bertcore.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

HUB_NAME = "org/tiny-st"


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("bertcore embed: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("line, got", [('{"text": null}', "null"), ('{"text": 3}', "number"),
                                       ('{"text": ["a"]}', "array"), ('{"text": true}', "boolean")])
def test_jsonl_text_that_is_not_a_string_is_refused_with_its_line(checkpoint, tmp_path, capsys, line, got):
    file = tmp_path / "texts.jsonl"
    file.write_text(f'{{"text": "good film"}}\n\n{line}\n', encoding="utf-8")   # the bad one is line 3
    assert main(["embed", "--encoder", str(checkpoint), "--input", str(file)]) == 2
    out, err = capsys.readouterr()
    assert out == ""                                                         # was: an embedding of "None"
    assert f'{file}:3: "text" must be a string (got {got})' in one_line_error(err)


@pytest.mark.parametrize("line, message", [('{"sentence": "x", "id": 1}', 'no "text" field (it has sentence, id)'),
                                           ('["a text"]', "got a JSON list; expected an object"),
                                           ('{"text": "x"', "invalid JSON")])
def test_other_bad_jsonl_lines_name_their_line(checkpoint, tmp_path, capsys, line, message):
    file = tmp_path / "texts.jsonl"
    file.write_text(f'{{"text": "good film"}}\n{line}\n', encoding="utf-8")
    assert main(["embed", "--encoder", str(checkpoint), "--input", str(file)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"{file}:2: {message}" in one_line_error(err)


def test_embed_takes_a_device_as_predict_does(checkpoint, capsys):
    for device, code in (("cpu", 0), ("gpu", 2)):   # embed had no --device (predict and evaluate have)
        assert main(["embed", "--encoder", str(checkpoint), "good film", "--device", device]) == code
        assert capsys.readouterr().err.count("device='gpu' is not a device") == (code == 2)


def test_a_csv_or_tsv_input_embeds_its_text_column_not_its_lines(checkpoint, tmp_path, capsys):
    """Before: read as lines, the header was embedded as a text and 'good, fine,pos' whole."""
    csv_file = tmp_path / "texts.csv"
    csv_file.write_text('text,label\n"good, fine",pos\nbad plot,neg\n', encoding="utf-8")
    tsv_file = tmp_path / "texts.tsv"
    tsv_file.write_text("sentence\tlabel\ngood, fine\tpos\nbad plot\tneg\n", encoding="utf-8")
    for argv in (["--input", str(csv_file)], ["--input", str(tsv_file), "--rename", "sentence=text"]):
        assert main(["embed", "--encoder", str(checkpoint), *argv]) == 0
        assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == ["good, fine", "bad plot"]
    assert main(["embed", "--encoder", str(checkpoint), "--input", str(tsv_file)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f'{tsv_file}:2: no "text" field (it has sentence, label)' in one_line_error(err)
    assert "or --rename OLD=text" in err
    lines = tmp_path / "texts.txt"               # texts a line each have no columns: --rename was ignored
    lines.write_text("good film\n", encoding="utf-8")
    for argv in (["--input", str(lines)], ["good film"]):
        assert main(["embed", "--encoder", str(checkpoint), *argv, "--rename", "sentence=text"]) == 2
        assert "drop --rename" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["-"], ["good film", "-"]])   # --input -: test_embedding.py
def test_dash_reads_stdin_like_predict(checkpoint, monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "stdin", io.StringIO("bad movie\n\nthe plot\n"))
    assert main(["embed", "--encoder", str(checkpoint), *argv]) == 0
    texts = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert texts == [t for t in argv if t != "-"] + ["bad movie", "the plot"]   # was: "-" embedded


def test_dash_and_input_file_are_both_read(checkpoint, tmp_path, monkeypatch, capsys):
    file = tmp_path / "texts.txt"
    file.write_text("from the file\n", encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    assert main(["embed", "--encoder", str(checkpoint), "-", "--input", str(file)]) == 0
    texts = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert texts == ["from the file", "from stdin"]


def _sentence_transformers_files(folder):
    """modules.json (Transformer → Pooling → Normalize), mean pooling, max_seq_length 32."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))


@pytest.fixture
def hub_cache(checkpoint, tmp_path, monkeypatch):
    """HUB_NAME in a fake Hugging Face cache: the tiny encoder plus sentence-transformers files."""
    repo = tmp_path / "hub" / ("models--" + HUB_NAME.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for file in checkpoint.iterdir():
        os.symlink(file, snapshot / file.name)
    _sentence_transformers_files(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_a_cached_hub_name_keeps_its_sentence_transformers_options(hub_cache):
    options = E.EmbeddingHead.options_from_checkpoint(HUB_NAME)
    assert options == E.EmbeddingHead.options_from_checkpoint(hub_cache) != {}      # was: {} for the name
    assert options == {"pooling": "mean", "normalize": True, "max_seq_length": 32}
    head = E.load(HUB_NAME).heads["embedding"]
    assert head.get_config() == {**options, "scale": 20.0, "do_lower_case": False}     # was: the defaults


def test_embed_cli_takes_a_cached_hub_name(hub_cache, capsys):
    text = "good film " * 20          # > 32 tokens: the checkpoint's max_seq_length cuts it
    assert main(["embed", "--encoder", HUB_NAME, "--no-normalize", text]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    model = E.load(hub_cache, normalize=False)
    assert line["embedding"] == pytest.approx(E.encode(model, text).tolist(), abs=1e-6)   # was: cut at 64


def test_a_jsonl_text_holding_a_line_separator_is_one_text(checkpoint, tmp_path, capsys):
    """Before: embed split its JSONL at U+2028 too (str.splitlines), which JSON strings may hold
    unescaped: "invalid JSON" for a valid file. It now reads JSONL as training data is read."""
    file = tmp_path / "texts.jsonl"
    file.write_text('{"text": "good\u2028film"}\n{"text": "bad plot"}\n', encoding="utf-8")
    assert main(["embed", "--encoder", str(checkpoint), "--input", str(file)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.split("\n") if line]   # U+2028 is no line end
    assert len(rows) == 2
