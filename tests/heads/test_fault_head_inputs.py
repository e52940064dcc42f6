"""Fault suite, the heads' data preparation: QA answers whose edge characters make no token
(trailing whitespace, zero-width, an accent the uncased tokenizer strips, \\u3000) were
labelled "not in any window", so the example trained as unanswerable; a labelled example
given to predict failed on a bare float() or iteration error."""
import pytest

import bertcore


@pytest.mark.parametrize("context, answer", [
    ("john lives in paris ", "paris "),              # trailing whitespace, at the context's end
    ("john lives in paris\u200b", "paris\u200b"),    # a zero-width space
    ("john lives in paris\u3000", "paris\u3000"),    # an ideographic space
    ("john lives in cafe\u0301", "cafe\u0301"),      # NFD: the uncased tokenizer strips the accent
    ("\u200bparis is where john lives", "\u200bparis"),   # a dropped character before the window's first token
])
def test_qa_answer_with_edge_characters_that_make_no_token_is_labelled(tok, cfg, context, answer):
    head = bertcore.create_head("qa", cfg)
    example = {"question": "where ?", "context": context,
               "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
    head.check_example(example)
    [feature] = head.encode(example, tok, max_length=64)
    start, end = feature["start_positions"], feature["end_positions"]
    assert start > 0                                          # was: 0, 0 ([CLS]: "no answer here")
    word = answer.strip("\u200b\u3000 \u0301")
    assert tok.decode(feature["input_ids"][start:end + 1]).replace(" ##", "").replace(" ", "") == word
    a, b = feature["offsets"][start][0], feature["offsets"][end][1]
    assert context[a:b] == word


def test_qa_answer_across_windows_is_labelled_only_in_the_window_that_holds_it_whole(tok, cfg):
    context = "the cat sat on the mat . " * 12 + "john lives in paris\u200b"
    head = bertcore.create_head("qa", cfg, stride=16)
    example = {"question": "where ?", "context": context,
               "answers": {"text": ["paris\u200b"], "answer_start": [context.index("paris")]}}
    features = head.encode(example, tok, max_length=64)
    assert len(features) >= 2
    assert [f["start_positions"] > 0 for f in features] == [False] * (len(features) - 1) + [True]


def test_qa_answer_of_only_dropped_characters_is_named(tok, cfg):
    head = bertcore.create_head("qa", cfg)
    example = {"question": "who ?", "context": "john \u200b", "answers": {"text": ["\u200b"], "answer_start": [5]}}
    head.check_example(example)                               # not blank to str.strip()
    with pytest.raises(ValueError, match=r"answer text '\\u200b' makes no token .*answers \[\]"):
        head.encode(example, tok, max_length=64)             # was: silently a question without an answer



def test_a_heads_value_error_names_the_example(tok, cfg, encoder):
    model = bertcore.TaskModel(encoder, {"qa": bertcore.create_head("qa", cfg)}, tokenizer=tok)
    good = {"question": "who ?", "context": "john went", "answers": {"text": ["john"], "answer_start": [0]}}
    bad = {"question": "who ?", "context": "john \u200b", "answers": {"text": ["\u200b"], "answer_start": [5]}}
    with pytest.raises(ValueError, match=r"^example 2: answer text '\\u200b' makes no token"):
        model.encode([good, bad])                             # was: the head's message, no example named


@pytest.mark.parametrize("options, label, message", [
    ({"num_labels": 1}, "abc", r"label 'abc' is not a finite number \(this head is a regression\)"),
    ({"labels": ["a", "b"], "multi_label": True}, 3.5, r"label 3.5 is not a label or a list of labels"),
])
def test_classification_labelled_input_to_predict_names_the_label(cfg, tok, encoder, options, label, message):
    # was: "could not convert string to float: 'abc'", "'float' object is not iterable"
    model = bertcore.TaskModel(encoder, {"h": bertcore.create_head("classification", cfg, **options)}, tokenizer=tok)
    with pytest.raises(ValueError, match=message):
        model.predict({"text": "good film", "label": label})
    assert model.predict("good film")


def test_classification_regression_label_true_is_refused_in_encode(cfg, tok):
    head = bertcore.create_head("classification", cfg, num_labels=1)
    with pytest.raises(ValueError, match=r"label True is not a finite number"):
        head.encode({"text": "good", "label": True}, tok)     # was: trained as 1.0
    assert head.encode({"text": "good", "label": "3.5"}, tok)[0]["labels"] == 3.5
