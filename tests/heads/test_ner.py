import pytest
import torch

import bertcore
from bertcore_ner import get_entities
from heads_testing import train

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCE = {"tokens": ["John", "Johnson", "lives", "in", "Paris"], "tags": ["B-PER", "I-PER", "O", "O", "B-LOC"]}


def test_labels_on_first_subword_or_all(tok, cfg):
    head = bertcore.create_head("ner", cfg, labels=LABELS)
    feature = head.encode(SENTENCE, tok)[0]
    assert tok.convert_ids_to_tokens(feature["input_ids"]) == \
        ["[CLS]", "john", "john", "##son", "lives", "in", "paris", "[SEP]"]
    assert feature["labels"] == [-100, 1, 2, -100, 0, 0, 3, -100]
    every = bertcore.create_head("ner", cfg, labels=LABELS, label_all_subwords=True)
    assert every.encode(SENTENCE, tok)[0]["labels"] == [-100, 1, 2, 2, 0, 0, 3, -100]
    assert every.encode({"tokens": ["Johnson"], "tags": ["B-PER"]}, tok)[0]["labels"] == [-100, 1, 2, -100]
    batch = head.collate([feature, feature])
    assert batch["labels"].shape == batch["input_ids"].shape == (16,)


def logits_for(head, feature, word_tags):
    """Token logits whose argmax at each word's first sub-word is that word's tag."""
    logits = torch.zeros(len(feature["input_ids"]), len(head.labels))
    logits[:, 0] = 1.0
    seen = set()
    for i, w in enumerate(feature["word_ids"]):
        if w is not None and w not in seen:
            seen.add(w)
            logits[i, head.labels.index(word_tags[w])] = 5.0
    return logits


def test_decode_entities_with_character_offsets(tok, cfg):
    head = bertcore.create_head("ner", cfg, labels=LABELS)
    feature = head.encode(SENTENCE, tok)[0]
    out = head.decode(SENTENCE, [feature], [logits_for(head, feature, SENTENCE["tags"])])
    assert out["tags"] == SENTENCE["tags"]
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in out["entities"]] == \
        [("PER", "John Johnson", 0, 12), ("LOC", "Paris", 22, 27)]
    raw = {"text": "Mary  visited London, then Paris."}
    feature = head.encode(raw, tok)[0]
    tags = ["B-PER", "O", "B-LOC", "O", "O", "B-LOC", "O"]   # words: mary visited london , then paris .
    out = head.decode(raw, [feature], [logits_for(head, feature, tags)])
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in out["entities"]] == \
        [("PER", "Mary", 0, 4), ("LOC", "London", 14, 20), ("LOC", "Paris", 27, 32)]


def test_bio_and_bioes_spans():
    assert get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC"]) == \
        [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("LOC", 5, 5)]
    assert get_entities(["S-LOC", "O", "B-PER", "I-PER", "E-PER", "S-PER"]) == \
        [("LOC", 0, 0), ("PER", 2, 4), ("PER", 5, 5)]
    assert bertcore.create_head("ner", bertcore.BertConfig(hidden_size=32, num_attention_heads=2),
                                labels=["O", "S-X", "B-X", "I-X", "E-X"]).scheme == "BIOES"


def test_metrics_against_hand_computed_values(cfg):
    head = bertcore.create_head("ner", cfg, labels=LABELS)
    examples = [{"tags": ["B-PER", "I-PER", "O", "B-LOC"]}, {"tags": ["B-LOC", "O"]}]
    predictions = [{"tags": ["B-PER", "I-PER", "O", "O"]}, {"tags": ["B-LOC", "B-PER"]}]
    # gold 3 entities, predicted 3, correct 2
    assert head.metrics(predictions, examples) == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    # precision and recall apart: gold 3, predicted 2, both right; then nothing predicted (zero_division 0)
    predictions = [{"tags": ["B-PER", "I-PER", "O", "O"]}, {"tags": ["B-LOC", "O"]}]
    assert head.metrics(predictions, examples) == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8})
    predictions = [{"tags": ["O"] * 4}, {"tags": ["O"] * 2}]
    assert head.metrics(predictions, examples) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_learns_and_predicts(encoder, tok, cfg):
    names, cities = ["john", "mary", "smith"], ["paris", "london", "berlin"]
    examples = [{"tokens": [n, "lives", "in", c], "tags": ["B-PER", "O", "O", "B-LOC"]} for n in names for c in cities]
    examples += [{"tokens": [c, "is", "good"], "tags": ["B-LOC", "O", "O"]} for c in cities]
    model = bertcore.TaskModel(encoder, {"ner": bertcore.create_head("ner", cfg, labels=LABELS)}, tokenizer=tok)
    first, last = train(model, "ner", examples, steps=40)
    assert last < 0.3 * first
    assert model.evaluate(examples, head="ner")["f1"] == 1.0
    entities = model.predict("mary lives in berlin", head="ner")["entities"]
    assert [(e["label"], e["text"]) for e in entities] == [("PER", "mary"), ("LOC", "berlin")]


def test_a_labelled_sentence_longer_than_a_window_is_trained_and_scored_whole(tok, cfg):
    """A tagged sentence kept one window, cut at max_length: its later words were never
    trained on, and evaluation scored them "O" (recall 0.05 where predict, which read the
    text in windows, had 1.0). Now it is read in the windows predict reads, each word's tag
    learnt in the one window it is read from, and every word is scored."""
    head = bertcore.create_head("ner", cfg, labels=LABELS)
    long = {"tokens": SENTENCE["tokens"] * 6, "tags": SENTENCE["tags"] * 6}     # 30 words, 42 sub-word tokens
    features = head.encode(long, tok, max_length=16)
    assert len(features) >= 3
    labelled = [(f["word_ids"][i], label) for f in features for i, label in enumerate(f["labels"]) if label != -100]
    assert sorted(w for w, _ in labelled) == list(range(30))                 # each word once (was: the first 6)
    assert all(LABELS[label] == long["tags"][w] for w, label in labelled)
    # decode reads each word where encode put its label: the gold logits give the gold tags back
    outputs = [logits_for(head, f, long["tags"]) for f in features]
    assert head.decode(long, features, outputs)["tags"] == long["tags"]
    model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {"ner": head}, tokenizer=tok)
    scored = model.evaluate([long], max_length=16)
    predicted = model.predict(tuple(long["tokens"]), max_length=16)["tags"]
    from seqeval.metrics import f1_score
    assert scored["f1"] == pytest.approx(f1_score([long["tags"]], [predicted]))   # was: words past 16 tokens "O"


def test_labels_read_from_data_hold_each_types_other_prefixes():
    """Training data whose persons were all one word gave no I-PER: the head could not
    predict a longer person, and evaluate refused a test set holding one."""
    ner = type(bertcore.create_head("ner", bertcore.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                                num_attention_heads=2, intermediate_size=16),
                                    labels=LABELS))
    bio = [{"tokens": ["john", "in", "new", "york"], "tags": ["B-PER", "O", "B-LOC", "I-LOC"]}]
    assert ner.options_from_examples(bio)["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    bioes = [{"tokens": ["john", "new", "york"], "tags": ["S-PER", "B-LOC", "E-LOC"]}]
    assert ner.options_from_examples(bioes)["labels"] == ["O", "B-LOC", "E-LOC", "I-LOC", "S-LOC",
                                                          "B-PER", "E-PER", "I-PER", "S-PER"]
