"""Backend dispatch: the package without Triton (it imports, reports why, and the torch
backend works), and BERTCORE_KERNELS read once, at import."""
import os
import subprocess
import sys

import bertcore_kernels as K

BLOCK_TRITON = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton blocked for this test")
sys.meta_path.insert(0, Block())
import torch
import bertcore_kernels as K
info = K.backends()
assert info["triton"].startswith("unavailable") and "pip install triton" in info["triton"], info
x = torch.randn(6, 2, 32)
cu = torch.tensor([0, 2, 6], dtype=torch.int32)
K.attention(x, x, x, cu, 4)
K.layer_norm(x, torch.ones(32), torch.zeros(32), 1e-5, residual=x)
try:
    K.attention(x, x, x, cu, 4, backend="triton")
except RuntimeError as e:
    assert "triton" in str(e), e
else:
    raise AssertionError("backend='triton' without triton did not raise")
print("ok")
"""


def test_imports_and_runs_torch_backend_without_triton():
    done = subprocess.run([sys.executable, "-c", BLOCK_TRITON], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


def test_backends_lists_both_with_reasons():
    info = K.backends()
    assert set(info) == {"torch", "triton"}
    assert all(v.startswith(("available", "unavailable")) for v in info.values())


ENV_READ_ONCE = """
import os
import torch
import bertcore_kernels as K
from bertcore_kernels.dispatch import resolve
x = torch.zeros(1)
print(resolve("auto", x))
os.environ["BERTCORE_KERNELS"] = "bogus"          # too late: read once, at import
print(resolve("auto", x))
with K.use_backend("auto"):
    print(resolve("auto", x))
"""


def run_with_env(code, value):
    env = {k: v for k, v in os.environ.items() if k != "BERTCORE_KERNELS"}
    env.update(BERTCORE_KERNELS=value, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_is_read_once_at_import():
    done = run_with_env(ENV_READ_ONCE, "Triton")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["triton", "triton", "torch"]  # use_backend("auto"): the device rule


def test_a_bad_environment_value_names_the_variable():
    done = run_with_env("import torch, bertcore_kernels as K\n"
                        "K.layer_norm(torch.ones(2, 4), torch.ones(4), torch.zeros(4), 1e-5)", "cuda")
    assert done.returncode != 0 and "BERTCORE_KERNELS='cuda'" in done.stderr
