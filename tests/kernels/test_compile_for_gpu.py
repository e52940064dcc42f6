"""The kernels (attention, LayerNorm, bias-GELU) compile for a real GPU target even where
only the interpreter runs them (compile_for_gpu.py, in a process without TRITON_INTERPRET)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).with_name("compile_for_gpu.py")


def _run_script(*args) -> str:
    """compile_for_gpu.py's output, run with `args` in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _ptxas_available():
    try:
        import triton
    except ImportError:
        return False
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel tests compile them for real")
@pytest.mark.skipif(not _ptxas_available(), reason="needs triton with its bundled ptxas")
def test_kernels_compile_for_sm90():
    assert "compiled" in _run_script()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels are timed instead")
@pytest.mark.skipif(not _ptxas_available(), reason="needs triton with its bundled ptxas")
def test_ptx_counts_show_what_dropout_adds():
    out = _run_script("--ptx-counts")
    counts = re.findall(r"(fwd|bwd) (\d+) / (\d+)", out)
    assert len(counts) == 6                  # attention short and long, LayerNorm; fwd and bwd each
    assert all(int(without) < int(with_dropout) for _, without, with_dropout in counts)
    # reading keep-bits is lighter than drawing them: a prebuilt forward, a backward
    bits = re.findall(r"/ (\d+) with dropout, mask saved \d+, prebuilt (\d+); bwd \d+ / (\d+), from bits (\d+)",
                      out)
    assert len(bits) == 2
    assert all(int(redraw) > int(read) for row in bits for redraw, read in (row[:2], row[2:]))
    # the forward draws each key's decision in the thread whose MMA tile holds that key
    # (attention_philox): dropout moves nothing between threads
    moves = re.findall(r"layout conversions: (\d+) in the forward, (\d+) with dropout", out)
    assert len(moves) == 2 and all(without == with_dropout for without, with_dropout in moves), out


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels are timed instead")
@pytest.mark.skipif(not _ptxas_available(), reason="needs triton with its bundled ptxas")
def test_register_counts_and_no_spill_in_the_forward_kernels():
    out = _run_script("--registers")
    kernels = re.findall(r"(\w+(?: short| long)?) (\d+) registers, (\d+) B spilled", out)
    assert len(kernels) == 3 * 6 + 1 + 2     # attention per mask source, the keep-bits kernel, LayerNorm
    assert all(0 < int(regs) <= 255 for _, regs, _ in kernels)
    # a forward that spills pays local-memory traffic on every tile (the one-pass backward
    # does spill at its H200-tuned tiles: the next GPU run times tiles that do not)
    assert all(spilled == "0" for name, _, spilled in kernels if not name.startswith("bwd ")), out
