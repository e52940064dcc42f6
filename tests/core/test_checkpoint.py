"""Loading HF checkpoints: prefixes, legacy names, cls.* kept, corrupt and mismatched files."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertcore import BertConfig, BertEncoder
from bertcore.checkpoint import CheckpointError

TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(**TINY))
    enc.save_pretrained(tmp_path / "ckpt")
    return enc, tmp_path / "ckpt"


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretraining_checkpoint_with_prefix_gamma_beta_and_cls(saved, tmp_path):
    enc, path = saved
    state = load_file(str(path / "model.safetensors"))
    renamed = {}
    for k, v in state.items():
        k = "bert." + k
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed[k] = v
    renamed["cls.seq_relationship.weight"] = torch.randn(2, 16)
    renamed["cls.seq_relationship.bias"] = torch.zeros(2)
    out = tmp_path / "pretraining"
    out.mkdir()
    shutil.copy(path / "config.json", out / "config.json")
    torch.save(renamed, out / "pytorch_model.bin")
    loaded = BertEncoder.from_pretrained(out)
    assert same_weights(enc, loaded)
    assert set(loaded.pretrained_head_weights) == {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}


def test_shape_mismatch_names_key_and_shapes(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"encoder.layer.0.intermediate.dense.weight has shape \(32, 16\), "
                                              r"model expects \(48, 16\)"):
        BertEncoder.from_pretrained(path)


def test_truncated_file_is_a_clear_error(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        BertEncoder.from_pretrained(path)


def test_non_bert_file_is_a_clear_error(saved):
    _, path = saved
    save_file({"decoder.weight": torch.zeros(3, 3)}, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="is it a BERT checkpoint"):
        BertEncoder.from_pretrained(path)


def test_missing_keys_warned_and_missing_files_named(saved, tmp_path, caplog):
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    del state["pooler.dense.weight"]
    save_file(state, str(path / "model.safetensors"))
    with caplog.at_level("WARNING"):
        BertEncoder.from_pretrained(path)
    assert "pooler.dense.weight" in caplog.text
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        (tmp_path / "empty").mkdir()
        shutil.copy(path / "config.json", tmp_path / "empty")
        BertEncoder.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertEncoder.from_pretrained(tmp_path / "nowhere")


def test_pickle_bin_refused(saved):
    _, path = saved
    (path / "model.safetensors").unlink()
    torch.save({"x": object()}, path / "pytorch_model.bin", _use_new_zipfile_serialization=True)
    with pytest.raises(CheckpointError):
        BertEncoder.from_pretrained(path)
