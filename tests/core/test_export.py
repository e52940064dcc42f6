"""Leaving bertcore: a TaskModel exported to transformers loads in `transformers.pipeline`
offline with the same logits (1e-4) and predictions; the padded serving module equals the
packed encoder + head (1e-5), and `torch.export` / ONNX runtime run it at new shapes."""
import logging.handlers
import string
import warnings

import pytest
import safetensors
import torch
import transformers

import bertcore
from bertcore import plugins
from bertcore.cli import main
from bertcore.export import ServingModel, export_onnx, export_program, export_transformers

TEXTS = ["the cat sat on the mat", "john lives in paris", "a good movie", "mary"]
QUESTIONS = [("who lives in paris ?", "john lives in paris . mary lives in london ."),
             ("where does mary live ?", "john lives in paris . mary lives in london .")]
HEADS = {  # head type -> (create_head kwargs, transformers auto class, pipeline task)
    "classification": ({"labels": ["neg", "pos", "mid"]}, "AutoModelForSequenceClassification",
                       "text-classification"),
    "multi_label": ({"labels": ["x", "y", "z"], "multi_label": True}, "AutoModelForSequenceClassification",
                    "text-classification"),
    "regression": ({"num_labels": 1}, "AutoModelForSequenceClassification", "text-classification"),
    "ner": ({"labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}, "AutoModelForTokenClassification",
            "token-classification"),
    "qa": ({"max_answer_length": 15}, "AutoModelForQuestionAnswering", "question-answering"),
    "mlm": ({"top_k": 3}, "AutoModelForMaskedLM", "fill-mask"),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, one_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    words = ("the a cat sat on mat john mary lives live in paris london who where does good movie "
             ". ? , ##s").split()
    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words + letters)]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return bertcore.Tokenizer.from_pretrained(path)


def make_model(tok, kind, seed=0):
    """A tiny TaskModel whose head weights are large enough that predictions differ."""
    cfg = bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(seed)
    head_type = "classification" if kind in ("multi_label", "regression") else kind
    head = bertcore.create_head(head_type, cfg, **HEADS[kind][0])
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return bertcore.TaskModel(bertcore.BertEncoder(cfg), {"task": head}, tokenizer=tok).eval()


def our_logits(model, inputs):
    """The TaskModel's own run path: encode -> collate -> forward, per-feature outputs."""
    head = model.heads["task"]
    data = model.encode([head.example_from_input(x) for x in inputs], "task")
    batch = model.collate(data.features, "task")
    with torch.no_grad():
        return head.split(model(batch, head="task"), batch)


def load_hf(kind, path):
    model, info = getattr(transformers, HEADS[kind][1]).from_pretrained(path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path)


# ---- to transformers ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["classification", "multi_label", "regression"])
def test_classification_to_transformers(tmp_path, tok, kind):
    model = make_model(tok, kind)
    out = export_transformers(model, tmp_path / "hf")
    hf, hf_tok = load_hf(kind, out)
    assert hf.config.architectures == ["BertForSequenceClassification"]
    assert hf.config.problem_type == {"classification": "single_label_classification",
                                      "multi_label": "multi_label_classification", "regression": "regression"}[kind]
    if kind != "regression":
        assert [hf.config.id2label[i] for i in range(3)] == model.heads["task"].labels
    batch = hf_tok(TEXTS, padding=True, return_tensors="pt")
    assert [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])] == \
        tok(TEXTS)["input_ids"]                                             # the same tokenizer
    with torch.no_grad():
        theirs = hf(**batch).logits
    ours = torch.stack(our_logits(model, TEXTS))
    assert (ours - theirs).abs().max() < 1e-4

    pipe = transformers.pipeline("text-classification", model=str(out), top_k=None)
    for text, got, want in zip(TEXTS, pipe(TEXTS), model.predict(TEXTS)):
        scores = {d["label"]: d["score"] for d in got}
        if kind == "regression":  # one raw value, no softmax
            assert abs(scores["LABEL_0"] - want["value"]) < 1e-4
        else:
            assert scores == pytest.approx(want["scores"], abs=1e-5)
            if kind == "classification":
                assert max(scores, key=scores.get) == want["label"]


