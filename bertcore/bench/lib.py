"""Shared benchmark machinery: timers, peak memory, the machine's own peaks, dtype
names, CSV/PNG/table, and where results go.

Timing
  GPU: `triton.testing.do_bench` (warm-up excluded, L2 flushed), quantiles 0.5/0.2/0.8.
  CPU: `time.perf_counter` around each call after `warmup` untimed calls, at least
  `rep` calls and about `min_time` seconds, with `torch.set_num_threads` fixed and
  written into every row. Median and 20th/80th percentiles in milliseconds.

CUDA graphs
  `replayed(fn)` captures `fn` once; the benchmarks' `--graphs` times those replays:
  the GPU's time without the host's launch cost (which bounds small cases).

Peak memory
  GPU: `torch.cuda.max_memory_allocated` above what was allocated before the call
  (`cuda_memory` also gives the reserved growth, after emptying the cache).
  CPU: tracemalloc does not see torch's allocator and RSS never shrinks, so one
  extra, untimed call runs under `torch.profiler` with `profile_memory=True`; the
  allocation/free events of PyTorch's CPU allocator are summed in time order and the
  highest running total is the peak: bytes of tensors (activations, saved tensors,
  gradients, temporaries) allocated by the call on top of what was live at its start.

Machine peaks
  `machine_peaks()` measures, in the same process, a large fp32 matrix product
  (FLOP/s) and a large tensor copy (bytes read + written per second); results are
  reported as a fraction of those.

Results
  `results_dir(device, root)`: `<root>/<device slug>/`, root by default
  `./bench-results` under the current folder (never the installed package).
"""
from __future__ import annotations

import csv
import io
import math
import os
import platform
import re
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..files import atomic_write, write_text

DEFAULT_ROOT = Path("bench-results")   # relative: under the current folder
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ---- environment -------------------------------------------------------------------

