"""`bertcore demo`: its corpora (bertcore.demo_data) and a quick run that must learn."""
import dataclasses
import json
import sys

import pytest
import torch

from bertcore import BertConfig, BertEncoder, Tokenizer, demo_data
from bertcore.cli import main
from bertcore.demo import (ENCODER_RATES, QUICK, Demo, DemoSize, FinetuneJob, best_rate_runs, run_jobs,
                           review_spans, summarize, text_of)

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


def test_whole_word_corpus_is_the_same_text_in_words():
    """DemoSize(whole_word=True) pretrains on People's Daily's words (masked whole); the
    text, and so the vocabulary, stays the same."""
    words = [("江", "nr"), ("泽民", "nr"), ("在", "p"), ("北京", "ns"), ("。", "w"), ("很", "d"), ("大", "a")]
    assert demo_data.segmented_sentences(words) == [["江", "泽民", "在", "北京", "。"], ["很", "大"]]
    size = dataclasses.replace(QUICK, corpus_reviews=50, corpus_paragraphs=300)
    plain = Demo(size, None, seed=42, progress=False).read()["corpus"]
    whole = Demo(dataclasses.replace(size, whole_word=True), None, seed=42, progress=False).read()["corpus"]
    assert ["".join(map(text_of, d)) for d in whole] == ["".join(d) for d in plain]
    assert sum(isinstance(s, list) for d in whole for s in d) > 300


def test_shuffled_corpus_keeps_each_documents_characters_not_their_order():
    """DemoSize(shuffle_corpus=True), the control that pretrains on no language order:
    each document keeps its characters and sentence lengths; their order is gone."""
    size = dataclasses.replace(QUICK, corpus_reviews=50, corpus_paragraphs=300)
    plain = Demo(size, None, seed=42, progress=False).read()["corpus"]
    shuffled = Demo(dataclasses.replace(size, shuffle_corpus=True), None, seed=42, progress=False).read()["corpus"]
    assert [[len(s) for s in d] for d in shuffled] == [[len(s) for s in d] for d in plain]
    assert all(sorted("".join(a)) == sorted("".join(b)) for a, b in zip(shuffled, plain))
    moved = sum(x != y for a, b in zip(shuffled, plain) for x, y in zip("".join(a), "".join(b)))
    assert moved > 0.5 * sum(len("".join(d)) for d in plain)


def test_reviews_are_distinct_and_labelled_once():
    reviews = demo_data.sentiment_reviews(seed=0)
    texts = [r["text"] for r in reviews]
    assert len(texts) == len(set(texts)) > 17000      # the files repeat about half their lines
    assert {r["label"] for r in reviews} == {"pos", "neg"}
    assert reviews == demo_data.sentiment_reviews(seed=0)


def test_each_encoder_keeps_the_rate_that_scores_best_on_validation():
    """BERT's dev-set choice: per (size, encoder), the rate with the best validation mean
    over the seeds, whatever the test sets say; the random encoder may pick another rate
    than the pretrained one, so it is never measured at a rate where it fails."""
    scores = {  # (init, rate): [(test f1, validation f1) per seed]
        ("pretrained", 2e-3): [(0.30, 0.35), (0.34, 0.33)], ("pretrained", 4e-3): [(0.40, 0.20), (0.42, 0.22)],
        ("random", 2e-3): [(0.10, 0.05), (0.12, 0.07)], ("random", 4e-3): [(0.25, 0.21), (0.21, 0.19)]}
    runs = [{"size": 100, "seed": seed, "init": init, "rate": rate, "steps": 5, "f1": test, "validation": validation}
            for (init, rate), values in scores.items() for seed, (test, validation) in enumerate(values)]
    row = summarize(best_rate_runs(runs), "f1")[100]
    assert (row["pretrained"]["rate"], row["random"]["rate"]) == (2e-3, 4e-3)
    assert row["pretrained"]["values"] == [0.30, 0.34] and row["random"]["values"] == [0.25, 0.21]
    assert row["lift"]["values"] == pytest.approx([0.05, 0.13])


