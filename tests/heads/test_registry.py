"""The head registry: real entry points, run-time plugins, and every way a plugin can
fail without taking the others down."""
import types

import pytest

import bertcore
from bertcore import Head, hookimpl, plugins

INSTALLED = {"classification": "bertcore-classification", "qa": "bertcore-qa", "ner": "bertcore-ner",
             "nsp": "bertcore-nsp", "mlm": "bertcore"}


class ToyHead(Head):
    name = "toy"
    description = "a head for tests"


class ToyPlugin:
    @hookimpl
    def register_heads(self, register):
        register(ToyHead)


class FakeDist:
    def __init__(self, name, version="9.9", requires=()):
        self.name, self.version, self.requires = name, version, list(requires)
        self.metadata = {"Name": name}


class FakeEntryPoint:
    def __init__(self, name, load, dist, value=None):
        self.name, self._load, self.dist, self.group = name, load, dist, "bertcore"
        self.value = value or f"fake_{name}"
        self.loaded = False

    def load(self):
        self.loaded = True
        return self._load()


def plugin_module(*head_types):
    module = types.ModuleType("fake_plugin")

    @hookimpl
    def register_heads(register):
        for t in head_types:
            register(t)

    module.register_heads = register_heads
    return module


@pytest.fixture
def extra_entry_points(monkeypatch):
    """Add fake entry points to the installed ones (plugins.entry_points is the only lookup)."""
    real = plugins.entry_points()

    def add(*eps):
        monkeypatch.setattr(plugins, "entry_points", lambda: real + list(eps))
        plugins.reset_plugins()
    return add


def by_name(infos):
    return {(i.name, i.distribution): i for i in infos}


def test_installed_heads_are_discovered_through_entry_points():
    heads = {h.name: h for h in bertcore.list_heads()}
    for name, dist in INSTALLED.items():
        assert heads[name].distribution == dist and heads[name].error is None
        assert heads[name].version == "0.1.0" and heads[name].description
    assert type(bertcore.create_head("qa", bertcore.BertConfig(hidden_size=32, num_attention_heads=2))).__name__ == "QAHead"


def test_loading_is_lazy_and_once(monkeypatch):
    calls = []
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda: calls.append(1) or real())
    plugins.reset_plugins()
    assert calls == []
    bertcore.list_heads()
    bertcore.list_heads()
    plugins.get_head_type("ner")
    assert calls == [1]


def test_unknown_head_names_installed_ones_and_pip_command(cfg):
    with pytest.raises(plugins.HeadNotFoundError) as err:
        bertcore.create_head("sentiment-xl", cfg)
    message = str(err.value)
    assert "classification, mlm, ner, nsp, qa" in message
    assert "pip install bertcore-sentiment-xl" in message and "bertcore install sentiment-xl" in message


def test_plugin_registered_in_a_fixture_and_unregistered(cfg):
    name = plugins.register_plugin(ToyPlugin(), name="toy-plugin", distribution="toy-dist", version="1.2")
    info = {h.name: h for h in bertcore.list_heads()}["toy"]
    assert (info.version, info.distribution, info.error) == ("1.2", "toy-dist", None)
    assert isinstance(bertcore.create_head("toy", cfg), ToyHead)
    plugins.unregister_plugin(name)
    assert "toy" not in {h.name for h in bertcore.list_heads()}
    with pytest.raises(plugins.HeadNotFoundError):
        bertcore.create_head("toy", cfg)


def test_failing_import_is_listed_and_isolated(extra_entry_points, cfg):
    def boom():
        raise ImportError("No module named 'torch_scatter'")
    extra_entry_points(FakeEntryPoint("broken", boom, FakeDist("bertcore-broken")))
    infos = by_name(bertcore.list_heads())
    broken = infos[("broken", "bertcore-broken")]
    assert "torch_scatter" in broken.error and broken.version == "9.9"
    assert all(infos[(n, d)].error is None for n, d in INSTALLED.items())
    with pytest.raises(plugins.HeadNotFoundError, match="did not load.*torch_scatter"):
        bertcore.create_head("broken", cfg)
    bertcore.create_head("ner", cfg, labels=["O", "B-X"])


