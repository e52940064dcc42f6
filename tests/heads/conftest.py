"""Tiny fixtures for the head tests: a WordPiece vocabulary of a few words plus every
letter (so no word is ever [UNK]), and a 2-layer, hidden-32 BERT config."""
import string

import pytest
import torch

import bertcore
from bertcore import plugins

WORDS = """the a an of in on at is was who where what does did lives live born city capital
cat dog sat mat good bad great terrible movie film fun boring red blue green color
john mary smith paris london berlin france works for acme corp visited and went to
yes no it this that he she they his her . , ? ! ' -""".split()
PIECES = ["##son", "##ton", "##ville", "##ing", "##s"]


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS + PIECES + letters)]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return bertcore.Tokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def cfg(tok):
    return bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def encoder(cfg):
    torch.manual_seed(0)
    return bertcore.BertEncoder(cfg)


@pytest.fixture(autouse=True)
def fresh_registry():
    """Every test sees the installed plugins, whatever the previous test registered."""
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Every heads test runs hidden-32 models: one torch thread (tests/conftest.py)."""