def test_the_first_seed_chooses_the_rate_the_other_seeds_run_at(tmp_path, monkeypatch):
    """Of several rates, the first seed tries each (scored on validation) and the others run
    only at the rate it chose for their size and encoder, unscored: 16 NER runs here where
    every seed at every rate made 24, and the same rows as the three seeds' means choose."""
    import bertcore.demo as demo
    tok = Tokenizer.from_pretrained(_vocab(tmp_path))
    size = DemoSize(sizes=(2, 4), seeds=3, sentiment_rates=(3e-3,), ner_rates=(2e-3, 4e-3))
    pool = [{"text": str(i), "label": "pos"} for i in range(10)]
    jobs = Demo(size, tmp_path, seed=7, progress=False).finetune_jobs(
        BertEncoder(_tiny_config(tok)), tok, {"sentiment": (pool, pool[-3:], pool[-5:-3]),
                                              "ner": (pool, pool[-2:], pool[-4:-2])}, local_attention=None)
    best = {(2, "pretrained"): 2e-3, (2, "random"): 4e-3, (4, "pretrained"): 4e-3, (4, "random"): 2e-3}
    ran = []

    def finetune(job):   # validation (and test) prefer `best`; each seed a little apart
        ran.append(job)
        score = 0.5 if job.learning_rate == best[job.size, job.init] else 0.3
        return score + job.seed / 100, None if job.validation is None else score, 0.0

    monkeypatch.setattr(demo, "finetune", finetune)
    run = Demo(size, tmp_path, seed=7, progress=False, workers=1)
    run.run_finetuning(jobs)
    ner = [job for job in ran if job.task == "ner"]
    assert len(ner) == 16 and len([job for job in ran if job.task == "sentiment"]) == 12
    assert {(j.size, j.init, j.learning_rate) for j in ner if j.seed == 0} == \
           {(n, init, rate) for n in (2, 4) for init in ("pretrained", "random") for rate in (2e-3, 4e-3)}
    assert all(j.validation is not None for j in ner if j.seed == 0)
    assert all(j.learning_rate == best[j.size, j.init] and j.validation is None for j in ner if j.seed > 0)
    assert all(j.validation is None for j in ran if j.task == "sentiment")
    summary = summarize(best_rate_runs(run.results["ner"]["runs"]), "f1")
    for n in (2, 4):
        for init in ("pretrained", "random"):
            assert summary[n][init]["rate"] == best[n, init]
            assert summary[n][init]["values"] == pytest.approx([0.5, 0.51, 0.52])


def test_summary_pairs_each_seed_with_its_twin():
    runs = [{"size": 100, "seed": s, "init": i, "steps": 30, "f1": v}
            for s, (p, r) in enumerate([(0.5, 0.1), (0.7, 0.2)]) for i, v in (("pretrained", p), ("random", r))]
    row = summarize(runs, "f1")[100]
    assert row["pretrained"]["mean"] == pytest.approx(0.6) and row["random"]["mean"] == pytest.approx(0.15)
    assert row["lift"]["values"] == pytest.approx([0.4, 0.5])


