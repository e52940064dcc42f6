"""The built-in MLM head and the NSP plugin, against HF's BertForPreTraining."""
import pytest
import torch

import bertcore
from heads_testing import train

PAIRS = [("the cat sat", "on the mat", 0), ("john lives", "in paris", 0), ("the dog sat", "on the mat", 0),
         ("the cat sat", "paris london berlin", 1), ("john lives", "red blue green", 1),
         ("the dog sat", "yes no yes", 1)]


def pretraining_model(encoder, tok, cfg):
    heads = {"mlm": bertcore.create_head("mlm", cfg), "nsp": bertcore.create_head("nsp", cfg)}
    return bertcore.TaskModel(encoder, heads, tokenizer=tok)


def test_hf_pretraining_checkpoint_heads_load_and_match(tmp_path, tok, cfg):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items() if k not in ("architectures",)})
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    with torch.no_grad():  # HF initialises the MLM bias to zero; make it count
        hf.cls.predictions.bias.normal_()
        hf.cls.predictions.transform.LayerNorm.weight.normal_()
    hf.save_pretrained(tmp_path)
    encoder = bertcore.BertEncoder.from_pretrained(tmp_path)
    model = pretraining_model(encoder, tok, cfg).eval()
    enc = tok(["john lives in [MASK] .", "the cat sat"], text_pair=["a b", "on the mat"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        ref = hf(**{k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
        mask = enc["attention_mask"].bool()
        batch = {"input_ids": enc["input_ids"][mask], "token_type_ids": enc["token_type_ids"][mask],
                 "cu_seqlens": torch.tensor([0, *mask.sum(1).cumsum(0).tolist()], dtype=torch.int32),
                 "max_seqlen": int(mask.sum(1).max())}
        ours = model(batch, head=["mlm", "nsp"])
    torch.testing.assert_close(ours["mlm"]["logits"], ref.prediction_logits[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["nsp"], ref.seq_relationship_logits, atol=1e-5, rtol=1e-4)


def test_mlm_logits_only_at_labelled_positions_and_dynamic_masking(encoder, tok, cfg):
    model = pretraining_model(encoder, tok, cfg)
    head = model.heads["mlm"]
    head.prepare(tok)
    torch.manual_seed(0)
    head.mlm_probability = 0.5
    features = [f for t in ["the cat sat on the mat", "john lives in paris"] for f in head.encode({"text": t}, tok)]
    batch = head.collate(features)
    picked = batch["labels"] != -100
    assert picked.any() and batch["mlm_positions"].tolist() == picked.nonzero().flatten().tolist()
    special = torch.isin(batch["input_ids"].new_tensor([f for x in features for f in x["input_ids"]]),
                         torch.tensor(tok.all_special_ids))
    assert not (picked & special).any()                                    # never [CLS]/[SEP]
    logits = model(batch, head="mlm")
    assert logits["logits"].shape == (int(picked.sum()), cfg.vocab_size)
    full = torch.nn.functional.cross_entropy(logits["logits"], batch["labels"][picked])
    torch.testing.assert_close(head.loss(logits, batch), full)
    given = head.collate([{**features[0], "labels": [-100, 7, -100, -100, -100, -100, -100, -100]}])
    assert given["mlm_positions"].tolist() == [1]


def test_mlm_predicts_at_mask_tokens(encoder, tok, cfg):
    model = pretraining_model(encoder, tok, cfg)
    out = model.predict("john lives in [MASK] .", head="mlm")
    assert [m["position"] for m in out["masks"]] == [4]
    assert len(out["masks"][0]["candidates"]) == 5 and out["masks"][0]["label"] is None
    assert isinstance(out["masks"][0]["token"], str)


def test_mlm_tying_survives_save_and_load(tmp_path, encoder, tok, cfg):
    model = pretraining_model(encoder, tok, cfg)
    head = model.heads["mlm"]
    assert head.decoder_weight is encoder.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file
    assert set(load_file(tmp_path / "m/heads/mlm/head.safetensors")) == \
        {"bias", "transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight", "transform.LayerNorm.bias"}
    loaded = bertcore.TaskModel.from_pretrained(tmp_path / "m")
    mlm = loaded.heads["mlm"]
    assert mlm.decoder_weight is loaded.encoder.embeddings.word_embeddings.weight
    with torch.no_grad():  # still tied: moving the embeddings moves the decoder
        loaded.encoder.embeddings.word_embeddings.weight[7] += 1
    assert torch.equal(mlm.decoder_weight[7], loaded.encoder.embeddings.word_embeddings.weight[7])
    a, b = model.predict("the [MASK] sat", head="mlm"), bertcore.TaskModel.from_pretrained(tmp_path / "m").predict(
        "the [MASK] sat", head="mlm")
    assert a == b


def test_nsp_encode_decode_metrics(tok, cfg):
    head = bertcore.create_head("nsp", cfg)
    f = head.encode({"text": "the cat", "text_pair": "sat", "label": 1}, tok)[0]
    assert f["next_sentence_label"] == 1 and f["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    pre = head.encode({"input_ids": [2, 9, 3, 10, 3], "token_type_ids": [0, 0, 0, 1, 1], "next_sentence_label": 0}, tok)
    batch = head.collate([f, pre[0]])
    assert batch["next_sentence_label"].tolist() == [1, 0]
    assert head.decode({}, [f], [torch.tensor([0.0, 2.0])])["label_name"] == "NotNext"
    preds = [{"label": 0}, {"label": 1}, {"label": 1}, {"label": 0}]
    assert head.metrics(preds, [{"label": 0}, {"label": 1}, {"label": 0}, {"label": 0}]) == {"accuracy": 0.75}


def test_mlm_and_nsp_learn(encoder, tok, cfg):
    model = pretraining_model(encoder, tok, cfg)
    examples = [{"text": a, "text_pair": b, "label": y} for a, b, y in PAIRS]
    first, last = train(model, "nsp", examples, steps=30, batch_size=6)
    assert last < 0.5 * first
    assert model.evaluate(examples, head="nsp")["accuracy"] == 1.0
    mlm = [{"text": "the cat sat on the mat"}, {"text": "john lives in paris"}] * 4
    model.heads["mlm"].mlm_probability = 0.3
    first, last = train(model, "mlm", mlm, steps=40)
    assert last < 0.6 * first


def test_mlm_on_an_encoder_vocabulary_past_the_tokenizers(tok, cfg):
    """An encoder with more ids than its tokenizer (a padded vocabulary): the extra ids are
    never predicted; evaluation failed on 'token id N is outside the vocabulary'."""
    import dataclasses
    torch.manual_seed(0)
    encoder = bertcore.BertEncoder(dataclasses.replace(cfg, vocab_size=tok.vocab_size + 8))
    with torch.no_grad():
        encoder.embeddings.word_embeddings.weight[tok.vocab_size:] *= 100   # the extra rows would win every argmax
    model = bertcore.TaskModel(encoder, {"mlm": bertcore.create_head("mlm", encoder.config)}, tokenizer=tok)
    examples = [{"text": "john lives in paris"}, {"text": "mary went to london"}] * 4
    assert 0.0 <= model.evaluate(examples, head="mlm")["accuracy"] <= 1.0
    masks = [m for p in model.predict(["john lives in [MASK]"], head="mlm") for m in p["masks"]]
    assert masks and all(c["token_id"] < tok.vocab_size for m in masks for c in m["candidates"])


def test_mlm_evaluation_with_nothing_masked_has_no_nan_loss(encoder, tok, cfg):
    model = bertcore.TaskModel(encoder, {"mlm": bertcore.create_head("mlm", cfg)}, tokenizer=tok)
    result = model.evaluate([{"text": "john"}], head="mlm")             # too short: no token is picked
    assert "loss" not in result, result                                  # was: loss nan


def test_a_mask_cut_off_by_max_length_is_named_not_replaced_by_random_masks(encoder, tok, cfg):
    model = bertcore.TaskModel(encoder, {"mlm": bertcore.create_head("mlm", cfg)}, tokenizer=tok)
    text = "john lives in paris " * 30 + "mary went to [MASK]"      # 126 tokens: within the 128 positions
    with pytest.raises(ValueError, match=r"^example 1: 1 of the text's 1 \[MASK\] lie past max_length=64"):
        model.predict([text], head="mlm", max_length=64)                # was: random masks, none the user's
    masks = model.predict([text], head="mlm")[0]["masks"]
    assert [m["position"] for m in masks] == [124]                      # the user's [MASK], before [SEP]


def test_nsp_text_pairs_may_name_their_label_next_sentence_label(encoder, tok, cfg):
    """encode and metrics read next_sentence_label (make_nsp_pairs' key) as well as label; the
    check refused it ('a nsp example needs text, text_pair, label')."""
    model = bertcore.TaskModel(encoder, {"nsp": bertcore.create_head("nsp", cfg)}, tokenizer=tok)
    pairs = [{"text": "john lives in paris", "text_pair": "mary went to london", "next_sentence_label": 1},
             {"text": "john lives in paris", "text_pair": "he likes it", "next_sentence_label": 0}]
    assert 0.0 <= model.evaluate(pairs, head="nsp")["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="needs text, text_pair, label"):
        model.evaluate([{"text": "a", "text_pair": "b"}], head="nsp")
