"""The plugin printed in README's "Writing a head plugin" runs as printed."""
import re
import types
from pathlib import Path

import bertcore
from bertcore import plugins
from heads_testing import train

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_plugin() -> types.ModuleType:
    section = README.read_text(encoding="utf-8").split("## Writing a head plugin", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("bertcore_scorer")
    exec(compile(code, "README.md:bertcore_scorer", "exec"), module.__dict__)
    return module


def test_readme_plugin_registers_trains_saves_and_loads(tmp_path, encoder, tok, cfg):
    plugins.register_plugin(readme_plugin(), name="scorer", distribution="bertcore-scorer", version="0.1.0")
    assert {h.name: h.distribution for h in bertcore.list_heads()}["scorer"] == "bertcore-scorer"
    model = bertcore.TaskModel(encoder, {"s": bertcore.create_head("scorer", cfg, scale=5.0)}, tokenizer=tok)
    examples = [{"text": "good movie", "score": 5.0}, {"text": "a bad boring film", "score": 1.0}] * 4
    first, last = train(model, "s", examples, steps=30)
    assert last < 0.5 * first
    assert set(model.evaluate(examples, head="s")) == {"loss", "mse"}
    model.save_pretrained(tmp_path)
    loaded = bertcore.TaskModel.from_pretrained(tmp_path)
    assert loaded.predict("good movie", head="s") == model.predict("good movie", head="s")
