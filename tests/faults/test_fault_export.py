"""Fault suite, leaving and loading models: a full disk in the middle of an export, an
output inside the model folder, serving inputs that do not fit, a tampered weights file,
a vocab.txt saved by a Windows editor, a fine-tuned source's labels. Each ends in one
line that names the problem and the fix, and nothing is left half-written or executed."""
import errno
import json
import os
from pathlib import Path

import pytest
import torch

import bertcore
import bertcore.files as files
from bertcore import plugins
from bertcore.checkpoint import CheckpointError
from bertcore.cli import main
from bertcore.export import ServingModel, export_program, export_transformers

WORDS = "the a cat sat on mat good movie".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, one_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return bertcore.Tokenizer.from_pretrained(path)


def make_model(tok, heads=("classification",), **extra):
    cfg = bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=16, extra=extra)
    torch.manual_seed(0)
    options = {"classification": {"labels": ["neg", "pos"]}, "qa": {}, "nsp": {}}
    built = {kind: bertcore.create_head(kind, cfg, **options[kind]) for kind in heads}
    return bertcore.TaskModel(bertcore.BertEncoder(cfg), built, tokenizer=tok).eval()


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertcore export: error:"), err
    return lines[0]


# ---- bertcore export ------------------------------------------------------------------------

def test_a_full_disk_during_an_onnx_export_leaves_no_half_folder(tmp_path, tok, monkeypatch, capsys):
    """Before: model.onnx and tokenizer.json stayed in the output, which looked complete
    without vocab.txt, and the next run refused the folder as not empty."""
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
    make_model(tok).save_pretrained(tmp_path / "model")
    real = files.atomic_write

    def full_at_vocab(path, write, mode=0o666):
        def no_space(tmp):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, no_space if Path(path).name == "vocab.txt" else write, mode)

    monkeypatch.setattr(files, "atomic_write", full_at_vocab)
    out = tmp_path / "onnx"
    code = main(["export", "--model", str(tmp_path / "model"), "--to", "onnx", str(out)])
    assert code == 2 and "the disk is full" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]      # no output, no temp folder
    monkeypatch.setattr(files, "atomic_write", real)
    assert main(["export", "--model", str(tmp_path / "model"), "--to", "onnx", str(out)]) == 0   # space again
    assert {"model.onnx", "vocab.txt", "tokenizer.json"} <= {p.name for p in out.iterdir()}


def test_an_export_inside_the_model_folder_is_refused(tmp_path, tok, capsys):
    """Before: written into runs/x/model/hf, after which every save of that model (a
    finetune run's last step) failed: the folder 'holds files that are not a saved model'."""
    model = make_model(tok)
    model.save_pretrained(tmp_path / "model")
    before = sorted(p.name for p in (tmp_path / "model").iterdir())
    code = main(["export", "--model", str(tmp_path / "model"), "--to", "transformers", str(tmp_path / "model" / "hf")])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "is inside the model folder" in line and "export beside it" in line
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before
    model.save_pretrained(tmp_path / "model")                           # the model folder can still be saved over