def set_threads(threads: int | None = None) -> int:
    """Fix torch's intra-op thread count (default: all cores) and return it."""
    threads = threads or _env_threads() or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def thread_count(text: str) -> int:
    """argparse type of every benchmark's --threads, and of their sizes and counts: a whole
    number >= 1 (0 threads silently meant all cores, -1 ended in torch's traceback, --rounds -1
    in "no median for empty data"). Here, not in bertcore.cli: cli imports bench."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


positive_int = thread_count   # the same rule for sizes, counts and rounds


def dropout_rate(text: str) -> float:
    """argparse type of a benchmark's --dropout: a probability in [0, 1) (1.5 ended in the kernel's traceback)."""
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be in [0, 1)")
    return value


def length_class(text: str) -> str:
    """argparse type of --lengths: equal-L or mixed-LO-HI with 1 <= LO <= HI ('foo-12' was an IndexError)."""
    import argparse
    import re
    found = re.fullmatch(r"equal-(\d+)|mixed-(\d+)-(\d+)", text)
    numbers = [int(n) for n in found.groups() if n is not None] if found else []
    if not numbers or min(numbers) < 1 or numbers != sorted(numbers):
        raise argparse.ArgumentTypeError(f"{text!r}: expected equal-L or mixed-LO-HI with 1 <= LO <= HI "
                                         "(e.g. equal-128, mixed-16-512)")
    return text


def _env_threads() -> int | None:
    """BENCH_THREADS, None where unset or empty (`export BENCH_THREADS=`); else a whole number
    >= 1: int() of it named neither the variable nor what it must be, and torch refused 0 or less."""
    text = os.environ.get("BENCH_THREADS", "").strip()
    if not text:
        return None
    if not (text.isdigit() and int(text) >= 1):
        raise ValueError(f"BENCH_THREADS={text!r}: must be a whole number >= 1 (threads for torch on the CPU); "
                         "fix or unset it, or pass --threads")
    cores = os.cpu_count() or 1
    if int(text) > cores:   # as --threads: torch takes any count, and OpenMP then oversubscribes
        raise ValueError(f"BENCH_THREADS={text}, but this machine has {cores} cores; set it to {cores} or fewer")
    return int(text)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name or 'cpu'} ({os.cpu_count()} cores)"


def device_slug(device: str) -> str:
    """The device's name as a folder name; `device` itself where the name has no letter or
    digit (an empty slug put the results in the root folder itself, beside other runs')."""
    return re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower() or device


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("transformers", "triton", "bertcore", "bertcore_kernels"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:  # not installed, or broken: say so in the row
            out[mod] = "-"
    return out


def env_row(device: str) -> dict:
    """The columns every CSV row carries: what ran, where, with which software."""
    row = {"device": device_name(device), "threads": torch.get_num_threads() if device == "cpu" else ""}
    row.update(versions())
    return row


def pick_device(requested: str | None = None) -> str:
    if requested == "cuda" and not torch.cuda.is_available():   # else torch fails later with an AssertionError
        raise ValueError(f"--device cuda, but torch {torch.__version__} sees no CUDA GPU on this machine; "
                         "run with --device cpu (or leave --device out)")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


# ---- timing ------------------------------------------------------------------------

def quantiles(samples_ms: list[float]) -> dict[str, float]:
    s = sorted(samples_ms)

    def q(p):  # linear interpolation, as numpy's default
        x = p * (len(s) - 1)
        lo, hi = math.floor(x), math.ceil(x)
        return s[lo] + (s[hi] - s[lo]) * (x - lo)
    return {"ms": statistics.median(s), "ms_p20": q(0.2), "ms_p80": q(0.8), "reps": len(s)}


def time_fn(fn, device: str = "cpu", warmup: int = 2, rep: int = 10, min_time: float = 0.5,
            max_time: float = 20.0) -> dict[str, float]:
    """Median and 20/80 percentiles (ms) of `fn()`; warm-up calls are not timed."""
    if device == "cuda":
        import triton.testing
        med, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return {"ms": med, "ms_p20": p20, "ms_p80": p80, "reps": 0}
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < rep or (time.perf_counter() - start < min_time and len(samples) < 10 * rep):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - start > max_time and len(samples) >= 3:
            break
    return quantiles(samples)


def replayed(fn, name: str):
    """`fn` captured as a CUDA graph after two warm-up calls: (a callable that replays it,
    None), or (fn, why the capture failed). Timing the replays leaves out the host's
    launch cost, so on a launch-bound case it measures the kernels themselves (and what
    a graphed step pays); `bertcore.cudagraphs.GraphCache` does the capture."""
    from ..cudagraphs import GraphCache
    cache = GraphCache(lambda _inputs: fn(), warmup=2, name=name)
    for _ in range(3):                       # two warm-ups, then the capture and its first replay
        cache({}, "call")
    if cache.failed:
        return fn, cache.failed
    return (lambda: cache({}, "call")), None


def cuda_memory(fn) -> tuple[int, int]:
    """(peak allocated, peak reserved) bytes of one call of `fn` above what was in use
    before it. The allocator's cache is emptied first, so the reserved growth is what
    the call takes from the device, segment rounding and fragmentation included."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - allocated, torch.cuda.max_memory_reserved() - reserved


@contextmanager
def _quiet_kineto():
    """Kineto's level 6 while profiling, unless KINETO_LOG_LEVEL is set: recent torch
    prints "USDT: ... profiler_start/stop" on stderr for every profile (read per call)."""
    if "KINETO_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["KINETO_LOG_LEVEL"] = "6"
    try:
        yield
    finally:
        del os.environ["KINETO_LOG_LEVEL"]


def peak_memory(fn, device: str = "cpu") -> int:
    """Peak bytes allocated by one call of `fn` above what was live before it."""
    if device == "cuda":
        return cuda_memory(fn)[0]
    from torch.profiler import ProfilerActivity, profile
    with _quiet_kineto(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


# ---- the machine's own peaks -------------------------------------------------------

_PEAKS: dict = {}


def machine_peaks(device: str = "cpu", quick: bool = False) -> dict[str, float]:
    """Measured peak fp32 matmul TFLOP/s (and half precision on GPU) and copy GB/s."""
    if device in _PEAKS:
        return _PEAKS[device]
    n = (8192 if device == "cuda" else (1024 if quick else 2048))
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = time_fn(lambda: torch.mm(a, b), device, warmup=2, rep=5 if quick else 10)
    peaks = {"matmul_fp32_tflops": 2 * n ** 3 / (t["ms"] * 1e-3) / 1e12}
    if device == "cuda":
        ah, bh = a.half(), b.half()
        t = time_fn(lambda: torch.mm(ah, bh), device)
        peaks["matmul_fp16_tflops"] = 2 * n ** 3 / (t["ms"] * 1e-3) / 1e12
    numel = (1 << 28 if device == "cuda" else (1 << 23 if quick else 1 << 25))  # fp32: 1 GiB / 32 / 128 MiB
    src = torch.empty(numel, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, rep=5 if quick else 10)
    peaks["copy_gbps"] = 2 * numel * 4 / (t["ms"] * 1e-3) / 1e9       # read + write
    _PEAKS[device] = peaks
    return peaks


def peak_flops(device: str, dtype: torch.dtype) -> float:
    """The measured matmul peak for `dtype`, in TFLOP/s."""
    p = machine_peaks(device)
    if dtype in (torch.float16, torch.bfloat16) and "matmul_fp16_tflops" in p:
        return p["matmul_fp16_tflops"]
    return p["matmul_fp32_tflops"]


# ---- output ------------------------------------------------------------------------

def results_dir(device: str, root: str | os.PathLike | None = None) -> Path:
    """`<root>/<device slug>/`, created; root defaults to ./bench-results."""
    d = Path(root if root is not None else DEFAULT_ROOT) / device_slug(device)
    if d.is_file():   # mkdir said only "[Errno 17] File exists"
        raise FileExistsError(f"{d} is a file, in the way of the results folder of this device; "
                              "move it elsewhere or name another --output")
    d.mkdir(parents=True, exist_ok=True)
    return d


def add_output_arguments(ap, default_output=None):
    """--output ROOT (results go to ROOT/<device>/) and --no-write, for a sweep's command line."""
    root = default_output if default_output is not None else DEFAULT_ROOT
    ap.add_argument("--output", type=Path, default=Path(root), metavar="DIR",
                    help=f"results go to DIR/<device>/ (default: {root})")
    ap.add_argument("--no-write", action="store_true", help="print only; write no CSV/PNG")


def write_csv(rows: list[dict], path: Path) -> Path:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) for k, v in r.items()})
    return write_text(path, text.getvalue())


