import math

import pytest
import torch

import bertcore
from bertcore.export import ServingModel, export_transformers
from bertcore_classification import macro_f1, mcc, pearson, rank, spearman
from heads_testing import train

SENTIMENT = [{"text": t, "label": l} for t, l in [
    ("good movie", "pos"), ("great film", "pos"), ("a good fun film", "pos"), ("great fun", "pos"),
    ("bad movie", "neg"), ("terrible film", "neg"), ("a bad boring film", "neg"), ("terrible boring", "neg")]]


def model_with(encoder, tok, cfg, **kwargs):
    return bertcore.TaskModel(encoder, {"cls": bertcore.create_head("classification", cfg, **kwargs)}, tokenizer=tok)


def test_encode_collate_loss_decode_single_and_pair(encoder, tok, cfg):
    model = model_with(encoder, tok, cfg, labels=["neg", "pos"])
    head = model.heads["cls"]
    single = head.encode(SENTIMENT[0], tok)[0]
    pair = head.encode({"text": "good", "text_pair": "bad movie", "label": 0}, tok)[0]
    assert single["labels"] == 1 and pair["labels"] == 0
    assert pair["token_type_ids"] == [0, 0, 0, 1, 1, 1]
    batch = head.collate([single, pair])
    assert batch["labels"].tolist() == [1, 0] and batch["cu_seqlens"].tolist() == [0, 4, 10]
    logits = model(batch, head="cls")
    assert logits.shape == (2, 2)
    assert torch.allclose(head.loss(logits, batch), torch.nn.functional.cross_entropy(logits, batch["labels"]))
    prediction = model.predict("good movie", head="cls")
    with torch.no_grad():
        probs = model.eval()(model.collate(head.encode({"text": "good movie"}, tok), "cls"), head="cls")[0].softmax(-1)
    assert prediction["label"] == ["neg", "pos"][int(probs.argmax())]
    assert prediction["scores"] == pytest.approx({"neg": float(probs[0]), "pos": float(probs[1])}, abs=1e-6)
    assert len(model.predict([("good", "film"), "bad"], head="cls")) == 2


def test_metrics_against_hand_computed_values():
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert mcc(y_true, y_pred) == pytest.approx(5 / math.sqrt(192))
    assert mcc([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert rank([10, 20, 20, 5]).tolist() == [2, 3.5, 3.5, 1]
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.9933992677987828)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 5]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    head = bertcore.create_head("classification", bertcore.BertConfig(hidden_size=32, num_attention_heads=2),
                                labels=["a", "b", "c"])
    preds = [{"label": "abc"[p]} for p in y_pred]
    m = head.metrics(preds, [{"label": "abc"[t]} for t in y_true])
    assert m == pytest.approx({"accuracy": 0.6, "macro_f1": 1.3 / 3, "mcc": 5 / math.sqrt(192)})


def test_multi_label_and_regression(encoder, tok, cfg):
    multi = bertcore.create_head("classification", cfg, labels=["red", "blue", "green"], multi_label=True)
    f = multi.encode({"text": "red blue", "label": ["red", "blue"]}, tok)[0]
    assert f["labels"] == [1.0, 1.0, 0.0]
    m = multi.metrics([{"labels": ["red", "blue"]}, {"labels": ["red"]}],
                      [{"label": ["red", "blue"]}, {"label": ["green"]}])
    # red: tp 1, 2 predicted, 1 gold -> 2/3; blue: 1.0; green: 0 -> macro 5/9; exact sets 1 of 2
    assert m == pytest.approx({"accuracy": 0.5, "macro_f1": 5 / 9})
    regression = bertcore.create_head("classification", cfg, num_labels=1)
    assert regression.problem == "regression"
    model = bertcore.TaskModel(encoder, {"sts": regression}, tokenizer=tok)
    batch = regression.collate(regression.encode({"text": "a", "text_pair": "b", "label": 2.5}, tok))
    assert batch["labels"].dtype == torch.float32
    assert model.loss(batch, head="sts").ndim == 0
    assert set(model.predict(("a cat", "a dog"), head="sts")) == {"value"}
    assert set(model.evaluate([{"text": "a", "label": 1.0}, {"text": "b", "label": 2.0}], head="sts")) == \
        {"loss", "pearson", "spearman"}


@pytest.mark.parametrize("kwargs, examples", [
    ({"labels": ["neg", "pos"]}, SENTIMENT),
    ({"labels": ["good", "bad", "film"], "multi_label": True},
     [{"text": ex["text"], "label": [w for w in ("good", "bad", "film") if w in ex["text"]]} for ex in SENTIMENT]),
    ({"num_labels": 1}, [{"text": ex["text"], "label": float(ex["label"] == "pos")} for ex in SENTIMENT]),
])
def test_learns(encoder, tok, cfg, kwargs, examples):
    model = model_with(encoder, tok, cfg, **kwargs)
    first, last = train(model, "cls", examples, steps=40)
    assert last < 0.6 * first
    if "labels" in kwargs and not kwargs.get("multi_label"):
        assert model.evaluate(examples, head="cls")["accuracy"] == 1.0


def test_mean_pooling_reads_the_token_mean(encoder, tok, cfg, tmp_path):
    """pooling="mean": the classifier reads the mean of each text's token vectors, checked
    against the padded encoder output (another path through the model), in packed
    training batches and in the padded serving model alike; the option is saved."""
    model = model_with(encoder, tok, cfg, labels=["neg", "pos"], pooling="mean").eval()
    head = model.heads["cls"]
    features = [head.encode({"text": t}, tok)[0] for t in ("good movie", "a bad boring film", "fun")]
    lengths = [len(f["input_ids"]) for f in features]
    ids = torch.tensor([f["input_ids"] + [0] * (max(lengths) - len(f["input_ids"])) for f in features])
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        packed = model(model.collate(features, "cls"), head="cls")                        # (3, 2)
        out = encoder(ids, attention_mask=mask)
        tokens = out.last_hidden_state.double()                                              # (3, L, H)
        mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)               # (3, H)
        expected = mean @ head.classifier.weight.double().t() + head.classifier.bias.double()
        served = ServingModel(model, "cls")(ids, mask, torch.zeros_like(ids))["logits"]
        from_cls = head.classifier(out.pooler_output)
    assert torch.allclose(packed.double(), expected, atol=1e-5)
    assert torch.allclose(served.double(), expected, atol=1e-5)
    assert not torch.allclose(from_cls, packed, atol=1e-3)      # the default reads the pooled [CLS]

    with pytest.raises(ValueError, match="pooling='mean' has no transformers class"):
        export_transformers(model, tmp_path / "hf", head="cls")   # HF's class would read [CLS]: refused
    model.save_head(tmp_path / "cls")
    assert bertcore.TaskModel(encoder, {}, tokenizer=tok).load_head(tmp_path / "cls").pooling == "mean"
    with pytest.raises(ValueError, match="pooling='max'"):
        bertcore.create_head("classification", cfg, labels=["neg", "pos"], pooling="max")