def test_the_output_folder_may_be_named_with_output_as_every_other_command_names_it(tmp_path, tok, capsys):
    """Before: `--output DIR` was "bertcore: error: unrecognized arguments: --output",
    pointing at `bertcore --help`, which does not list export's options."""
    make_model(tok).save_pretrained(tmp_path / "model")
    base = ["export", "--model", str(tmp_path / "model"), "--to", "transformers"]
    assert main([*base, "--output", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([*base, str(tmp_path / "hf2"), "--bogus"])
    assert done.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert "unrecognized arguments: --bogus (`bertcore export --help` lists the options)" in line
    for twice in ([], [str(tmp_path / "a"), "--output", str(tmp_path / "b")]):
        assert main([*base, *twice]) == 2
        assert "give the output folder once" in one_line(capsys.readouterr().err)


def test_several_heads_without_head_names_the_command_option(tmp_path, tok, capsys):
    """Before: 'pass head=NAME', the Python API's keyword, which the command does not take."""
    make_model(tok, heads=("classification", "nsp")).save_pretrained(tmp_path / "model")
    code = main(["export", "--model", str(tmp_path / "model"), "--to", "transformers", str(tmp_path / "hf")])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "pass --head NAME" in line and "classification, nsp" in line
    assert not (tmp_path / "hf").exists()


def test_a_fine_tuned_sources_labels_do_not_leak_into_another_heads_export(tmp_path, tok):
    """Before: a QA head on an encoder from a 3-label MNLI checkpoint was exported with
    id2label of 3 labels and num_labels=2: transformers 4 builds a 3-output qa_outputs
    and cannot load the weights (transformers 5 warns and drops the labels)."""
    stale = {"id2label": {"0": "neg", "1": "mid", "2": "pos"}, "label2id": {"neg": 0, "mid": 1, "pos": 2},
             "num_labels": 3, "problem_type": "single_label_classification", "finetuning_task": "mnli"}
    out = export_transformers(make_model(tok, heads=("qa",), **stale), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["num_labels"] == 2 and len(config.get("id2label", {0: 0, 1: 1})) == 2
    assert "finetuning_task" not in config and "problem_type" not in config
    assert config["architectures"] == ["BertForQuestionAnswering"]


# ---- ServingModel ----------------------------------------------------------------------------

def _batch():
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("case, error, message", [
    ("mask (B, 1)", ValueError, r"attention_mask has shape \(2, 1\), input_ids has \(2, 5\)"),
    ("additive mask", ValueError, r"attention_mask must hold 1 \(token\) and 0 \(padding\)"),
    ("too long", ValueError, r"20 positions per row, over the model's max_position_embeddings=16; truncate"),
    ("id past the vocabulary", ValueError, r"input_ids must lie in \[0, 13\) \(vocab_size\)"),
    ("segment id past type_vocab_size", ValueError, r"token_type_ids must lie in \[0, 2\) \(type_vocab_size\)"),
    ("float ids", TypeError, r"input_ids must be an integer tensor, got torch.float32"),
    ("one sequence, 1-D", ValueError, r"input_ids must be \(batch, seq_len\).*input_ids\[None\]"),
])
def test_serving_refuses_inputs_that_do_not_fit(tok, case, error, message):
    """Before: a (B, 1) or additive (0 / -1e9) mask broadcast into outputs that ignore the
    padding, or mask the real tokens, without a word; the others were IndexError 'index out
    of range in self', a RuntimeError of torch's embedding, 'not enough values to unpack'."""
    serving = ServingModel(make_model(tok)).eval()
    ids, mask = _batch()
    types = torch.zeros_like(ids)
    args = {"mask (B, 1)": (ids, mask[:, :1], types),
            "additive mask": (ids, torch.where(mask.bool(), 0.0, -1e9), types),
            "too long": (torch.full((2, 20), 5), torch.ones(2, 20, dtype=torch.long), torch.zeros(2, 20).long()),
            "id past the vocabulary": (ids + 100 * mask, mask, types),
            "segment id past type_vocab_size": (ids, mask, types + 5),
            "float ids": (ids.float(), mask, types),
            "one sequence, 1-D": (ids[0], mask[0], types[0])}[case]
    with torch.no_grad(), pytest.raises(error, match=message):
        serving(*args)
    with torch.no_grad():                                                 # the right batch still runs
        assert serving(ids, mask, types)["logits"].shape == (2, 2)


def test_an_exported_program_refuses_a_batch_past_the_position_table_by_its_bound(tok):
    """Before: 'IndexError: index out of range in self' from inside the program's embedding."""
    serving = ServingModel(make_model(tok)).eval()
    program = export_program(serving).module()
    def batch(seqlen):
        return torch.full((2, seqlen), 5), torch.ones(2, seqlen, dtype=torch.long), torch.zeros(2, seqlen).long()
    with torch.no_grad():
        assert program(*batch(16))["logits"].shape == (2, 2)              # max_position_embeddings=16 fits
        with pytest.raises(AssertionError, match=r"input_ids.size\(\)\[1\] <= 16"):
            program(*batch(17))


# ---- loading -----------------------------------------------------------------------------

def test_a_pickle_weights_file_is_refused_in_one_line_and_never_run(tmp_path):
    """Before: torch's multi-line refusal, passed on whole: it advises re-running torch.load
    with weights_only=False (which runs the payload) and ends 'the file is truncated'."""
    proof = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    folder = tmp_path / "bert"
    bertcore.BertConfig(vocab_size=13, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16).save_pretrained(folder)
    torch.save({"embeddings.word_embeddings.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as caught:
        bertcore.BertEncoder.from_pretrained(folder)
    message = str(caught.value)
    assert "\n" not in message and "weights_only` set to `False" not in message
    assert message.startswith(f"{folder / 'pytorch_model.bin'}: it holds Python objects") and "system" in message
    assert "convert it to model.safetensors" in message
    assert not proof.exists()


def test_dtype_auto_with_a_null_torch_dtype_in_config_json(tmp_path):
    """Before: 'dtype='auto' is not a torch dtype', blaming the caller's right argument for
    a null in config.json (transformers reads it as float32); a bad name there is named."""
    folder = tmp_path / "bert"
    config = bertcore.BertConfig(vocab_size=13, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=16, extra={"torch_dtype": None})
    bertcore.BertEncoder(config).save_pretrained(folder)
    encoder = bertcore.BertEncoder.from_pretrained(folder, dtype="auto")
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "torch_dtype": "fp16"}))
    with pytest.raises(ValueError, match=r"config.json, whose torch_dtype 'fp16' is not a torch dtype; fix it there"):
        bertcore.BertEncoder.from_pretrained(folder, dtype="auto")


def test_a_vocab_txt_with_a_byte_order_mark_loads_with_the_right_ids(tmp_path, tok):
    """Before: '... lacks the special token [PAD]' for a vocab.txt whose first line is
    [PAD], because Notepad's BOM was read as part of it."""
    path = tmp_path / "vocab.txt"
    path.write_bytes(("\ufeff" + "\r\n".join(VOCAB) + "\r\n").encode("utf-8"))
    loaded = bertcore.Tokenizer.from_pretrained(path)
    assert loaded.vocab == tok.vocab and loaded.pad_token_id == 0
    assert loaded(["the cat"])["input_ids"] == tok(["the cat"])["input_ids"]


@pytest.mark.parametrize("to", ["transformers", "onnx"])
def test_an_export_to_a_read_only_folder_says_so(tmp_path, tok, read_only_disk, capsys, to):
    """Before: '[Errno 30] Read-only file system: .../.out.new', a temp folder the user
    never named, and no fix."""
    make_model(tok).save_pretrained(tmp_path / "model")
    code = main(["export", "--model", str(tmp_path / "model"), "--to", to, str(read_only_disk / "out")])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and f"cannot write in {read_only_disk} (a read-only filesystem" in line and ".new" not in line


def test_exports_leave_the_model_in_its_mode_and_a_folder_is_no_onnx_file(tmp_path, tok):
    """export_program and export_onnx put the TaskModel's own modules in eval mode and left
    them so: training on after an export ran without dropout. An ONNX path that is a folder
    was "Is a directory ... (is the disk full or the folder read-only?)"."""
    from bertcore.export import export_onnx, export_program
    model = make_model(tok).train()
    serving = ServingModel(model)
    export_program(serving, serving.example_inputs(batch=2, seqlen=4))
    assert all(m.training for m in model.modules())                     # was: every module in eval mode
    export_onnx(serving, tmp_path / "m.onnx", serving.example_inputs(batch=2, seqlen=4))
    assert (tmp_path / "m.onnx").is_file() and all(m.training for m in model.modules())
    model.eval()
    export_program(serving, serving.example_inputs(batch=2, seqlen=4))
    assert not any(m.training for m in model.modules())
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=r"folder is a folder; give the ONNX file's path, e.g. .*model.onnx"):
        export_onnx(serving, tmp_path / "folder")
