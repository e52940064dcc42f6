"""pytest-benchmark entry for the encoder: `pytest benchmarks --benchmark-only`.

MiniLM shape (real MiniLM weights when installed), batch 16; bertcore against
transformers.BertModel on the same weights and batch. bertcore.bench.encoder interleaves
the providers and prints ratios; here each provider is timed on its own."""
import tempfile
from pathlib import Path

import pytest
import torch

import bertcore.bench.encoder as bench_encoder

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def models():
    with tempfile.TemporaryDirectory() as tmp:
        m = bench_encoder.build_models("minilm", bench_encoder.PROVIDERS, DEVICE, Path(tmp))
        yield m


@pytest.mark.parametrize("mode", bench_encoder.MODES)
@pytest.mark.parametrize("kind", ["equal-128", "mixed-16-128"])
@pytest.mark.parametrize("provider", bench_encoder.PROVIDERS)
def test_encoder(benchmark, models, provider, kind, mode):
    model = models[provider]
    model.train(mode == "train")
    batch = bench_encoder.make_batch(kind, 16, model.config.vocab_size, DEVICE)
    opt = bench_encoder.make_optimizer(model, DEVICE) if mode == "train" else None
    call = bench_encoder.make_call(provider, model, batch, mode, opt)
    benchmark.extra_info.update(real_tokens=sum(batch["lengths"]))
    benchmark.pedantic(call, rounds=3 if mode == "train" else 5, warmup_rounds=1)