def test_ner_to_transformers(tmp_path, tok):
    model = make_model(tok, "ner")
    out = export_transformers(model, tmp_path / "hf")
    hf, hf_tok = load_hf("ner", out)
    assert hf.config.architectures == ["BertForTokenClassification"]
    batch = hf_tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch).logits                                        # (B, L, C)
    for i, ours in enumerate(our_logits(model, TEXTS)):                     # (L_i, C) each
        assert (ours - theirs[i, :len(ours)]).abs().max() < 1e-4

    pipe = transformers.pipeline("token-classification", model=str(out), ignore_labels=[])
    labels = model.heads["task"].labels
    for text, got, ours in zip(TEXTS, pipe(TEXTS), our_logits(model, TEXTS)):
        probs = ours.softmax(-1)[1:-1]                                      # tokens without [CLS]/[SEP]
        assert [d["entity"] for d in got] == [labels[int(j)] for j in probs.argmax(-1)]
        assert [d["score"] for d in got] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_qa_to_transformers(tmp_path, tok):
    model = make_model(tok, "qa")
    out = export_transformers(model, tmp_path / "hf")
    hf, hf_tok = load_hf("qa", out)
    assert hf.config.architectures == ["BertForQuestionAnswering"]
    q, c = zip(*QUESTIONS)
    batch = hf_tok(list(q), list(c), padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch)
    for i, ours in enumerate(our_logits(model, QUESTIONS)):
        n = len(ours["start_logits"])
        assert (ours["start_logits"] - theirs.start_logits[i, :n]).abs().max() < 1e-4
        assert (ours["end_logits"] - theirs.end_logits[i, :n]).abs().max() < 1e-4

    # The best span as transformers' QA pipeline picks it (max start + end logit over context
    # tokens, end >= start, at most 15 tokens), from transformers' own logits and offsets.
    batch = hf_tok(list(q), list(c), padding=True, return_offsets_mapping=True, return_tensors="pt")
    for i, want in enumerate(model.predict(QUESTIONS)):
        context = [j for j, s in enumerate(batch.sequence_ids(i)) if s == 1]
        start, end = theirs.start_logits[i], theirs.end_logits[i]
        a, b = max(((a, b) for a in context for b in context if 0 <= b - a < 15), key=lambda ab: start[ab[0]] + end[ab[1]])
        offsets = batch["offset_mapping"][i]
        assert (int(offsets[a][0]), int(offsets[b][1])) == (want["start"], want["end"])
    if "question-answering" in transformers.pipelines.SUPPORTED_TASKS:  # removed in transformers 5
        pipe = transformers.pipeline("question-answering", model=str(out))
        for (question, context), want in zip(QUESTIONS, model.predict(QUESTIONS)):
            got = pipe(question=question, context=context)
            assert (got["start"], got["end"], got["answer"]) == (want["start"], want["end"], want["text"])