def write_sweep(rows: list[dict], out_dir: Path, name: str, panel, title: str, verbose: bool = True,
                **plot_kw) -> None:
    """<name>.csv, and one <name>-<mode>.png per mode with the rows grouped into panels by
    `panel(row)`; `title` may hold {mode}."""
    write_csv(rows, out_dir / f"{name}.csv")
    pngs = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sub = [dict(r, panel=panel(r)) for r in rows if r["mode"] == mode]
        pngs.append(plot(sub, out_dir / f"{name}-{mode}.png", panels="panel", title=title.format(mode=mode),
                         **plot_kw))
    if verbose:   # only the files that were written: plot() writes none without matplotlib
        pngs = [p.name for p in pngs if p is not None]
        why = "" if pngs or _has_matplotlib() else " (no PNGs: matplotlib is not installed)"
        print(f"wrote {out_dir / (name + '.csv')}{' and ' + ', '.join(pngs) if pngs else ''}{why}")


def _has_matplotlib() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:    # a module in sys.modules without a spec (None: blocked)
        return False


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def print_table(rows: list[dict], cols: list[str], file=None, title: str | None = None):
    file = file or sys.stdout
    if title:
        print(f"\n{title}", file=file)
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)), file=file)
    for x in cells:
        print("  ".join(v.rjust(w) for v, w in zip(x, widths)), file=file)


def _cell(v) -> str:
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e5:
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def plot(rows: list[dict], path: Path, x: str, y: str, series: str, panels: str | None = None,
         title: str = "", ylabel: str | None = None, logy: bool = False) -> Path | None:
    """One PNG: `y` against `x`, one line per `series` value, one panel per `panels` value."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r.get(y) not in (None, "")]
    if not rows:
        return None
    keys = sorted({r[panels] for r in rows}, key=str) if panels else [None]
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        sub = [r for r in rows if panels is None or r[panels] == key]
        xs = []
        for r in sub:
            if r[x] not in xs:
                xs.append(r[x])
        for s in sorted({r[series] for r in sub}, key=str):
            pts = {r[x]: r[y] for r in sub if r[series] == s}
            ax.plot([xs.index(k) for k in xs if k in pts], [pts[k] for k in xs if k in pts],
                    marker="o", label=str(s))
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=30, fontsize=7)
        ax.set_title(f"{panels}={key}" if panels else title, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.set_ylabel(ylabel or y, fontsize=8)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{title}\n{device_name_from_rows(rows)}", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def device_name_from_rows(rows) -> str:
    r = rows[0]
    threads = f", threads={r['threads']}" if r.get("threads") else ""   # CPU runs only
    return f"{r.get('device', '')}{threads}, torch {r.get('torch', '')}, triton {r.get('triton', '')}"


def mixed_lengths(batch: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """`batch` lengths drawn uniformly from [lo, hi] (inclusive), repeatable."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (batch,), generator=g).tolist()
