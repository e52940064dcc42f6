"""The embedding head against sentence-transformers: MiniLM's vectors (1e-5), every pooling
mode, the checkpoint's pooling files, MultipleNegativesRankingLoss; fine-tuning on pairs
through the Trainer; save/load, the padded serving path and `bertcore embed`."""
import json
import sys

import numpy as np
import pytest
import torch

import bertcore
import bertcore_embedding as E
from bertcore.cli import main

st = pytest.importorskip("sentence_transformers", reason="the reference is sentence-transformers")
try:  # sentence-transformers >= 6 moved them; the old paths warn there
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling
except ImportError:
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.models import Pooling

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "Ein Mann isst.", "短い文", "", "word " * 300]   # the last is past MiniLM's 256-token limit
PAIRS = [("the cat sat on the mat", "a cat on a mat"), ("john lives in paris", "paris is where john lives"),
         ("a good movie", "a great film"), ("the red dog", "a red dog"), ("mary visited london", "london visit"),
         ("what is the capital of france", "paris is the capital of france"), ("boring film", "a bad movie"),
         ("the blue city", "a city that is blue")]


@pytest.fixture(scope="module")
def st_minilm(minilm_dir):
    return st.SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True).eval()


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return E.load(minilm_dir).eval()


def test_encode_matches_sentence_transformers(minilm, st_minilm, one_thread):
    ours = E.encode(minilm, TEXTS, batch_size=3)
    theirs = st_minilm.encode(TEXTS, batch_size=3)
    assert ours.shape == theirs.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5
    assert E.encode(minilm, TEXTS[0]).shape == (384,)
    predicted = minilm.predict(TEXTS[:2], head="embedding")
    assert list(predicted[0]) == ["embedding"] and np.allclose(predicted[1]["embedding"], theirs[1], atol=1e-5)


def test_pooling_read_from_the_checkpoint(minilm_dir, tmp_path):
    assert E.EmbeddingHead.options_from_checkpoint(minilm_dir) == {"pooling": "mean", "normalize": True,
                                                                 "max_seq_length": 256}
    assert E.EmbeddingHead.options_from_checkpoint(tmp_path) == {}       # a plain BERT folder
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": ["cls", "max"]}))
    assert E.EmbeddingHead.options_from_checkpoint(tmp_path) == {"pooling": ["cls", "max"], "normalize": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ValueError, match="asks for pooling.*weightedmean"):
        E.EmbeddingHead.options_from_checkpoint(tmp_path)
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="lists Dense"):
        E.EmbeddingHead.options_from_checkpoint(tmp_path)


@pytest.mark.parametrize("pooling", ["cls", "max", "mean", "mean_sqrt_len_tokens", ["cls", "mean"]])
def test_every_pooling_mode_matches_sentence_transformers(minilm_dir, st_minilm, pooling, one_thread):
    model = E.load(minilm_dir, pooling=pooling, normalize=False).eval()
    transformer = st_minilm[0]
    reference = st.SentenceTransformer(modules=[transformer, Pooling(384, pooling_mode=pooling)], device="cpu")
    texts = TEXTS[:5]
    theirs = reference.encode(texts, batch_size=5)   # one padded batch: max must skip the padding
    ours = E.encode(model, texts)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5


def test_loss_is_multiple_negatives_ranking_loss(minilm_dir, st_minilm, one_thread):
    model = E.load(minilm_dir).eval()
    examples = [{"text": a, "text_pair": p} for a, p in PAIRS[:5]]
    data = model.encode(examples, "embedding")
    batch = model.collate(data.features, "embedding")
    assert batch["num_pairs"] == 5 and len(batch["cu_seqlens"]) == 11      # anchors, then positives
    with torch.no_grad():
        ours = model.loss(batch, head="embedding")
        loss = MultipleNegativesRankingLoss(st_minilm)                       # scale 20, cosine
        features = [st_minilm.tokenize([a for a, _ in PAIRS[:5]]), st_minilm.tokenize([p for _, p in PAIRS[:5]])]
        theirs = loss(features, torch.arange(5))
    assert abs(float(ours) - float(theirs)) < 1e-5


def test_fine_tuning_on_pairs(tmp_path, tok, encoder, one_thread):
    model = bertcore.TaskModel(encoder, {"embedding": bertcore.create_head("embedding", encoder.config)}, tokenizer=tok)
    pairs = [{"text": a, "text_pair": p} for a, p in PAIRS]
    before = model.evaluate(pairs, head="embedding", batch_size=8)
    args = bertcore.TrainingArgs(output_dir=str(tmp_path / "run"), max_steps=30, batch_size=8, learning_rate=3e-3,
                                 warmup_ratio=0.0, seed=0, progress=False)
    history = bertcore.Trainer(model, tokenizer=tok, train=pairs, eval=pairs, args=args, head="embedding").fit()
    after = model.evaluate(pairs, head="embedding", batch_size=8)
    assert after["loss"] < before["loss"] - 0.5, (before, after)
    assert after["accuracy"] > before["accuracy"] and after["accuracy"] >= 0.75
    assert 0 < after["mrr"] <= 1 and "accuracy" in history[-1]
    prediction = model.predict(("a cat", "a dog"), head="embedding")       # a pair predicts both sides
    assert set(prediction) == {"embedding", "positive_embedding"}