def test_mlm_to_transformers(tmp_path, tok):
    """Before: refused ("head 'mlm' (mlm) has no transformers export"), so a pretrained model
    could not reach transformers' fill-mask pipeline."""
    model = make_model(tok, "mlm")
    out = export_transformers(model, tmp_path / "hf")
    hf, hf_tok = load_hf("mlm", out)
    assert hf.config.architectures == ["BertForMaskedLM"]
    # the tokenizer says the encoder's 64 positions (was 512: transformers' truncation=True overran them)
    assert hf_tok.model_max_length == 64 and len(hf_tok("cat " * 200, truncation=True)["input_ids"]) == 64
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()
    # the tied matrix is stored once, as transformers' save_pretrained stores it (was twice)
    with safetensors.safe_open(out / "model.safetensors", "pt") as f:
        assert "bert.embeddings.word_embeddings.weight" in f.keys()
        assert "cls.predictions.decoder.weight" not in f.keys()
    # bertcore's vocabulary logits at every token (not only the masked ones), fp32
    head = model.heads["task"]
    texts = ["the cat [MASK] on the mat", *TEXTS]
    model.prepare("task")                                                  # masking needs the tokenizer
    batch = model.collate(model.encode([{"text": t} for t in texts], "task").features, "task")
    batch["mlm_positions"] = torch.arange(len(batch["input_ids"]))
    with torch.no_grad():
        ours = model(batch, head="task")["logits"]                          # (T, V)
    cu = batch["cu_seqlens"].tolist()
    for i in range(len(texts)):
        ids = batch["input_ids"][cu[i]:cu[i + 1]]
        with torch.no_grad():
            theirs = hf(input_ids=ids[None], token_type_ids=batch["token_type_ids"][cu[i]:cu[i + 1]][None]).logits
        assert (ours[cu[i]:cu[i + 1]] - theirs[0]).abs().max() < 1e-5

    pipe = transformers.pipeline("fill-mask", model=str(out), top_k=3)
    want = model.predict(texts[:1])[0]["masks"][0]["candidates"]
    assert [(d["token"], d["score"]) for d in pipe(texts[0])] == \
        [(c["token_id"], pytest.approx(c["score"], abs=1e-5)) for c in want]

    # the round trip: bertcore reads the export back, cls.predictions.* into a fresh MLM head
    encoder = bertcore.BertEncoder.from_pretrained(out)
    back = bertcore.TaskModel(encoder, {"task": bertcore.create_head("mlm", encoder.config)}, tokenizer=tok).eval()
    assert all(torch.equal(a, b) for a, b in zip(back.heads["task"].state_dict().values(), head.state_dict().values()))
    with torch.no_grad():
        assert (back(batch, head="task")["logits"] - ours).abs().max() < 1e-5


def test_minilm_classification_round_trip(tmp_path, minilm_dir):
    """The real checkpoint and its lower-casing tokenizer.json, through the pipeline."""
    encoder = bertcore.BertEncoder.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    head = bertcore.create_head("classification", encoder.config, labels=["negative", "positive"])
    torch.nn.init.normal_(head.classifier.weight, std=0.5)
    model = bertcore.TaskModel(encoder, {"sentiment": head},
                               tokenizer=bertcore.Tokenizer.from_pretrained(minilm_dir)).eval()
    model.save_pretrained(tmp_path / "saved")
    assert main(["export", "--model", str(tmp_path / "saved"), "--to", "transformers", str(tmp_path / "hf")]) == 0
    texts = ["A Wonderful, MOVING film.", "Déjà vu: the plot is dull and the acting is worse!"]
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), top_k=None)
    for got, want in zip(pipe(texts), model.predict(texts)):
        assert {d["label"]: d["score"] for d in got} == pytest.approx(want["scores"], abs=1e-5)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        theirs = pipe.model(**hf_tok(texts, padding=True, return_tensors="pt")).logits
    assert (torch.stack(our_logits(_renamed(model), texts)) - theirs).abs().max() < 1e-4


def _renamed(model):
    return bertcore.TaskModel(model.encoder, {"task": model.heads["sentiment"]}, tokenizer=model.tokenizer).eval()


