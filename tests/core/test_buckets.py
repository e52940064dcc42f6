"""Static shapes by bucketing (bertcore.buckets): a bucketed batch gives the outputs,
loss and gradients of the unbucketed one (torch backend, to 1e-6), padding never
reaches the loss, zero-length sequences are fine, and `TaskModel.run` cuts bucketed
outputs back to the real batch."""
import sys
from pathlib import Path

import bertcore_kernels as K
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bertcore import cudagraphs
from bertcore.buckets import Buckets, pad_batch, real_batch, round_tokens, token_step, unpad_outputs
from bertcore.heads import Head
from bertcore.masking import IGNORE_INDEX

sys.path.insert(0, str(Path(__file__).parent))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyTokenHead(Head):
    """Token classification (every other token labelled), for per-token label padding."""

    name = "toytok"
    token_labels = True

    def __init__(self, config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, 3)

    def encode(self, example, tokenizer, max_length=512):
        enc = tokenizer(example["text"], max_length=max_length)
        ids = enc["input_ids"][0]
        labels = [i % 3 if i % 2 else IGNORE_INDEX for i in range(len(ids))]
        return [{"input_ids": ids, "token_type_ids": enc["token_type_ids"][0], "labels": labels}]

    def forward(self, output, batch):
        return self.classifier(output.last_hidden_state)                       # (T, 3)

    def loss(self, logits, batch):
        return F.cross_entropy(logits, batch["labels"], ignore_index=IGNORE_INDEX)


@pytest.fixture(scope="module")
def tok():
    return toy.tokenizer()