def test_hook_that_raises_is_isolated(extra_entry_points):
    module = types.ModuleType("raising")
    module.register_heads = hookimpl(lambda register: 1 / 0)
    extra_entry_points(FakeEntryPoint("raising", lambda: module, FakeDist("bertcore-raising")))
    infos = by_name(bertcore.list_heads())
    assert "ZeroDivisionError" in infos[("raising", "bertcore-raising")].error
    assert infos[("qa", "bertcore-qa")].error is None


def test_duplicate_head_name_keeps_the_first(extra_entry_points, cfg):
    class OtherQA(Head):
        name, description = "qa", "impostor"
    extra_entry_points(FakeEntryPoint("zz-qa", lambda: plugin_module(OtherQA), FakeDist("bertcore-zz-qa")))
    infos = by_name(bertcore.list_heads())
    assert infos[("qa", "bertcore-qa")].error is None
    assert "duplicate head name 'qa'" in infos[("qa", "bertcore-zz-qa")].error
    assert type(bertcore.create_head("qa", cfg)).__name__ == "QAHead"


def test_duplicate_plugin_name_keeps_the_first(extra_entry_points):
    class OtherNER(Head):
        name, description = "ner2", "another ner"
    extra_entry_points(FakeEntryPoint("ner", lambda: plugin_module(OtherNER), FakeDist("bertcore-ner-fork")))
    infos = by_name(bertcore.list_heads())
    assert "already taken by bertcore-ner" in infos[("ner", "bertcore-ner-fork")].error
    assert infos[("ner", "bertcore-ner")].error is None and "ner2" not in {i.name for i in infos.values()}


def test_core_version_range_is_checked_before_import(extra_entry_points):
    too_new = FakeEntryPoint("future", lambda: plugin_module(ToyHead),
                             FakeDist("bertcore-future", requires=["torch", "bertcore<0.4,>=0.3"]))
    module = plugin_module(ToyHead)
    module.BERTCORE_REQUIRES = ">=1.0"
    attr = FakeEntryPoint("attr", lambda: module, FakeDist("bertcore-attr", requires=["bertcore-kernels>=5"]))
    fits = FakeEntryPoint("fits", lambda: plugin_module(ToyHead),
                          FakeDist("bertcore-fits", requires=['bertcore>=0.1,<0.2; python_version >= "3"']))
    extra_entry_points(too_new, attr, fits)
    infos = by_name(bertcore.list_heads())
    assert "bertcore<0.4,>=0.3" in infos[("future", "bertcore-future")].error
    assert "this is bertcore 0.1.0" in infos[("future", "bertcore-future")].error
    assert not too_new.loaded
    assert "BERTCORE_REQUIRES" in infos[("attr", "bertcore-attr")].error  # bertcore-kernels is not bertcore
    assert infos[("toy", "bertcore-fits")].error is None


def test_version_in_range():
    check = plugins.version_in_range
    assert check("0.1.0", ">=0.1,<0.2") and not check("0.2.0", ">=0.1,<0.2")
    assert check("0.1.7", "~=0.1.0") and not check("0.2", "~=0.1.0")
    assert check("0.1.3", "==0.1.*") and not check("0.1.3", "!=0.1.*") and check("1.0", ">0.9, !=0.95")


@pytest.mark.parametrize("value, expected", [
    ("ner", {"mlm", "ner"}), ("", {"mlm"}), ("bertcore-qa, nsp", {"mlm", "qa", "nsp"})])
def test_bertcore_plugins_limits_loading(monkeypatch, value, expected, cfg):
    monkeypatch.setenv("BERTCORE_PLUGINS", value)
    plugins.reset_plugins()
    assert {h.name for h in bertcore.list_heads()} == expected
    if "classification" not in expected:
        with pytest.raises(plugins.HeadNotFoundError, match="BERTCORE_PLUGINS"):
            bertcore.create_head("classification", cfg, num_labels=2)
