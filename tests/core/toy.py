"""A tiny model and a tiny classification head for Trainer tests (no plugin needed)."""
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

import bertcore
from bertcore.heads import Head

WORDS = "good great fine nice bad awful poor sad the a movie film plot actor".split()


class ToyHead(Head):
    """Sequence classification on the pooled [CLS]; labels "neg"/"pos"."""

    name = "toy"
    main_metric = "accuracy"
    greater_is_better = True

    def __init__(self, config, labels=("neg", "pos")):
        super().__init__(config)
        self.labels = list(labels)
        self.classifier = nn.Linear(config.hidden_size, len(self.labels))

    def encode(self, example, tokenizer, max_length=512):
        enc = tokenizer(example["text"], max_length=max_length)
        feature = {"input_ids": enc["input_ids"][0], "token_type_ids": enc["token_type_ids"][0]}
        if "label" in example:
            feature["labels"] = self.labels.index(example["label"])
        return [feature]

    def forward(self, output, batch):
        return self.classifier(output.pooler_output)

    def loss(self, logits, batch):
        return F.cross_entropy(logits, batch["labels"])

    def decode(self, example, features, outputs):
        return self.labels[int(outputs[0].argmax())]

    def metrics(self, predictions, examples):
        return {"accuracy": sum(p == e["label"] for p, e in zip(predictions, examples)) / len(examples)}


def tokenizer():
    rng = random.Random(0)
    return bertcore.Tokenizer.train([" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(100)],
                                    vocab_size=60, min_frequency=1)


def examples(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        pool = WORDS[:4] if label == "pos" else WORDS[4:8]
        words = [rng.choice(pool)] + [rng.choice(WORDS[8:]) for _ in range(rng.randint(2, 6))]
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def model(tok, seed=0, dropout=0.1, heads=("toy",)):
    torch.manual_seed(seed)
    cfg = bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                              hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return bertcore.TaskModel(bertcore.BertEncoder(cfg), {h: ToyHead(cfg) for h in heads}, tokenizer=tok)


@bertcore.hookimpl
def register_heads(register):
    """So that a saved toy model loads: `bertcore.plugins.register_plugin(toy)`."""
    register(ToyHead)


def args(output_dir, **kw) -> bertcore.TrainingArgs:
    """TrainingArgs for toy runs: 2 epochs of batches of 8 at lr 3e-3, no progress bar."""
    base = dict(output_dir=str(output_dir), epochs=2, batch_size=8, learning_rate=3e-3, progress=False,
                logging_steps=2)
    return bertcore.TrainingArgs(**{**base, **kw})


def weights(model) -> dict:
    """CPU copies of the state dict: the Trainer moves the model to CUDA where there is one,
    and a snapshot taken before fit() must compare with one taken after."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def nan_after(head, steps: int) -> None:
    """Make `head`'s training loss NaN from its (steps + 1)-th training call on."""
    calls = {"n": 0}
    real_loss = head.loss

    def loss(logits, batch):
        calls["n"] += head.training
        value = real_loss(logits, batch)
        return value * float("nan") if calls["n"] > steps else value

    head.loss = loss
