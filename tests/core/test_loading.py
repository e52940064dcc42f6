"""Loading as transformers does: eval mode, checked keywords, dtype and device, a file
path named as such, and Hub names found in the local Hugging Face cache (offline)."""
import json
import os

import pytest
import torch

import bertcore

NAME = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def small(tmp_path):
    cfg = bertcore.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    torch.manual_seed(0)
    bertcore.BertEncoder(cfg).save_pretrained(tmp_path / "enc")
    return tmp_path / "enc"


def test_from_pretrained_is_in_eval_mode_and_repeats(small):
    encoder = bertcore.BertEncoder.from_pretrained(small)
    assert not encoder.training and not any(m.training for m in encoder.modules())
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    torch.testing.assert_close(encoder(ids).last_hidden_state, encoder(ids).last_hidden_state, rtol=0, atol=0)


def test_unknown_keywords_are_errors_and_never_reach_config_json(small, tmp_path):
    before = (small / "config.json").read_text()
    for bad in ({"device_map": "auto"}, {"hiden_size": 8}):
        with pytest.raises(TypeError, match=rf"unknown keyword '{next(iter(bad))}'.*dtype, torch_dtype, device.*"
                                            r"hidden_dropout_prob"):
            bertcore.BertEncoder.from_pretrained(small, **bad)
    encoder = bertcore.BertEncoder.from_pretrained(small, hidden_dropout_prob=0.0)
    assert encoder.config.hidden_dropout_prob == 0.0
    encoder.save_pretrained(tmp_path / "again")
    assert "device_map" not in (tmp_path / "again" / "config.json").read_text()
    assert (small / "config.json").read_text() == before


@pytest.mark.parametrize("kwargs, dtype", [({"dtype": torch.bfloat16}, torch.bfloat16),
                                           ({"torch_dtype": "float16"}, torch.float16),
                                           ({"torch_dtype": "auto"}, torch.float32),
                                           ({"device": "cpu"}, torch.float32)])
def test_dtype_and_device(small, kwargs, dtype):
    encoder = bertcore.BertEncoder.from_pretrained(small, **kwargs)
    assert {p.dtype for p in encoder.parameters()} == {dtype}
    assert {p.device.type for p in encoder.parameters()} == {"cpu"}


def test_a_file_is_named_as_one(small):
    with pytest.raises(NotADirectoryError, match=r"config.json is a file; pass the checkpoint folder"):
        bertcore.BertEncoder.from_pretrained(small / "config.json")
    with pytest.raises(FileNotFoundError, match=r"not/there is neither a folder nor in the local Hugging Face cache"):
        bertcore.BertEncoder.from_pretrained("not/there")


def test_hub_names_load_from_the_local_cache_like_transformers(minilm_dir, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    repo = tmp_path / "hub" / ("models--" + NAME.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for file in minilm_dir.iterdir():
        os.symlink(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = bertcore.BertEncoder.from_pretrained(NAME)
    tok = bertcore.Tokenizer.from_pretrained(NAME)
    theirs = transformers.BertModel.from_pretrained(NAME, cache_dir=tmp_path / "hub", local_files_only=True).eval()
    batch = tok(["a sentence from the cache", "and another"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ours(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        b = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert (a[mask] - b[mask]).abs().max() < 1e-5
    assert json.loads((snapshot / "config.json").read_text())["hidden_size"] == ours.config.hidden_size