def test_export_errors(tmp_path, tok, monkeypatch):
    model = make_model(tok, "classification")
    model.add_head("next", bertcore.create_head("nsp", model.encoder.config))
    with pytest.raises(ValueError, match="has no transformers export"):
        export_transformers(model, tmp_path / "a", head="next")
    with pytest.raises(ValueError, match="pass head=NAME"):
        export_transformers(model, tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_transformers(model, tmp_path / "full", head="task")
    assert (tmp_path / "full" / "x.txt").read_text() == "keep me"
    # Before: "PosixPath('.') has an empty name", a raw errno, and "a.txt exists and is not empty" for a file.
    (tmp_path / "a.txt").write_text("keep me")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")                 # an empty current folder
    for target, message in ((tmp_path / "a.txt", "a.txt is a file; export into a folder"),
                            (tmp_path / "a.txt" / "sub", "a.txt is a file; export into a folder"),
                            (".", "is the current folder; export into a new folder below it")):
        with pytest.raises(FileExistsError, match=message):
            export_transformers(model, target, head="task")
    model.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        export_transformers(model, tmp_path / "b", head="task")


def test_cli_export_errors_are_one_line(tmp_path, tok, capsys):
    model = make_model(tok, "classification")
    model.add_head("next", bertcore.create_head("nsp", model.encoder.config))
    model.save_pretrained(tmp_path / "saved")
    code = main(["export", "--model", str(tmp_path / "saved"), "--head", "next", "--to", "transformers",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "has no transformers export" in err and len(err.strip().splitlines()) == 1


# ---- serving: padded, static shapes -------------------------------------------------------

def padded_inputs(tok, inputs):
    pairs = [x if isinstance(x, tuple) else (x, None) for x in inputs]
    first, second = zip(*pairs)
    b = tok(list(first), list(second) if second[0] is not None else None, padding=True, return_tensors="pt")
    return b["input_ids"], b["attention_mask"], b["token_type_ids"]


def assert_serving_equals_packed(model, got, inputs, mask, atol):
    """Serving outputs against the packed run path: per-sequence outputs (B, ...) row for
    row, per-token ones (B, L, ...) on each row's real tokens."""
    per_token = ServingModel(model).per_token
    for i, ours in enumerate(our_logits(model, inputs)):
        ours = ours if isinstance(ours, dict) else {"logits": ours}
        assert set(ours) == set(got)
        for key, value in ours.items():
            row = got[key][i][:int(mask[i].sum())] if per_token[key] else got[key][i]
            assert row.shape == value.shape and (row - value).abs().max() < atol, key


@pytest.mark.parametrize("kind", ["classification", "ner", "qa"])
def test_serving_equals_encoder_and_head(tok, kind):
    model = make_model(tok, kind)
    inputs = QUESTIONS if kind == "qa" else TEXTS
    serving = ServingModel(model).eval()
    ids, mask, types = padded_inputs(tok, inputs)
    with torch.no_grad():
        out = serving(ids, mask, types)
    assert_serving_equals_packed(model, out, inputs, mask, 1e-5)
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in serving.parameters())  # the model's own weights, no copy


@pytest.mark.parametrize("kind", ["classification", "qa"])
def test_torch_export_dynamic_batch_and_length(tok, kind):
    model = make_model(tok, kind)
    serving = ServingModel(model).eval()
    program = export_program(serving, serving.example_inputs(batch=2, seqlen=5))
    inputs = QUESTIONS + QUESTIONS[:1] if kind == "qa" else TEXTS[:3]
    ids, mask, types = padded_inputs(tok, inputs)
    assert ids.shape[0] == 3 and ids.shape[1] > 5      # another batch size and length
    with torch.no_grad():
        got = program.module()(ids, mask, types)
    assert_serving_equals_packed(model, got, inputs, mask, 1e-5)


@pytest.mark.parametrize("kind", ["classification", "qa"])
def test_onnx_runtime_matches(tmp_path, tok, kind):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
    ort = pytest.importorskip("onnxruntime", reason="the comparison needs onnxruntime")
    model = make_model(tok, kind)
    logged = logging.handlers.BufferingHandler(capacity=1000)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    registration.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = export_onnx(ServingModel(model), tmp_path / "model.onnx")
    finally:
        registration.removeHandler(logged)
    # torch's own noise stays out of the user's terminal: its deprecation warnings and a
    # line per torchvision op it skips
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], caught
    assert not logged.buffer, [r.getMessage() for r in logged.buffer]
    inputs = QUESTIONS + QUESTIONS[:1] if kind == "qa" else TEXTS[:3]
    ids, mask, types = padded_inputs(tok, inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                "token_type_ids": types.numpy()})
    got = {n: torch.from_numpy(v) for n, v in zip(names, values)}
    assert_serving_equals_packed(model, got, inputs, mask, 1e-5)