def test_in_batch_loss_picks_the_own_positive(tok, encoder):
    head = bertcore.create_head("embedding", encoder.config, scale=20.0)
    anchors = torch.randn(4, 32)
    right = head.loss(torch.cat([anchors, anchors]), {"num_pairs": 4})      # positives = anchors: easy
    wrong = head.loss(torch.cat([anchors, anchors.roll(1, 0)]), {"num_pairs": 4})
    assert right < wrong
    scores = 20 * torch.nn.functional.normalize(anchors, dim=-1) @ torch.nn.functional.normalize(anchors, dim=-1).T
    assert torch.isclose(right, torch.nn.functional.cross_entropy(scores, torch.arange(4)))


def test_save_load_keeps_the_pooling(tmp_path, tok, encoder, one_thread):
    head = bertcore.create_head("embedding", encoder.config, pooling=["cls", "max"], normalize=False, max_seq_length=16)
    model = bertcore.TaskModel(encoder, {"vec": head}, tokenizer=tok).eval()
    model.save_pretrained(tmp_path / "m")
    again = bertcore.TaskModel.from_pretrained(tmp_path / "m")
    assert again.heads["vec"].get_config() == head.get_config()
    texts = ["the cat sat on the mat", "a " * 40]
    vectors = E.encode(model, texts)
    assert vectors.shape == (2, 64) and np.array_equal(vectors, E.encode(again, texts))


def test_head_errors(encoder):
    with pytest.raises(ValueError, match="pooling 'median' is not supported"):
        bertcore.create_head("embedding", encoder.config, pooling="median")
    head = bertcore.create_head("embedding", encoder.config)
    with pytest.raises(ValueError, match="text_pair is int"):
        head.check_example({"text": "a", "text_pair": 3})
    with pytest.raises(ValueError, match="need \\(text, text_pair\\) examples"):
        head.metrics([{"embedding": [1.0]}], [{"text": "a"}])


def test_serving_path_pools_real_tokens_only(tok, encoder, one_thread):
    """The padded export path gives the head an attention mask; padding must not leak in."""
    from bertcore.export import ServingModel, export_program
    for pooling in ("mean", "max"):
        model = bertcore.TaskModel(encoder, {"e": bertcore.create_head("embedding", encoder.config, pooling=pooling)},
                                   tokenizer=tok).eval()
        texts = ["the cat sat on the mat", "a dog"]
        batch = tok(texts, padding=True, return_tensors="pt")
        serving = ServingModel(model).eval()
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        with torch.no_grad():
            got = serving(*args)["logits"]
        assert serving.per_token == {"logits": False}
        assert np.abs(got.numpy() - E.encode(model, texts)).max() < 1e-5
    program = export_program(serving, serving.example_inputs(batch=3, seqlen=5))
    with torch.no_grad():
        assert np.abs(program.module()(*args)["logits"].numpy() - E.encode(model, texts)).max() < 1e-5