def test_finetune_jobs_give_both_encoders_the_same_run(tmp_path):
    """The lift is pretraining's alone only if each pretrained run has a random twin with
    the same data, budget, head seed and batch order, differing only in its weights."""
    tok = Tokenizer.from_pretrained(_vocab(tmp_path))
    cfg = _tiny_config(tok)
    size = DemoSize(sizes=(2, 4), seeds=2, sentiment_rates=(3e-3,), ner_rates=(2e-3, 4e-3))
    pool = [{"text": str(i), "label": "pos"} for i in range(10)]
    jobs = Demo(size, tmp_path, seed=7, progress=False).finetune_jobs(
        BertEncoder(cfg), tok, {"sentiment": (pool, pool[-3:], pool[-5:-3]), "ner": (pool, pool[-2:], pool[-4:-2])},
        local_attention=(-1, 1))
    assert len(jobs) == 2 * 2 * 2 * (1 + 2)              # sizes x seeds x encoders x rates
    assert len({job.output_dir for job in jobs}) == len(jobs)
    twins = {}
    for job in jobs:
        twins.setdefault((job.task, job.size, job.seed, job.learning_rate), {})[job.init] = job
    assert {k[3] for k in twins if k[0] == "ner"} == {2e-3, 4e-3}
    for (task, n, seed, rate), pair in twins.items():
        pretrained, random = pair["pretrained"], pair["random"]
        assert pretrained.weights is not None and random.weights is None
        assert pretrained.train == random.train and len(random.train) == n
        assert set(map(id, random.train)) <= set(map(id, pool))
        assert (pretrained.init_seed, pretrained.train_seed, pretrained.steps, pretrained.learning_rate) == \
               (random.init_seed, random.train_seed, random.steps, random.learning_rate)
        assert random.local_attention == (-1, 1)
        # validation examples are scored only where there are rates to choose from
        assert pretrained.validation == random.validation == (None if task == "sentiment" else pool[-4:-2])
    assert len({j.train_seed for j in jobs}) == 2     # seeds differ between seeds, not between tasks
    # each seed labels its own examples, nested across sizes, the same for every rate
    draws = {(j.task, j.seed, j.size, j.learning_rate): [ex["text"] for ex in j.train] for j in jobs}
    for task, seed, n, rate in draws:
        assert draws[task, seed, n, rate] == draws[task, seed, 4, rate][:n]
    assert draws["sentiment", 0, 4, 3e-3] != draws["sentiment", 1, 4, 3e-3]
    again = Demo(size, tmp_path, seed=7, progress=False).finetune_jobs(
        BertEncoder(cfg), tok, {"sentiment": (pool, pool[-3:], pool[-5:-3])}, local_attention=(-1, 1))
    assert [j.train for j in again] == [j.train for j in jobs if j.task == "sentiment"]


def test_a_pool_smaller_than_the_largest_size_is_refused(tmp_path):
    tok = Tokenizer.from_pretrained(_vocab(tmp_path))
    cfg = _tiny_config(tok)
    pool = [{"text": str(i), "label": "pos"} for i in range(3)]
    with pytest.raises(ValueError, match="sentiment: 3 labelled examples to draw from, fewer than the largest size 4"):
        Demo(DemoSize(sizes=(2, 4), seeds=1), tmp_path, seed=7, progress=False).finetune_jobs(
            BertEncoder(cfg), tok, {"sentiment": (pool, pool, None)}, local_attention=None)


def test_fine_tuning_knobs_reach_every_job(tmp_path):
    """The ablations' fine-tuning fields (docs/demo/README.md's rows) change what each job runs."""
    tok = Tokenizer.from_pretrained(_vocab(tmp_path))
    cfg = _tiny_config(tok, hidden_dropout_prob=0.0)
    pool = [{"text": str(i), "label": "pos"} for i in range(10)]
    for pooling, dropout in (("mean", 0.1), ("cls", 0.0)):
        size = DemoSize(sizes=(2,), seeds=1, sentiment_pooling=pooling, finetune_dropout=dropout)
        jobs = Demo(size, tmp_path, seed=7, progress=False).finetune_jobs(
            BertEncoder(cfg), tok, {"sentiment": (pool, pool[-3:], None)}, local_attention=(-1, 1))
        assert {job.options["pooling"] for job in jobs} == {pooling}
        assert {job.config.hidden_dropout_prob for job in jobs} == {dropout}
    # finetune_min_epochs: at least that many passes over a size's examples, never fewer steps
    pool = [{"text": str(i), "label": "pos"} for i in range(100)]
    size = DemoSize(sizes=(10, 100), seeds=1, finetune_steps=4, finetune_batch=16, finetune_min_epochs=2.0)
    jobs = Demo(size, tmp_path, seed=7, progress=False).finetune_jobs(
        BertEncoder(cfg), tok, {"sentiment": (pool, pool[-3:], None)}, local_attention=(-1, 1))
    assert {job.size: job.steps for job in jobs} == {10: 4, 100: 13}    # ceil(2 * 100 / 16)


