"""Fault suite, inference: long NER texts are read whole (they were cut at max_length, the
words past it silently tagged O or dropped), entity and QA answer offsets keep the accents
of NFD text, a generator predicts as a batch, and an input whose text is a JSON null is
refused with its file:line instead of a tokenizer TypeError."""
import unicodedata

import pytest
import torch

import bertcore
from bertcore.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture
def ner_model(cfg, tok, encoder):
    return bertcore.TaskModel(encoder, {"ner": bertcore.create_head("ner", cfg, labels=NER_LABELS)}, tokenizer=tok)


def test_ner_text_longer_than_max_length_is_tagged_whole(ner_model):
    words = ["john", "lives", "in", "paris"] * 40                    # 160 words, more than 128 positions
    text = " ".join(words)
    ner = ner_model.heads["ner"]
    with torch.no_grad():
        ner.classifier.weight.zero_()
        ner.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0]))   # every word B-PER
    for item in (text, tuple(words)):
        result = ner_model.predict(item, head="ner", max_length=32)
        # was: 30 tags for the text; for the words, the 130 past the window silently "O"
        assert result["tags"] == ["B-PER"] * len(words)
        assert len(result["entities"]) == len(words)
        for entity in result["entities"]:
            assert text[entity["start"]:entity["end"]] == entity["text"]
        assert [e["text"] for e in result["entities"]] == words


def test_ner_entity_of_nfd_text_keeps_its_accent(ner_model):
    text = unicodedata.normalize("NFD", "café été")                 # accents as combining marks
    ner = ner_model.heads["ner"]
    with torch.no_grad():
        ner.classifier.weight.zero_()
        ner.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0]))   # every word B-PER
    entities = ner_model.predict(text, head="ner")["entities"]
    assert [e["text"] for e in entities] == ["cafe\u0301", "e\u0301te\u0301"]   # was: "cafe", "e\u0301te"
    assert all(text[e["start"]:e["end"]] == e["text"] for e in entities)


def test_qa_answer_of_nfd_context_keeps_its_accent(cfg, tok):
    head = bertcore.create_head("qa", cfg)
    context = unicodedata.normalize("NFD", "he lives in paris cafe\u0301 now")
    example = {"question": "where ?", "context": context}
    feature = head.encode(example, tok, 64)[0]
    start, end = torch.zeros(len(feature["input_ids"])), torch.zeros(len(feature["input_ids"]))
    target = context.index("cafe")
    for i, o in enumerate(feature["offsets"]):
        if o is not None and o[0] == target:
            start[i] = 10.0
        if o is not None and o[1] == target + 4:                       # the token "##e" ends before the accent
            end[i] = 10.0
    answer = head.decode(example, [feature], [{"start_logits": start, "end_logits": end}])
    assert answer["text"] == "cafe\u0301"                              # was: "cafe"
    assert context[answer["start"]:answer["end"]] == answer["text"]


def test_generator_predicts_as_a_batch(cfg, tok, encoder):
    model = bertcore.TaskModel(encoder, {"s": bertcore.create_head("classification", cfg, labels=["neg", "pos"])},
                               tokenizer=tok)
    texts = ["good film", "bad movie", "fun"]
    got = model.predict((t for t in texts), head="s")                 # was: TypeError "cannot predict on generator"
    assert got == model.predict(texts, head="s")


@pytest.mark.parametrize("head, line, field", [
    ("s", '{"text": null}', "'text' is null"),
    ("s", '{"text": "good", "text_pair": 3}', "'text_pair' is int 3"),
    ("qa", '{"question": "who ?", "context": null}', "'context' is null"),
    ("ner", '{"text": null}', "'text' is null")])
def test_cli_predict_names_the_line_of_a_text_that_is_not_a_string(cfg, tok, encoder, tmp_path, capsys,
                                                                   head, line, field):
    heads = {"s": bertcore.create_head("classification", cfg, labels=["neg", "pos"]),
             "qa": bertcore.create_head("qa", cfg), "ner": bertcore.create_head("ner", cfg, labels=NER_LABELS)}
    bertcore.TaskModel(encoder, heads, tokenizer=tok).save_pretrained(tmp_path / "m")
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "good", "question": "who ?", "context": "john"}\n' + line + "\n", encoding="utf-8")
    assert main(["predict", "--model", str(tmp_path / "m"), "--head", head, "--input", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [x for x in err.splitlines() if x.startswith("bertcore predict: error:")]
    assert len(errors) == 1 and f"{data}:2: " in errors[0] and field in errors[0], err
    assert "is_split_into_words" not in errors[0] and "only_second" not in errors[0]   # was: the tokenizer's words
