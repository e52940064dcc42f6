"""TaskModel.from_pretrained of a transformers task checkpoint (BertForSequenceClassification
& co.): the installed head that imports its class, built from its config.json and holding its
weights, gives transformers' own logits; the inverse of `bertcore export`."""
import pytest
import torch

import bertcore
from bertcore.checkpoint import CheckpointError
from bertcore.export import ServingModel

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"good bad film movie john lives in paris who where".split()]
CASES = {   # id: (transformers class, config keys, bertcore head, what its head options say)
    "single-label": ("BertForSequenceClassification", {"id2label": {0: "neg", 1: "pos", 2: "mixed"}},
                     "classification", {"labels": ["neg", "pos", "mixed"], "problem": "single_label"}),
    "multi-label": ("BertForSequenceClassification", {"id2label": {0: "a", 1: "b"},
                                                      "problem_type": "multi_label_classification"},
                    "classification", {"labels": ["a", "b"], "problem": "multi_label"}),
    "regression": ("BertForSequenceClassification", {"num_labels": 1}, "classification", {"problem": "regression"}),
    "ner": ("BertForTokenClassification", {"id2label": {0: "O", 1: "B-PER", 2: "I-PER"}}, "ner",
            {"labels": ["O", "B-PER", "I-PER"]}),
    "qa": ("BertForQuestionAnswering", {}, "qa", {}),
    "mlm": ("BertForMaskedLM", {}, "mlm", {}),
}


def checkpoint(folder, cls_name, **config):
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, **config)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(cfg).eval()
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return model


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_transformers_task_checkpoint_loads_with_its_head(tmp_path, case, caplog):
    """It said "has no encoder/ folder" (and `--encoder` dropped the head's weights)."""
    cls_name, config, head_name, expect = CASES[case]
    reference = checkpoint(tmp_path, cls_name, **config)
    with caplog.at_level("WARNING"):
        model = bertcore.TaskModel.from_pretrained(tmp_path)
    assert not caplog.records, caplog.text     # no pooler "left at its initial values", no head "left aside"
    head = model.heads[head_name]
    assert list(model.heads) == [head_name] and model.tokenizer is not None and not model.training
    for key, value in expect.items():
        assert getattr(head, key) == value, key
    ids = torch.tensor([[2, 5, 7, 3, 0], [2, 9, 10, 11, 3]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    with torch.no_grad():
        ours = ServingModel(model)(ids, mask, types)
        theirs = reference(input_ids=ids, attention_mask=mask, token_type_ids=types)
    shared = [key for key in ours if key in theirs]                          # MLM adds its "positions"
    assert shared
    for key, value in ((k, ours[k]) for k in shared):
        per_token = tuple(value.shape[:2]) == tuple(ids.shape)                 # (B, L, ...): padding means nothing
        valid = mask.bool() if per_token else torch.ones(len(ids), dtype=torch.bool)
        assert (value[valid] - theirs[key][valid]).abs().max() < 1e-5, key


def test_a_class_no_head_imports_is_named(tmp_path):
    checkpoint(tmp_path, "BertForPreTraining")
    with pytest.raises(CheckpointError, match=r"is a transformers checkpoint of BertForPreTraining, which no installed "
                                              r"head imports; load its encoder with BertEncoder.from_pretrained"):
        bertcore.TaskModel.from_pretrained(tmp_path)


def test_an_exported_model_comes_back(tmp_path):
    """export_transformers, then from_pretrained: the same predictions."""
    from bertcore.export import export_transformers
    checkpoint(tmp_path / "hf", "BertForSequenceClassification", id2label={0: "neg", 1: "pos"})
    model = bertcore.TaskModel.from_pretrained(tmp_path / "hf")
    export_transformers(model, tmp_path / "out")
    again = bertcore.TaskModel.from_pretrained(tmp_path / "out")
    texts = ["good film", "bad movie in paris"]
    assert again.predict(texts) == model.predict(texts)
