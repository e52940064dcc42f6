"""Fault suite, a hand-edited encoder config.json: a saved model whose config no longer
matches its weights is refused with one line naming the file, the key and the fix, rather
than loaded with freshly initialised (random) layers that predict garbage."""
import json
import re
import sys
from pathlib import Path

import pytest

import bertcore
from bertcore.checkpoint import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "toy_plugin")

TEXTS = [e["text"] for e in toy.examples(8, seed=2)]


@pytest.fixture(scope="module")
def tok():
    return toy.tokenizer()


@pytest.fixture
def saved(tok, tmp_path):
    """A toy TaskModel (2 layers, hidden 32, intermediate 64) saved to tmp_path/model."""
    model = toy.model(tok).eval()
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def edit_config(folder: Path, **changes) -> Path:
    file = folder / "encoder" / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))
    return file


def test_untampered_round_trip_loads_and_predicts_the_same(saved):
    model, folder = saved
    loaded = bertcore.TaskModel.from_pretrained(folder)
    assert loaded.predict(TEXTS, head="toy") == model.predict(TEXTS, head="toy")
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].equal(value), key


LAYERS = r" but model.safetensors holds 2 layers \(encoder.layer."
EMBEDDINGS = r"checkpoint key embeddings.word_embeddings.weight has shape "
FFN = r"checkpoint key encoder.layer.0.intermediate.dense.weight has shape "


@pytest.mark.parametrize("changes, says", [
    ({"num_hidden_layers": 3}, r"num_hidden_layers=3" + LAYERS + r"2.\* missing"),
    ({"num_hidden_layers": 1}, r"num_hidden_layers=1" + LAYERS + r"1.\* unused"),
    ({"hidden_size": 48}, EMBEDDINGS + r"\(\d+, 32\), model expects \(\d+, 48\)"),
    ({"intermediate_size": 96}, FFN + r"\(64, 32\), model expects \(96, 32\)"),
    ({"vocab_size": 500}, EMBEDDINGS + r"\(\d+, 32\), model expects \(500, 32\)"),
])
def test_edited_config_is_refused_naming_file_key_and_fix(saved, changes, says):
    _, folder = saved
    file = edit_config(folder, **changes)
    with pytest.raises(CheckpointError, match=re.escape(str(file)) + ": " + says) as err:
        bertcore.TaskModel.from_pretrained(folder)
    message = str(err.value)
    assert "\n" not in message
    assert "restore" in message and "re-save the model" in message
    # the encoder folder alone is refused too when the config asks for weights it lacks
    if changes != {"num_hidden_layers": 1}:   # fewer layers from a plain checkpoint stays a warning
        with pytest.raises(CheckpointError, match=re.escape(str(file))):
            bertcore.BertEncoder.from_pretrained(folder / "encoder")


def test_a_shape_error_names_the_config_field(saved):
    _, folder = saved
    edit_config(folder, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"model expects \(96, 32\) from intermediate_size=96;"):
        bertcore.TaskModel.from_pretrained(folder)
