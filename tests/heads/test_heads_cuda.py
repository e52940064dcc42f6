"""Every head on a GPU: one training step and a prediction (skipped without CUDA)."""
import pytest
import torch

import bertcore
from heads_testing import HEADS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

LABELLED = {
    "classification": {"text": "good movie", "label": "pos"},
    "ner": {"tokens": ["john", "lives"], "tags": ["B-PER", "O"]},
    "qa": {"question": "who lives in paris ?", "context": "john lives in paris .",
           "answers": {"text": ["john"], "answer_start": [0]}},
    "nsp": {"text": "the cat sat", "text_pair": "on the mat", "label": 0},
    "mlm": {"text": "the cat sat on the mat"},
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_on_cuda(encoder, tok, cfg, name):
    kwargs, item = HEADS[name]
    model = bertcore.TaskModel(encoder, {"t": bertcore.create_head(name, cfg, **kwargs)}, tokenizer=tok)
    on_cpu = model.predict(item, head="t", max_length=32)
    model.to("cuda")
    model.prepare("t")
    head = model.heads["t"]
    if name == "mlm":
        head.mlm_probability = 0.5
    batch = head.collate([f for _ in range(4) for f in head.encode(LABELLED[name], tok, 64)])
    loss = model.loss(batch, head="t")
    loss.backward()
    assert torch.isfinite(loss) and loss.device.type == "cuda"
    assert_close_tree(model.predict(item, head="t", max_length=32), on_cpu)
    if name == "ner":   # its metrics need seqeval, which a --no-deps install (the GPU suite) lacks
        pytest.importorskip("seqeval")
    assert "loss" in model.evaluate([LABELLED[name]] * 3, head="t")


def assert_close_tree(a, b, tol=1e-3):
    """Same structure and strings; floats within `tol` (Triton vs torch rounding)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=tol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close_tree(a[k], b[k], tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close_tree(x, y, tol)
    else:
        assert a == b
