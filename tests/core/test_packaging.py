"""`pip install <checkout>`: the wheel carries the core, the kernels and the benchmarks,
asks for nothing test-only or GPU-only at run time, and works from outside the checkout."""
import email
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(the wheel, what pip and the build backend printed)."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(ROOT)], check=True, capture_output=True, text=True)
    return next(out.glob("bertcore-*.whl")), done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(build):
    return build[0]


def test_the_build_uses_nothing_deprecated(build):
    """setuptools warned on every install that `license = { text = ... }` stops building
    after 2027-02-18; each distribution of the checkout now gives an SPDX string (PEP 639)."""
    assert "deprecated" not in build[1].lower(), build[1]
    for pyproject in [ROOT / "pyproject.toml", ROOT / "kernels" / "pyproject.toml",
                      *sorted(ROOT.glob("heads/*/pyproject.toml"))]:
        project = tomllib.loads(pyproject.read_text())
        assert isinstance(project["project"]["license"], str), pyproject
        assert project["build-system"]["requires"] == ["setuptools>=77"], pyproject   # the first with PEP 639


def test_wheel_contents_and_runtime_requirements(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = email.message_from_bytes(z.read(next(n for n in names if n.endswith("METADATA"))))
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for module in ("bertcore/__main__.py", "bertcore/mlm.py", "bertcore/bench/encoder.py",
                   "bertcore_kernels/attention.py", "bertcore_kernels/layer_norm.py"):
        assert module in names, module
    runtime = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    names_only = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
                  for r in runtime}
    assert names_only == {"torch", "safetensors", "pluggy", "packaging", "tokenizers", "tqdm", "numpy"}, runtime
    assert not any("==" in r.split(";")[0] for r in runtime)            # ranges only; pins live in the Makefile
    gpu = [r for r in metadata.get_all("Requires-Dist") if 'extra == "gpu"' in r]
    assert gpu and gpu[0].startswith("triton")
    assert "mlm = bertcore.mlm" in entry_points and "bertcore = bertcore.cli:main" in entry_points


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    script = ("import bertcore, bertcore_kernels, torch; "
              "print(bertcore.__file__); print(bertcore_kernels.__file__); "
              "cfg = bertcore.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, "
              "intermediate_size=64); "
              "print(tuple(bertcore.BertEncoder(cfg)(torch.tensor([[2, 7, 3]])).last_hidden_state.shape))")
    done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    core, kernels, shape = done.stdout.splitlines()
    assert core.startswith(str(target)) and kernels.startswith(str(target)) and shape == "(1, 3, 32)"
    version = subprocess.run([sys.executable, "-m", "bertcore", "--version"], cwd=elsewhere, env=env,
                             capture_output=True, text=True)
    assert version.stdout.strip() == "bertcore 0.1.0"
    bench = subprocess.run([sys.executable, "-m", "bertcore", "bench", "--help"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert bench.returncode == 0 and "--output" in bench.stdout
