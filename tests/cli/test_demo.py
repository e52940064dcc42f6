"""`bertcore demo`: its corpora (bertcore.demo_data) and a quick run that must learn."""
import json

import pytest

from bertcore import demo_data
from bertcore.cli import main
from bertcore.demo import DemoSize, finetune_steps, summarize

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


def test_peoples_daily_bio():
    tokens, tags = demo_data.words_to_bio([("江", "nr"), ("泽民", "nr"), ("在", "p"), ("北京", "ns"),
                                           ("中共中央", "nt")])
    assert tokens == list("江泽民在北京中共中央")
    assert tags == ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-ORG", "I-ORG"]
    sentences = demo_data.paragraph_ner([("你好", "v"), ("。", "w"), ("北京", "ns"), ("很", "d"), ("大", "a")],
                                        max_chars=3)
    assert [s["tokens"] for s in sentences] == [list("你好。"), list("北京很"), ["大"]]


def test_split_sentences():
    assert demo_data.split_sentences("很好。不错！真的吗？ab", max_chars=3) == ["很好。", "不错！", "真的吗", "？", "ab"]


def test_reviews_are_distinct_and_labelled_once():
    reviews = demo_data.sentiment_reviews(seed=0)
    texts = [r["text"] for r in reviews]
    assert len(texts) == len(set(texts)) > 17000      # the files repeat about half their lines
    assert {r["label"] for r in reviews} == {"pos", "neg"}
    assert reviews == demo_data.sentiment_reviews(seed=0)


def test_finetune_steps_and_summary():
    size = DemoSize(finetune_epochs=4, finetune_batch=32, finetune_min_steps=30, finetune_max_steps=120)
    assert [finetune_steps(size, n) for n in (100, 300, 1000, 3000)] == [30, 38, 120, 120]
    runs = [{"size": 100, "seed": s, "init": i, "steps": 30, "f1": v}
            for s, (p, r) in enumerate([(0.5, 0.1), (0.7, 0.2)]) for i, v in (("pretrained", p), ("random", r))]
    row = summarize(runs, "f1")[100]
    assert row["pretrained"]["mean"] == pytest.approx(0.6) and row["random"]["mean"] == pytest.approx(0.15)
    assert row["lift"]["values"] == pytest.approx([0.4, 0.5])


@pytest.mark.slow
def test_demo_quick_learns(tmp_path, capsys):
    """The CI-sized run must learn, not just run: every sentiment run beats the majority
    class by 0.03 and every NER run finds entities. Its 30 pretraining steps do not make
    the pretrained encoder better than the random one (README, "The demo")."""
    assert main(["demo", "--quick", "--output", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| sentiment (accuracy) |" in out and "held-out MLM accuracy" in out
    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).is_file(), name
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    sentiment, ner = results["sentiment"]["runs"], results["ner"]["runs"]
    assert {r["init"] for r in sentiment} == {r["init"] for r in ner} == {"pretrained", "random"}
    majority = results["sentiment"]["majority_class"]
    assert all(r["accuracy"] > majority + 0.03 for r in sentiment), (majority, sentiment)
    assert all(0.0 < r["f1"] <= 1.0 for r in ner), ner
    assert 0.0 < results["pretraining"]["mlm_accuracy"] <= 1.0
