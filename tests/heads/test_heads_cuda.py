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
    model = bertcore.TaskModel(encoder, {"t": bertcore.create_head(name, cfg, **kwargs)}, tokenizer=tok).to("cuda")
    head = model.heads["t"]
    if name == "mlm":
        head.mlm_probability = 0.5
    batch = head.collate([f for _ in range(4) for f in head.encode(LABELLED[name], tok, 64)])
    loss = model.loss(batch, head="t")
    loss.backward()
    assert torch.isfinite(loss) and loss.device.type == "cuda"
    assert model.predict(item, head="t", max_length=32) is not None
    assert "loss" in model.evaluate([LABELLED[name]] * 3, head="t")
