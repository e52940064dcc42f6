import json

import pytest
import torch

import bertcore
from bertcore import plugins
from heads_testing import HEADS



@pytest.mark.parametrize("name", sorted(HEADS))
def test_save_load_gives_identical_outputs(tmp_path, encoder, tok, cfg, name):
    kwargs, item = HEADS[name]
    torch.manual_seed(1)
    model = bertcore.TaskModel(encoder, {"task": bertcore.create_head(name, cfg, **kwargs)}, tokenizer=tok)
    with torch.no_grad():  # make the head's weights non-trivial
        for p in model.heads["task"].parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "heads/task/head.json").read_text())
    assert saved["head_type"] == name and saved["hidden_size"] == cfg.hidden_size
    assert saved["distribution"] == plugins.head_info(name).distribution and saved["version"] == "0.1.0"
    assert (tmp_path / "encoder/config.json").is_file() and (tmp_path / "tokenizer/vocab.txt").is_file()
    loaded = bertcore.TaskModel.from_pretrained(tmp_path)
    assert loaded.heads["task"].get_config() == model.heads["task"].get_config()
    assert loaded.predict(item, head="task", max_length=32) == model.predict(item, head="task", max_length=32)
    head = loaded.heads["task"]
    features = head.encode(head.example_from_input(item), tok, 32)
    batch = head.collate(features)
    a, b = model.eval()(batch, head="task"), loaded(batch, head="task")
    for x, y in (zip(a.values(), b.values()) if isinstance(a, dict) else [(a, b)]):
        assert torch.equal(x, y)


def test_several_heads_share_one_encoder(encoder, tok, cfg):
    model = bertcore.TaskModel(encoder, {
        "sentiment": bertcore.create_head("classification", cfg, labels=["neg", "pos"]),
        "topic": bertcore.create_head("classification", cfg, labels=["cats", "cities", "films"])}, tokenizer=tok)
    assert model.predict("good film", head="topic")["label"] in ("cats", "cities", "films")
    with pytest.raises(ValueError, match="pass head=NAME"):
        model.predict("good film")
    with pytest.raises(KeyError, match="no head named 'nope'"):
        model.predict("good film", head="nope")
    metrics = model.evaluate([{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}], head="sentiment")
    assert set(metrics) == {"loss", "accuracy", "macro_f1", "mcc"}


def test_head_onto_other_hidden_size_is_a_clear_error(tmp_path, encoder, tok, cfg):
    model = bertcore.TaskModel(encoder, {"s": bertcore.create_head("classification", cfg, num_labels=2)})
    model.save_pretrained(tmp_path)
    big = bertcore.BertConfig.from_dict({**cfg.to_dict(), "hidden_size": 64})
    other = bertcore.TaskModel(bertcore.BertEncoder(big), {})
    with pytest.raises(ValueError, match="hidden_size=32.*hidden_size=64.*same hidden size"):
        other.load_head(tmp_path / "heads/s")
    with pytest.raises(ValueError, match="hidden_size"):
        bertcore.TaskModel(bertcore.BertEncoder(big), {"s": bertcore.create_head("classification", cfg, num_labels=2)})
    same = bertcore.TaskModel(bertcore.BertEncoder(cfg), {})
    assert same.load_head(tmp_path / "heads/s", name="again") is same.heads["again"]


def test_head_whose_plugin_is_missing_names_the_fix(tmp_path, encoder, tok, cfg, monkeypatch):
    model = bertcore.TaskModel(encoder, {"ents": bertcore.create_head("ner", cfg, labels=["O", "B-X"])}, tokenizer=tok)
    model.save_pretrained(tmp_path)
    installed = [ep for ep in plugins.entry_points() if ep.name != "ner"]
    monkeypatch.setattr(plugins, "entry_points", lambda: installed)   # as if bertcore-ner were uninstalled
    plugins.reset_plugins()
    with pytest.raises(plugins.HeadNotFoundError, match=r"bertcore install ner.*pip install bertcore-ner"):
        bertcore.TaskModel.from_pretrained(tmp_path)


def test_predict_without_tokenizer_says_how(encoder, cfg):
    model = bertcore.TaskModel(encoder, {"s": bertcore.create_head("classification", cfg, num_labels=2)})
    with pytest.raises(ValueError, match="tokenizer="):
        model.predict("good")
