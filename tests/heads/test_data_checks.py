"""Bad training data is refused before training, with the file, the 1-based line and
what to do (issue: nothing silent): every head checks every example."""
import json

import pytest

import bertcore
from bertcore.data import DataError

CONTEXT = "john lives in paris ."


def jsonl(tmp_path, rows, name="train.jsonl"):
    file = tmp_path / name
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return file


def trainer(tmp_path, tok, encoder, head, kind, train, eval=None, **options):
    model = bertcore.TaskModel(encoder, {head: bertcore.create_head(kind, encoder.config, **options)}, tokenizer=tok)
    return bertcore.Trainer(model, tokenizer=tok, train=train, eval=eval,
                            args=bertcore.TrainingArgs(str(tmp_path / "run"), progress=False))


GOOD = {"text": "good", "label": "pos"}


@pytest.mark.parametrize("bad, message", [
    ({"text": "bad"}, r"missing label; a classification example needs text, label"),
    ({"text": None, "label": "neg"}, r"text is NoneType None; expected a string"),
    ({"text": 7, "label": "neg"}, r"text is int 7; expected a string"),
    ({"text": "bad", "label": {"a": 1}}, r"label \{'a': 1\} is not a class name or index"),
    ({"text": "bad", "label": None}, r"label None is not a class name or index"),
    ({"text": "bad", "label": ""}, r"label '' is not a class name or index"),
    ({"text": "bad", "label": "meh"}, r"label 'meh' is not one of the head's labels \['neg', 'pos'\]"),
])
def test_classification_examples(tmp_path, tok, encoder, bad, message):
    file = jsonl(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(DataError, match=rf"train.jsonl:3: {message}"):
        trainer(tmp_path, tok, encoder, "s", "classification", file, labels=["neg", "pos"])


def test_eval_labels_training_never_saw_and_one_class_warning(tmp_path, tok, encoder):
    train = jsonl(tmp_path, [GOOD, {"text": "bad", "label": "neg"}])
    held = jsonl(tmp_path, [GOOD, {"text": "so so", "label": "neutral"}], name="dev.jsonl")
    options = bertcore.plugins.get_head_type("classification").options_from_examples(bertcore.data.load_examples(train))
    with pytest.raises(DataError, match=r"dev.jsonl:2: label 'neutral' is not one of the head's labels"):
        trainer(tmp_path, tok, encoder, "s", "classification", train, eval=held, **options)
    with pytest.warns(UserWarning, match=r"one class only \('pos'\)"):
        trainer(tmp_path, tok, encoder, "s", "classification", jsonl(tmp_path, [GOOD, GOOD]), labels=["neg", "pos"])


def test_regression_labels_and_inference(tmp_path, tok, encoder):
    head_type = bertcore.plugins.get_head_type("classification")
    assert head_type.options_from_examples([{"label": 0.5}, {"label": 3}]) == {"num_labels": 1}
    assert head_type.options_from_examples([{"label": 1}, {"label": 0}]) == {"labels": ["0", "1"]}
    assert head_type.options_from_examples([{"label": ["a", "b"]}, {"label": "c"}]) == \
        {"labels": ["a", "b", "c"], "multi_label": True}
    file = jsonl(tmp_path, [{"text": "a", "label": 0.5}, {"text": "b", "label": "x"}])
    with pytest.raises(DataError, match=r"train.jsonl:2: label 'x' is not a finite number"):
        trainer(tmp_path, tok, encoder, "s", "classification", file, num_labels=1)
    head = bertcore.create_head("classification", encoder.config, num_labels=1)
    assert head.main_metric == "pearson"   # what regression reports, so best/ and early stopping work


NER_OK = {"tokens": ["john", "lives"], "tags": ["B-PER", "O"]}


@pytest.mark.parametrize("bad, message", [
    ({"tokens": ["john", "lives"], "tags": ["R", "O"]}, r"word 1 \('john'\): tag 'R' is not BIO/BIOES"),
    ({"tokens": ["john", "lives"], "tags": ["B-PER"]}, r"2 tokens but 1 tags; give one tag per token"),
    ({"tokens": ["john"], "tags": ["B-PER", "O"]}, r"1 tokens but 2 tags"),
    ({"tokens": "john lives", "tags": ["B-PER", "O"]}, r"tokens must be a list of strings"),
    ({"tokens": ["john", "lives"], "tags": ["B-LOC", "O"]}, r"word 1 \('john'\): tag 'B-LOC' is not one of the head's"),
    # which word: a sentence's error was placed at its first line alone (a CoNLL sentence spans many)
    ({"tokens": ["john", "lives", "here"], "tags": ["B-PER", "O", "I-LOC"]}, r"word 3 \('here'\): tag 'I-LOC' is not.*"
     r"needs a new head \(its labels are fixed when it is built: given, or read from the training data\)"),
])
def test_ner_examples(tmp_path, tok, encoder, bad, message):
    file = jsonl(tmp_path, [NER_OK, bad])
    with pytest.raises(DataError, match=rf"train.jsonl:2: {message}"):
        trainer(tmp_path, tok, encoder, "n", "ner", file, labels=["O", "B-PER", "I-PER"])


def qa(start, text="paris"):
    return {"id": "1", "question": "where ?", "context": CONTEXT, "answers": {"text": [text], "answer_start": [start]}}


@pytest.mark.parametrize("bad, message", [
    (qa(99), r"answer_start 99 is not a character offset in the 21-character context"),
    (qa(-1), r"answer_start -1 is not a character offset"),
    (qa(5), r"the context at answer_start 5 reads 'lives', not the answer 'paris'; fix the offset"),
    ({**qa(14), "answers": {"text": ["paris"]}}, r"answers must be"),
])
def test_qa_examples(tmp_path, tok, encoder, bad, message):
    file = jsonl(tmp_path, [qa(14), bad])
    with pytest.raises(DataError, match=rf"train.jsonl:2: {message}"):
        trainer(tmp_path, tok, encoder, "q", "qa", file)


def test_qa_answers_as_squad_list_are_read(tmp_path, tok, encoder):
    listed = {**qa(14), "answers": [{"text": "paris", "answer_start": 14}]}
    t = trainer(tmp_path, tok, encoder, "q", "qa", jsonl(tmp_path, [qa(14), listed]))
    first, second = t.train_sets[0].features[:2]
    assert (first["start_positions"], first["end_positions"]) == (second["start_positions"], second["end_positions"])
    assert first["start_positions"] > 0


def test_squad_question_without_answers_is_an_error(tmp_path, tok, encoder):
    file = tmp_path / "squad.json"
    file.write_text(json.dumps({"data": [{"paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "a", "question": "where ?", "answers": [{"text": "paris", "answer_start": 14}]},
        {"id": "b", "question": "who ?"}]}]}]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"squad.json: data\[0\].paragraphs\[0\].qas\[1\]: no answers"):
        bertcore.data.load_examples(file)
