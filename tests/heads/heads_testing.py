"""Helpers shared by the head tests (a uniquely named module: every test folder has a conftest)."""
import torch

HEADS = {  # name -> (create_head kwargs, one predict input)
    "classification": ({"labels": ["neg", "pos"]}, "good movie"),
    "ner": ({"labels": ["O", "B-PER", "I-PER"]}, ("john", "johnson", "lives")),   # a tuple of words
    "qa": ({"stride": 8}, ("who lives in paris ?", "john lives in paris . " * 10)),
    "nsp": ({}, ("the cat sat", "on the mat")),
    "mlm": ({}, "the [MASK] sat on the mat"),
}


def train(model, head, examples, steps=40, lr=3e-3, batch_size=8):
    """A few Adam steps on `examples`; returns (first loss, last loss)."""
    torch.manual_seed(0)
    model.prepare(head, train_examples=examples)
    features = model.encode(examples, head, max_length=64).features
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        start = (step * batch_size) % len(features)
        batch = model.collate((features + features)[start:start + batch_size], head)
        loss = model.loss(batch, head=head)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    return first, last
