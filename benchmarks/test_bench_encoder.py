"""pytest-benchmark entry for the encoder: `pytest benchmarks --benchmark-only`.

MiniLM shape (real MiniLM weights when installed), batch 16; bertcore against
transformers.BertModel on the same weights and batch. bertcore.bench.encoder interleaves
the providers and prints ratios; here each provider is timed on its own."""
import io
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


def test_bucket_overhead_of_the_benchmark_batches():
    """What padding to buckets costs on the batches the benchmark times (no timing)."""
    rows = bench_encoder.overhead_table(batch_sizes=(16, 32, 128), shapes=["minilm"], file=io.StringIO())
    assert len(rows) == len(bench_encoder.BATCHES) * 3
    for r in rows:
        assert r["bucket_tokens"] >= r["real_tokens"]
        assert 0 <= r["extra_flops"] < 0.13 and 0 <= r["extra_tokens"] <= 0.125
        if r["batch"] == "equal-128":
            assert r["extra_flops"] == 0


def test_gpu_providers_refuse_the_cpu():
    with pytest.raises(ValueError, match="need a GPU"):
        bench_encoder.run(device="cpu", providers=["bertcore-graphs"], write=False, verbose=False)