@pytest.mark.slow
def test_validation_examples_stay_out_of_training_and_test():
    """demo_ablations.py chooses recipes on validation examples, which fine-tuning never
    draws: they are not in the pools. Reviews are distinct texts, so none is also a training
    or test review. (NER sentences repeat in the corpus, "。" for one: checked by object.)"""
    data = Demo(QUICK, None, seed=42, progress=False).read()
    for pool, validation in ((data["review_pool"], data["review_validation"]),
                             (data["ner_pool"], data["ner_validation"])):
        assert validation and len(pool) >= max(DemoSize.sizes)
        assert not set(map(id, validation)) & set(map(id, pool))
    seen = {ex["text"] for ex in data["review_pool"] + data["review_test"]}
    assert not {ex["text"] for ex in data["review_validation"]} & seen


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
    # the contrastive phase ran after MLM + NSP, continuing its step count
    assert results["pretraining"]["history"][-1]["step"] == QUICK.pretrain_steps + QUICK.contrastive_steps


def fake_results() -> dict:
    """What Demo.run returns, for one size and seed, without running anything."""
    def runs(metric):
        return [{"size": 100, "seed": 0, "init": init, "rate": 1e-3, "steps": 2, metric: value}
                for init, value in (("pretrained", 0.6), ("random", 0.5))]
    return {"size": dataclasses.asdict(QUICK), "seed": 42,
            "sentiment": {"metric": "accuracy", "majority_class": 0.5,
                          "summary": summarize(runs("accuracy"), "accuracy")},
            "ner": {"metric": "f1", "summary": summarize(runs("f1"), "f1")},
            "pretraining": {"mlm_accuracy": 0.1, "nsp_accuracy": 0.5, "seconds": 1.0,
                            "history": [{"step": 1, "mlm/accuracy": 0.1, "nsp/accuracy": 0.5}]}}


def test_pretraining_threads_do_not_follow_the_machines_load(tmp_path, monkeypatch, capsys):
    """The thread count changes torch's CPU LayerNorm gradient sums, so pretraining ran
    differently on a busy machine (free_cores() = 1); the fine-tuning workers, one thread
    each, may follow the load. Without matplotlib no results.png is claimed."""
    import builtins

    import bertcore.demo as demo
    seen = {}

    def run(self, encoder_dir=None, tokenizer_dir=None):
        seen["threads"], seen["workers"] = torch.get_num_threads(), self.workers
        return fake_results()

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(demo.Demo, "run", run)
    monkeypatch.setattr(demo, "free_cores", lambda: 1)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["demo", "--quick", "--output", str(tmp_path), "--no-progress"]) == 0
    assert seen == {"threads": demo.PRETRAIN_THREADS, "workers": 1}      # was: 1 thread, load-dependent
    out = capsys.readouterr().out
    assert "(results.md, results.json)" in out and not (tmp_path / "results.png").exists()
    assert f"pretraining on 2 torch thread(s) ({torch.backends.cpu.get_cpu_capability()} kernels), fine-tuning in 1 " \
           "worker process(es)" in out
    assert main(["demo", "--quick", "--output", str(tmp_path), "--no-progress", "--threads", "3"]) == 0
    assert seen == {"threads": 3, "workers": 3}


def test_serial_runs_take_one_thread_as_a_worker_does(monkeypatch):
    """One worker (a busy machine) runs the jobs here: on one thread, as each worker process
    has, not on the pretraining's two (the thread count changes LayerNorm's gradient sums)."""
    import bertcore.demo as demo
    monkeypatch.setattr(demo, "finetune", lambda job: torch.get_num_threads())
    torch.set_num_threads(2)
    assert list(run_jobs([None, None], workers=1)) == [1, 1]             # was: [2, 2]
    assert torch.get_num_threads() == 2


def test_no_stale_results_png_without_matplotlib(tmp_path, monkeypatch):
    import bertcore.demo as demo
    (tmp_path / "results.png").write_bytes(b"an earlier run's plot")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    demo.write_results({**fake_results(), "wall_time_s": 1.0, "threads": 1}, tmp_path)
    assert not (tmp_path / "results.png").exists()                      # was: kept, and listed as written


def test_results_read_back_from_json_plot_their_sizes_as_numbers(tmp_path, monkeypatch):
    """results.json keys its sizes as strings; a plot redrawn from it put "100" and "300"
    on a categorical axis, stacked at the left, instead of at 100 and 300 on the log axis."""
    import matplotlib.axes
    import bertcore.demo as demo
    drawn = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, *a, **kw: drawn.append(list(x)) or real(self, x, *a, **kw))
    demo.plot_results(json.loads(json.dumps(fake_results())), tmp_path / "results.png")
    assert drawn and all(x == [100] for x in drawn), drawn                 # was: ["100"]


