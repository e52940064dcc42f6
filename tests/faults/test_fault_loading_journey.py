"""A new user's first loads: the README's bare Hub names, a typo'd --encoder, a pretraining
run's model folder passed as the encoder, and a head saved alone that came back under its
folder's name. Each error is one line naming the problem and the fix."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import bertcore
from bertcore.checkpoint import CheckpointError
from bertcore.cli import main

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An HF cache holding HUB_NAME (a folder is all the lookup reads), and an empty working folder."""
    (tmp_path / "hub" / ("models--" + HUB_NAME.replace("/", "--")) / "snapshots").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "hub"


@pytest.fixture
def saved(tmp_path):
    """A saved TaskModel (as pretrain's runs/pt/model: encoder/, tokenizer/, heads/)."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]) + "\n")
    tok = bertcore.Tokenizer.from_pretrained(vocab)
    cfg = bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    head = bertcore.create_head("classification", cfg, labels=["neg", "pos"])
    model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {"sentiment": head}, tokenizer=tok)
    model.save_pretrained(tmp_path / "runs" / "pt" / "model")
    return model, tmp_path / "runs" / "pt" / "model"


def load_error(name) -> str:
    with pytest.raises(FileNotFoundError) as err:
        bertcore.BertEncoder.from_pretrained(name)
    message = str(err.value)
    assert "\n" not in message and "huggingface-cli" not in message  # huggingface-hub 2.x has `hf` only
    return message


def test_a_bare_hub_name_offers_the_cached_org_name(hub, train_file, capsys):
    # Before: "checkpoint directory all-MiniLM-L6-v2 does not exist"
    message = load_error("all-MiniLM-L6-v2")
    assert message.startswith(f"all-MiniLM-L6-v2 is neither a folder nor in the local Hugging Face cache ({hub})")
    assert message.endswith(f"Hub names are org/name: did you mean {HUB_NAME} (it is cached)?")
    assert main(["finetune", "--head", "classification", "--encoder", "all-MiniLM-L6-v2", "--train",
                 str(train_file), "--output", "out", "--max-steps", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"did you mean {HUB_NAME}" in errors[0]


def test_an_unknown_name_says_where_it_looked_and_how_to_download(hub):
    # Before: "checkpoint directory nope does not exist", and `huggingface-cli download` for org/name
    message = load_error("nope")
    assert f"nope is neither a folder nor in the local Hugging Face cache ({hub})" in message
    assert f"a Hub name as org/name (e.g. {HUB_NAME}), downloaded once with `hf download {HUB_NAME}`" in message
    message = load_error("org/nope")
    assert message == (f"org/nope is neither a folder nor in the local Hugging Face cache ({hub}); download it "
                       "once with `hf download org/nope`, or pass its folder")


def test_a_typo_in_a_local_path_names_the_folder_that_exists(saved, monkeypatch):
    monkeypatch.chdir(saved[1].parents[2])
    assert load_error("runs/pt/modle/encoder") == ("checkpoint folder runs/pt/modle/encoder does not exist "
                                                   "(runs/pt/modle does not exist; did you mean runs/pt/model?); "
                                                   "pass an existing checkpoint folder")
    assert "(runs/ptx does not exist; did you mean runs/pt?)" in load_error("./runs/ptx/model")
    assert load_error("runs/ptt").startswith("runs/ptt is neither a folder (did you mean runs/pt?) nor in the local")


def test_a_saved_taskmodel_as_the_encoder_names_its_encoder_and_tokenizer(saved):
    # Before: "no config.json at runs/pt/model/config.json; pass a checkpoint directory or its config.json"
    folder = saved[1]
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{folder} is a saved TaskModel, not an encoder folder; pass its encoder {folder / 'encoder'}; "
            f"its tokenizer is {folder / 'tokenizer'} (--tokenizer, tok=)")):
        bertcore.BertEncoder.from_pretrained(folder)
    assert bertcore.BertEncoder.from_pretrained(folder / "encoder").config.hidden_size == 16
    run = folder.parent / "run"                  # a run's folder: metrics, checkpoints, model/
    shutil.copytree(folder, run / "model")
    want = f"{run} is a run's folder, not an encoder folder; pass the encoder of its model, {run / 'model' / 'encoder'}"
    with pytest.raises(FileNotFoundError, match=re.escape(want)):
        bertcore.BertEncoder.from_pretrained(run)                 # was: "no config.json at run/config.json"


def test_a_head_saved_alone_keeps_its_name(saved, tmp_path):
    model, _ = saved
    model.save_head(tmp_path / "headdir", "sentiment")
    assert json.loads((tmp_path / "headdir" / "head.json").read_text())["name"] == "sentiment"
    other = bertcore.TaskModel(model.encoder, {})
    other.load_head(tmp_path / "headdir")
    assert list(other.heads) == ["sentiment"]                     # before: ["headdir"]
    other.load_head(tmp_path / "headdir", name="again")           # a name given still wins
    assert list(other.heads) == ["sentiment", "again"]
    assert all(torch.equal(a, b) for a, b in zip(other.heads["sentiment"].state_dict().values(),
                                                  model.heads["sentiment"].state_dict().values()))
    # a TaskModel's own heads record theirs too, and it loads as before
    saved_json = json.loads((saved[1] / "heads" / "sentiment" / "head.json").read_text())
    assert saved_json["name"] == "sentiment"
    assert list(bertcore.TaskModel.from_pretrained(saved[1]).heads) == ["sentiment"]


def test_an_older_head_json_without_a_name_loads_under_its_folder_name(saved, tmp_path):
    model, _ = saved
    model.save_head(tmp_path / "old", "sentiment")
    info = json.loads((tmp_path / "old" / "head.json").read_text())
    info.pop("name", None)                                        # as head.json files were written before
    (tmp_path / "old" / "head.json").write_text(json.dumps(info))
    other = bertcore.TaskModel(model.encoder, {})
    other.load_head(tmp_path / "old")
    assert list(other.heads) == ["old"]
    info["name"] = "../x"                                         # a path is no head name: named, not used
    (tmp_path / "old" / "head.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"head.json: name '\.\./x' is not a head name"):
        bertcore.TaskModel(model.encoder, {}).load_head(tmp_path / "old")


def test_the_readme_uses_names_that_load_and_installs_every_head():
    text = README.read_text(encoding="utf-8")
    # before: `--encoder all-MiniLM-L6-v2`, `load("all-MiniLM-L6-v2")`: bare names, which do not resolve
    assert not re.search(r"(--encoder |load\(\")all-MiniLM", text)
    assert "pip install heads/embedding" not in text          # a path that works inside the checkout only
    install = next(line for line in text.splitlines() if line.startswith("bertcore install classification"))
    assert "embedding" in install.split("#")[0]
    assert "huggingface-cli" not in text
