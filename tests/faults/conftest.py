"""Fixtures the fault suites share."""
import json
import random
import subprocess

import pytest

WORDS = "good great fine bad awful poor movie film plot actor the a".split()


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    """48 two-word reviews whose first word gives the label, as JSONL."""
    rng = random.Random(0)
    rows = []
    for _ in range(48):
        label = rng.choice(["neg", "pos"])
        rows.append({"text": f"{rng.choice(WORDS[:3] if label == 'pos' else WORDS[3:6])} {rng.choice(WORDS[6:])}",
                     "label": label})
    file = tmp_path_factory.mktemp("data") / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return file


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs) to fill; skipped where this process may not mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


@pytest.fixture
def read_only_disk(small_disk):
    """small_disk remounted read-only, holding an empty folder `results/`."""
    (small_disk / "results").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    return small_disk