@pytest.mark.slow
def test_worker_processes_repeat_the_serial_runs(tmp_path):
    """The full demo fine-tunes in worker processes (`run_jobs`), the quick test in one:
    each job seeds itself, so both give the same numbers, to the last bit."""
    tok = Tokenizer.from_pretrained(_vocab(tmp_path))
    cfg = _tiny_config(tok, initializer_range=0.08)
    texts = [("很好", "pos"), ("太好", "pos"), ("好电影", "pos"), ("好书", "pos"),
             ("不好", "neg"), ("很坏", "neg"), ("坏电影", "neg"), ("太坏", "neg")]
    data = [{"text": t, "label": label} for t, label in texts]
    jobs = [FinetuneJob(task="sentiment", title="sentiment", size=8, seed=seed, init="random", metric="loss",
                        config=cfg, weights=None, local_attention=(-1, 1), init_seed=seed, tokenizer=tok,
                        head_type="classification", options={"labels": ["neg", "pos"], "pooling": "mean"},
                        train=data, test=data, learning_rate=3e-3, steps=12, batch_size=4, max_length=16,
                        train_seed=seed, output_dir=str(tmp_path / f"serial-{seed}")) for seed in range(3)]
    serial = [loss for loss, _, _ in run_jobs(jobs, 1)]
    parallel = [loss for loss, _, _ in run_jobs([dataclasses.replace(j, output_dir=j.output_dir.replace("serial",
                                                                                                        "worker"))
                                                 for j in jobs], 2)]
    assert serial == parallel
    assert len(set(serial)) == 3                      # the seeds differ, so a mix-up would show


@pytest.mark.slow
def test_demo_fine_tunes_a_checkpoint_at_rates_for_it(tmp_path, capsys):
    """--encoder skips pretraining and fine-tunes at ENCODER_RATES, not at the rates tuned
    for the demo's small encoder (~100x BERT's for bert-base); --rates chooses."""
    checkpoint = tmp_path / "encoder"
    checkpoint.mkdir()
    tok = Tokenizer.from_pretrained(_vocab(checkpoint))
    BertEncoder(_tiny_config(tok, max_position_embeddings=64)).save_pretrained(checkpoint)
    for extra, rates in (([], ENCODER_RATES), (["--rates", "0.01"], (0.01,))):
        out = tmp_path / f"out-{len(extra)}"
        assert main(["demo", "--quick", "--encoder", str(checkpoint), "--steps-scale", "0.1", "--output", str(out),
                     "--no-progress", "--threads", "1", *extra]) == 0
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        assert results["encoder"] == str(checkpoint) and "pretraining" not in results
        for task in ("sentiment", "ner"):
            assert sorted({r["rate"] for r in results[task]["runs"]}) == sorted(rates)
    capsys.readouterr()
    assert main(["demo", "--quick", "--rates", "3", "--output", str(tmp_path / "bad")]) == 2
    assert "--rates 3.0: learning rates are between 0 and 1" in capsys.readouterr().err


def _tiny_config(tok, **overrides) -> BertConfig:
    return BertConfig(**{"vocab_size": tok.vocab_size, "hidden_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16,
                         **overrides})


def _vocab(folder):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"好坏电影书很不太"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return folder / "vocab.txt"


def test_review_spans_are_two_adjacent_pieces_of_one_review():
    """A contrastive pair is one review cut in its middle third: the text before the cut
    and the text after, each at most max_chars; the same seed cuts the same way."""
    reviews = [["很好用，", "就是有点贵。"], ["差"], ["物流很快。", "包装也不错，", "推荐购买！"]]
    spans = review_spans(reviews, 6, seed=1)
    assert spans == review_spans(reviews, 6, seed=1) and len(spans) == 2     # "差" is too short to cut
    for pair, review in zip(spans, (reviews[0], reviews[2])):
        text = "".join(review)
        assert 0 < len(pair["text"]) <= 6 and 0 < len(pair["text_pair"]) <= 6
        cut = text.index(pair["text"] + pair["text_pair"]) + len(pair["text"])
        assert len(text) // 3 <= cut <= 2 * len(text) // 3