def test_shapes_round_up_a_little_and_hold_their_padding():
    buckets = Buckets(batch_size=16)
    for real in [0, 1, 63, 64, 65, 500, 1000, 1025, 2047, 5000, 8191]:
        lengths = [real // 16] * 15 + [real - 15 * (real // 16)] if real >= 16 else [real]
        lengths = [min(n, 512) for n in lengths]
        shape = buckets.shape(lengths)
        real = sum(lengths)
        assert shape.real_tokens == real and shape.tokens >= real
        assert shape.tokens - real <= max(64, real // 8), (real, shape)
        assert shape.max_seqlen >= max(lengths) and shape.max_seqlen in buckets.seqlens
        assert shape.pad_slots * shape.max_seqlen >= shape.tokens - real     # each padding sequence fits
        assert shape.sequences == 16 + shape.pad_slots and shape.sequences != shape.tokens
    # every batch of a bucket has the bucket's shape (what a captured graph needs)
    keys = {buckets.shape([n, 100]).key for n in range(1, 101) if round_tokens(n + 100) == 192}
    assert len(keys) == 1
    assert token_step(1000) == 64 and token_step(5000) == 512 and round_tokens(1000) == 1024


def test_too_many_or_too_long_sequences_are_errors():
    with pytest.raises(ValueError, match="over batch_size"):
        Buckets(batch_size=2).shape([3, 3, 3])
    with pytest.raises(ValueError, match="largest bucket"):
        Buckets(batch_size=2, seqlens=(64,)).shape([65])


def test_pad_batch_layout_zero_length_sequences_and_ignored_labels():
    batch = {"input_ids": torch.arange(1, 11), "token_type_ids": torch.zeros(10, dtype=torch.long),
             "cu_seqlens": torch.tensor([0, 4, 4, 10], dtype=torch.int32), "max_seqlen": 6,
             "labels": torch.tensor([1, 0, 1])}
    shape = Buckets(batch_size=5).shape([4, 0, 6])
    padded = pad_batch(batch, shape, sequence_keys=("labels",))
    offsets = padded["cu_seqlens"].tolist()
    assert padded["input_ids"].shape == (shape.tokens,) and len(offsets) == shape.sequences + 1
    assert offsets[:4] == [0, 4, 4, 10] and offsets[-1] == shape.tokens
    lengths = [b - a for a, b in zip(offsets, offsets[1:])]
    assert sum(lengths[3:3 + shape.pad_slots]) == shape.tokens - 10              # padding in its own sequences
    assert lengths[3 + shape.pad_slots:] == [0] * (shape.sequences - 3 - shape.pad_slots)
    assert padded["input_ids"][10:].eq(0).all() and padded["max_seqlen"] == 64
    assert padded["labels"].tolist() == [1, 0, 1] + [IGNORE_INDEX] * (shape.sequences - 3)
    back = real_batch(padded)
    assert back["cu_seqlens"].tolist() == [0, 4, 4, 10] and back["max_seqlen"] == 6
    assert torch.equal(back["labels"], batch["labels"]) and torch.equal(back["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match="cannot bucket"):
        pad_batch({**batch, "weights": torch.ones(3)}, shape)


def _step(model, batch, head):
    model.zero_grad(set_to_none=True)
    logits = model(batch, head=head)
    loss = model.loss(batch, head=head)
    loss.backward()
    return logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head", ["toy", "toytok"])
def test_bucketed_batch_gives_the_same_outputs_loss_and_gradients(tok, head):
    model = toy.model(tok, dropout=0.0)
    if head == "toytok":
        model.add_head("toytok", ToyTokenHead(model.encoder.config))
    model.train()
    examples = toy.examples(7) + [{"text": "", "label": "pos"}]                   # [CLS] [SEP] only
    data = model.encode(examples, head, tok)
    plain = model.collate(data.features, head)
    padded = model.collate(data.features, head, buckets=model.buckets(10))
    assert "num_sequences" in padded and padded["input_ids"].shape[0] > plain["input_ids"].shape[0]
    with K.use_backend("torch"):
        logits, loss, grads = _step(model, plain, head)
        logits_b, loss_b, grads_b = _step(model, padded, head)
    torch.testing.assert_close(unpad_outputs(logits_b, padded), logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_b, loss, rtol=0, atol=1e-6)
    assert grads.keys() == grads_b.keys()
    for name in grads:
        torch.testing.assert_close(grads_b[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_padding_never_reaches_the_loss(tok):
    """Whatever the padding tokens are, the loss and the gradients stay the same."""
    model = toy.model(tok, dropout=0.0).train()
    data = model.encode(toy.examples(5), "toy", tok)
    padded = model.collate(data.features, "toy", buckets=model.buckets(8))
    poisoned = dict(padded)
    ids = padded["input_ids"].clone()
    ids[padded["num_tokens"]:] = torch.randint(1, tok.vocab_size, (ids.shape[0] - padded["num_tokens"],))
    poisoned["input_ids"] = ids
    _, loss, grads = _step(model, padded, "toy")
    _, loss_p, grads_p = _step(model, poisoned, "toy")
    assert torch.equal(loss, loss_p)
    for name in grads:   # the word embedding too: the padding ids' rows get no gradient
        torch.testing.assert_close(grads_p[name], grads[name], rtol=0, atol=1e-7, msg=name)


def test_labels_that_cannot_be_ignored_leave_the_batch_unbucketed(tok):
    model = toy.model(tok)
    features = model.encode(toy.examples(3), "toy", tok).features
    floats = [{**f, "labels": float(f["labels"])} for f in features]
    batch = model.collate(floats, "toy", buckets=model.buckets(4))
    assert "num_sequences" not in batch and batch["input_ids"].shape[0] == sum(len(f["input_ids"]) for f in features)


def eager_forward_of(sizes: list):
    """Stands in for `cudagraphs.forward_of` on the CPU: the plain forward instead of a
    graph replay, recording each bucketed batch's token count in `sizes`."""
    def forward_of(m):
        def forward(batch, heads):
            sizes.append(batch["input_ids"].shape[0])
            return m(batch, head=list(heads))
        return forward
    return forward_of


def test_run_on_bucketed_batches_gives_the_unbucketed_results(tok, monkeypatch):
    """The GPU path of `TaskModel.run` (bucket, forward, cut back) on the CPU, with the
    plain forward standing in for the graph replay."""
    model = toy.model(tok)
    data = model.encode(toy.examples(11), "toy", tok)
    expected = model.run(data, batch_size=4)["toy"]
    calls = []
    monkeypatch.setattr(cudagraphs, "usable", lambda device: True)
    monkeypatch.setattr(cudagraphs, "forward_of", eager_forward_of(calls))
    got = model.run(data, batch_size=4)["toy"]
    assert len(calls) == 3 and all(n % 64 == 0 for n in calls)
    assert got.predictions == expected.predictions
    assert abs(got.loss - expected.loss) < 1e-6


def _head_examples(name):
    words = "good great fine bad awful poor movie film plot actor".split()
    rows = []
    for i in range(13):
        text = " ".join(words[(i + k) % len(words)] for k in range(3 + i % 5))
        if name == "ner":
            rows.append({"tokens": text.split(), "tags": ["B-PER" if w == "actor" else "O" for w in text.split()]})
        elif name == "qa":
            answer = text.split()[1]
            rows.append({"id": str(i), "question": "which film ?", "context": text,
                         "answers": {"text": [answer], "answer_start": [text.index(answer)]}})
        elif name == "nsp":
            rows.append({"text": text, "text_pair": text[::-1], "label": i % 2})
        else:
            rows.append({"text": text, "label": ["neg", "pos"][i % 2]})
    return rows


@pytest.mark.parametrize("name, options", [("classification", {"labels": ["neg", "pos"]}),
                                           ("ner", {"labels": ["O", "B-PER"]}), ("qa", {"stride": 8}),
                                           ("nsp", {})])
def test_evaluate_on_bucketed_batches_matches_for_every_head(tok, monkeypatch, name, options):
    """Sequence-level (classification, NSP), token-level (NER) and per-sequence positions
    over token logits (QA): metrics and loss of the bucketed run path equal the plain one."""
    import bertcore
    if name not in {h.name for h in bertcore.list_heads() if h.error is None}:
        pytest.skip(f"the {name} head plugin is not installed")
    model = toy.model(tok, heads=())
    model.add_head(name, bertcore.create_head(name, model.encoder.config, **options))
    examples = _head_examples(name)
    expected = model.evaluate(examples, head=name, batch_size=4)
    monkeypatch.setattr(cudagraphs, "usable", lambda device: True)
    sizes = []
    monkeypatch.setattr(cudagraphs, "forward_of", eager_forward_of(sizes))
    got = model.evaluate(examples, head=name, batch_size=4)
    assert sizes and all(n % 64 == 0 for n in sizes)             # every batch went through a bucket
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
