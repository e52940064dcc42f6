"""Fixtures the fault suites share."""
import json
import random

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
