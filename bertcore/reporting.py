"""What a training run tells its user: a progress bar, `metrics.jsonl`, `curves.png`.

Only rank 0 reports. Every record goes to the log at once (appended and fsynced),
so a killed run keeps what it logged; the plot is redrawn at the end of `fit`.
"""
import functools
import json
import logging
import math
from pathlib import Path

from .files import WriteError, atomic_write, fsync_file, write_hint, write_text

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


@functools.cache
def _say_no_matplotlib() -> None:
    """Once per process: `demo --quick` ends seven runs, each without a plot."""
    logger.info("matplotlib is not installed; no %s (pip install matplotlib draws it)", CURVES_FILE)


class Reporter:
    """Progress bar and metrics log of one run in `output_dir`."""

    def __init__(self, output_dir: Path, enabled: bool, progress: bool, resumed_at: int | None):
        """`resumed_at`: the step a resumed run continues from; None for a new run, whose
        log starts empty."""
        self.output_dir, self.enabled, self.progress = Path(output_dir), enabled, progress
        self.bar = None
        if enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            log = self.output_dir / METRICS_FILE
            if resumed_at is None:
                log.unlink(missing_ok=True)
            elif log.exists():
                _keep_until(log, resumed_at)

    def start(self, total: int, initial: int, desc: str) -> None:
        if self.enabled and self.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def step(self, record: dict, log: bool) -> None:
        """One optimizer step: move the bar; `log` also appends the record to the log."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}")
        if log:
            self.log(record)

    def evaluation(self, record: dict) -> None:
        self.log({**record, "split": "eval"})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in record.items()
                          if isinstance(v, float) and k not in ("epoch",))
        logger.info("step %d: %s", record.get("step", 0), shown)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        file = self.output_dir / METRICS_FILE
        created = not file.exists()
        try:
            with open(file, "a", encoding="utf-8") as f:
                f.write(json.dumps(clean) + "\n")
            fsync_file(file, created)   # on disk before the checkpoint that follows: a resume does not log it again
        except OSError as err:   # a full disk: one line naming the log, as every other write says it
            raise WriteError(f"cannot append to {file}: {err.strerror or err} ({write_hint(file, err)})") from err

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            try:
                self.plot()
            except Exception as err:  # a view of metrics.jsonl: it must not fail a run, nor hide why one failed
                logger.warning("no %s: %s", self.output_dir / CURVES_FILE, " ".join(str(err).split()))

    def plot(self) -> None:
        """curves.png: training loss and eval metrics against the step (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            _say_no_matplotlib()
            return
        file = self.output_dir / METRICS_FILE
        if not file.exists():
            return
        records = _records(file)
        train = [r for r in records if "loss" in r and r.get("split") != "eval"]
        evals = [r for r in records if r.get("split") == "eval"]
        keys = sorted({k for r in evals for k in r if isinstance(r[k], (int, float))}
                      - {"step", "epoch", "train_loss"})
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        if train:
            axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        for key in keys:
            xs = [r["step"] for r in evals if isinstance(r.get(key), (int, float))]
            ys = [r[key] for r in evals if isinstance(r.get(key), (int, float))]
            (axes[0] if key.endswith("loss") else axes[1]).plot(xs, ys, marker=".", label=f"eval {key}")
        for ax, title in zip(axes, ("loss", "eval metrics")):
            ax.set_xlabel("optimizer step")
            ax.set_title(title)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(self.output_dir / CURVES_FILE, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)


def _records(log: Path, lines: list | None = None) -> list[dict]:
    """The log's records with a whole-number step; a line a kill or a full disk cut short
    (or any other) is skipped. `lines` collects the kept lines as they were written."""
    records = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
            if lines is not None:
                lines.append(line + "\n")
    return records


def _keep_until(log: Path, step: int) -> None:
    """Drop what a killed run logged after the checkpoint it resumes from (those steps run
    again and log again) and a last line the kill cut short."""
    lines: list = []
    kept = [line for record, line in zip(_records(log, lines), lines) if record["step"] <= step]
    write_text(log, "".join(kept))
