import pytest
import torch

import bertcore
from bertcore_qa import compute_f1, normalize_answer
from heads_testing import train

FILLER = "the cat sat on the mat . " * 12          # 84 words: more than one 64-token window
CONTEXT = FILLER + "john lives in paris ."
ANSWER_START = CONTEXT.index("paris")
EXAMPLE = {"id": "q1", "question": "where does john live ?", "context": CONTEXT,
           "answers": {"text": ["paris"], "answer_start": [ANSWER_START]}}


def test_windows_with_stride_and_answer_positions(tok, cfg):
    head = bertcore.create_head("qa", cfg, stride=16)
    features = head.encode(EXAMPLE, tok, max_length=64)
    assert len(features) >= 2
    assert features[0]["start_positions"] == features[0]["end_positions"] == 0   # not in window 1
    last = features[-1]
    s = last["start_positions"]
    assert s > 0 and last["end_positions"] == s
    assert tok.convert_ids_to_tokens(last["input_ids"][s]) == "paris"
    assert last["offsets"][s] == (ANSWER_START, ANSWER_START + 5)
    # neighbouring windows share `stride` context tokens
    ctx = [[o for o in f["offsets"] if o is not None] for f in features]
    assert ctx[0][-16:] == ctx[1][:16]
    batch = head.collate(features)
    assert batch["start_positions"].tolist() == [f["start_positions"] for f in features]


def test_decode_answer_in_second_window(tok, cfg):
    head = bertcore.create_head("qa", cfg, stride=16)
    features = head.encode(EXAMPLE, tok, max_length=64)
    outputs = []
    for f in features:
        start, end = torch.zeros(len(f["input_ids"])), torch.zeros(len(f["input_ids"]))
        if f["start_positions"]:
            start[f["start_positions"]], end[f["end_positions"]] = 4.0, 3.0
            start[f["start_positions"] - 3] = 3.5                    # "john lives in paris": longer, lower
        outputs.append({"start_logits": start, "end_logits": end})
    answer = head.decode(EXAMPLE, features, outputs)
    assert (answer["text"], answer["start"], answer["end"]) == ("paris", ANSWER_START, ANSWER_START + 5)
    assert answer["n_best"][1]["text"] == "john lives in paris"
    assert answer["score"] == pytest.approx(7.0)
    head.max_answer_length = 3                                          # the long span no longer fits
    assert all(len(c["text"].split()) <= 3 for c in head.decode(EXAMPLE, features, outputs)["n_best"])
    # SQuAD 2.0: a null score above the best span means "no answer"
    for out in outputs:
        out["start_logits"][0] = out["end_logits"][0] = 4.0
    assert head.decode(EXAMPLE, features, outputs)["text"] == "paris"  # 1.1 mode: always a span
    head.allow_no_answer = True
    assert head.decode(EXAMPLE, features, outputs)["text"] == ""


def test_metrics_are_squads():
    assert normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert compute_f1("london", "london city") == pytest.approx(2 / 3)
    head = bertcore.create_head("qa", bertcore.BertConfig(hidden_size=32, num_attention_heads=2))
    examples = [{"answers": {"text": ["Paris", "in Paris"]}}, {"answers": {"text": ["London"]}},
                {"answers": {"text": []}}, {"answers": {"text": ["red"]}}]
    predictions = [{"text": "the Paris"}, {"text": "london city"}, {"text": ""}, {"text": ""}]
    m = head.metrics(predictions, examples)
    assert m["exact_match"] == pytest.approx(100 * 2 / 4)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)


def test_no_answer_training_examples_turn_on_squad2_in_prepare_not_encode(tok, cfg):
    head = bertcore.create_head("qa", cfg)
    unanswerable = {**EXAMPLE, "answers": {"text": [], "answer_start": []}}
    f = head.encode(unanswerable, tok, max_length=64)
    assert all(x["start_positions"] == 0 for x in f)
    assert not head.allow_no_answer                       # encoding changes nothing
    head.prepare(tok, [EXAMPLE])
    assert not head.allow_no_answer
    head.prepare(tok, [EXAMPLE, unanswerable])
    assert head.allow_no_answer
    # given false, it stays so: the user chose to always answer (was: turned on all the same)
    chosen = bertcore.create_head("qa", cfg, allow_no_answer=False)
    chosen.prepare(tok, [EXAMPLE, unanswerable])
    assert chosen.allow_no_answer is False and chosen.get_config()["allow_no_answer"] is False


def test_learns_and_predicts(encoder, tok, cfg):
    names, cities = ["john", "mary", "smith"], ["paris", "london", "berlin"]
    examples = []
    for n in names:
        for c in cities:
            context = f"{n} lives in {c} . the cat sat on the mat ."
            examples.append({"id": n + c, "question": f"where does {n} live ?", "context": context,
                             "answers": {"text": [c], "answer_start": [context.index(c)]}})
    model = bertcore.TaskModel(encoder, {"qa": bertcore.create_head("qa", cfg)}, tokenizer=tok)
    first, last = train(model, "qa", examples, steps=40)
    assert last < 0.5 * first
    answer = model.predict(("where does mary live ?", "mary lives in london . the cat sat on the mat ."), head="qa")
    assert set(answer) >= {"text", "start", "end", "score"}
    assert (answer["text"], answer["start"], answer["end"]) == ("london", 14, 20)   # an unseen pairing
    assert model.evaluate(examples, head="qa")["f1"] >= 90