def test_cli_embed(minilm_dir, st_minilm, tmp_path, monkeypatch, capsys):
    file = tmp_path / "texts.jsonl"
    file.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[2:4]) + "\n", encoding="utf-8")
    assert main(["embed", "--encoder", str(minilm_dir), TEXTS[0], TEXTS[1], "--input", str(file)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == TEXTS[:4]
    assert np.abs(np.array([line["embedding"] for line in lines]) - st_minilm.encode(TEXTS[:4])).max() < 1e-5

    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("from stdin\n\n"))
    assert main(["embed", "--encoder", str(minilm_dir), "--input", "-", "--pooling", "cls", "--no-normalize"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    cls = st.SentenceTransformer(modules=[st_minilm[0], Pooling(384, pooling_mode="cls")], device="cpu")
    assert line["text"] == "from stdin" and np.abs(np.array(line["embedding"]) - cls.encode("from stdin")).max() < 1e-5

    assert main(["embed", "--encoder", str(minilm_dir)]) == 2
    assert "give texts to embed" in capsys.readouterr().err


def _copy(minilm_dir, folder, names=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                     "vocab.txt", "special_tokens_map.json", "sentence_bert_config.json")):
    import shutil
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(minilm_dir / name, folder / name)


def test_the_older_layout_with_bert_in_its_own_folder(minilm_dir, tmp_path, capsys, one_thread):
    """Older sentence-transformers folders keep BERT in 0_Transformer/ (modules.json's path):
    `embed --encoder` said "no config.json", and the subfolder alone loaded without its
    max pooling (mean, other vectors)."""
    old = tmp_path / "old"
    _copy(minilm_dir, old / "0_Transformer")
    (old / "1_Pooling").mkdir()
    (old / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384,
                                                               "pooling_mode_max_tokens": True}))
    (old / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    theirs = st.SentenceTransformer(str(old), device="cpu", local_files_only=True).encode(TEXTS[:5])
    assert E.EmbeddingHead.options_from_checkpoint(old) == {"pooling": "max", "normalize": False,
                                                          "max_seq_length": 256}
    assert np.abs(E.encode(E.load(old).eval(), TEXTS[:5]) - theirs).max() < 1e-5
    assert main(["embed", "--encoder", str(old), TEXTS[0]]) == 0
    assert np.abs(np.array(json.loads(capsys.readouterr().out)["embedding"]) - theirs[0]).max() < 1e-5


def test_do_lower_case_of_the_checkpoint_lowercases_the_text(minilm_dir, tmp_path, one_thread):
    """sentence_bert_config.json's do_lower_case lowercases the texts before a cased
    tokenizer, as sentence-transformers does; it was ignored (0.22 apart on mixed case)."""
    folder = tmp_path / "cased"
    _copy(minilm_dir, folder, ("config.json", "model.safetensors", "vocab.txt", "modules.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": True}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text((minilm_dir / "1_Pooling" / "config.json").read_text())
    (folder / "modules.json").write_text(json.dumps([m for m in json.loads((minilm_dir / "modules.json").read_text())
                                                     if not m["type"].endswith("Normalize")]))
    texts = ["John Lives In PARIS", "A Man Is Eating Food."]
    theirs = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(texts)
    model = E.load(folder).eval()
    assert model.heads["embedding"].do_lower_case is True
    assert np.abs(E.encode(model, texts) - theirs).max() < 1e-5
    assert np.abs(E.encode(model, [t.lower() for t in texts]) - theirs).max() < 1e-5


def test_cli_embed_options(minilm_dir, st_minilm, tmp_path, capsys):
    """--max-length past the checkpoint's max_seq_length was ignored (the text still cut
    there); --pooling took one mode; --encoding, which embed's own error names, was no
    option; a model of another head type failed with that head's input error."""
    short = tmp_path / "short"
    _copy(minilm_dir, short, ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                              "vocab.txt", "modules.json"))
    (short / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 5}))
    (short / "1_Pooling").mkdir()
    (short / "1_Pooling" / "config.json").write_text((minilm_dir / "1_Pooling" / "config.json").read_text())
    text = TEXTS[1]
    vectors = {}
    for extra in ([], ["--max-length", "64"]):
        assert main(["embed", "--encoder", str(short), text, *extra]) == 0
        vectors[len(extra)] = np.array(json.loads(capsys.readouterr().out)["embedding"])
    assert np.abs(vectors[2] - st_minilm.encode(text)).max() < 1e-5       # was: cut at 5 tokens all the same
    assert np.abs(vectors[0] - vectors[2]).max() > 1e-2

    assert main(["embed", "--encoder", str(minilm_dir), "--pooling", "cls,mean", "--no-normalize", text]) == 0
    both = st.SentenceTransformer(modules=[st_minilm[0], Pooling(384, pooling_mode=["cls", "mean"])], device="cpu")
    assert np.abs(np.array(json.loads(capsys.readouterr().out)["embedding"]) - both.encode(text)).max() < 1e-5

    utf16 = tmp_path / "texts.txt"
    utf16.write_text(text + "\n", encoding="utf-16")
    assert main(["embed", "--encoder", str(minilm_dir), "--input", str(utf16), "--encoding", "utf-16"]) == 0
    assert np.abs(np.array(json.loads(capsys.readouterr().out)["embedding"]) - st_minilm.encode(text)).max() < 1e-5

    encoder = bertcore.BertEncoder.from_pretrained(minilm_dir)
    tok = bertcore.Tokenizer.from_pretrained(minilm_dir)
    bertcore.TaskModel(encoder, {"qa": bertcore.create_head("qa", encoder.config)}, tokenizer=tok).save_pretrained(
        tmp_path / "qa")
    assert main(["embed", "--model", str(tmp_path / "qa"), "who"]) == 2
    assert "head 'qa' of" in capsys.readouterr().err


def test_a_batch_of_one_pair_is_said_to_teach_nothing(tmp_path, tok, encoder, caplog, one_thread):
    """batch_size=1 trained the embedding head on loss 0 (no in-batch negatives) without a
    word; such a batch now says so once and weighs nothing."""
    model = bertcore.TaskModel(encoder, {"embedding": bertcore.create_head("embedding", encoder.config)}, tokenizer=tok)
    pairs = [{"text": a, "text_pair": p} for a, p in PAIRS[:3]]
    args = bertcore.TrainingArgs(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=1, progress=False,
                                 save_checkpoints=False)
    with caplog.at_level("WARNING"):
        bertcore.Trainer(model, tokenizer=tok, train=pairs, args=args).fit()
    assert caplog.text.count("a training batch of one pair has no in-batch negatives") == 1
    assert model.heads["embedding"].loss_count({"num_pairs": 1}) == 0
