"""The package without Triton: it imports, reports why, and the torch backend works."""
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
