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
    assert "classification, embedding, mlm, ner, nsp, qa" in message
    assert "pip install bertcore-sentiment-xl" in message and "bertcore install sentiment-xl" in message


def test_a_misspelt_head_or_a_bad_option_is_named_with_what_is_there(cfg):
    """The library told a typo to `pip install bertcore-clasification` (only the CLI said
    "did you mean"), and an unknown option was __init__'s TypeError, naming no valid one."""
    with pytest.raises(plugins.HeadNotFoundError, match=r"no head named 'clasification'; did you mean classification\? "
                                                        r"\(installed heads: classification, embedding, mlm, ner"):
        bertcore.create_head("clasification", cfg)
    with pytest.raises(ValueError, match=r"the classification head has no option 'label'; its options: labels, "
                                         r"num_labels, multi_label, dropout, pooling"):
        bertcore.create_head("classification", cfg, label=["a", "b"])
    for head, options in (("classification", {"labels": ["a", "b"]}), ("ner", {"labels": ["O", "B-X"]})):
        for dropout in (1.5, "0.1"):   # torch named the value, not the option; a string got through to it
            with pytest.raises(ValueError, match=rf"dropout={dropout!r} must be a number in \[0, 1\]"):
                bertcore.create_head(head, cfg, dropout=dropout, **options)
        assert bertcore.create_head(head, cfg, dropout=0.3, **options).dropout.p == 0.3


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


def test_impostor_of_an_official_head_is_skipped_whatever_the_order(extra_entry_points, cfg):
    class OtherQA(Head):
        name, description = "qa", "impostor"
    # "aaa" sorts before every official entry point: order must not decide who owns "qa".
    extra_entry_points(FakeEntryPoint("aaa", lambda: plugin_module(OtherQA), FakeDist("bertcore-zz-qa")))
    infos = by_name(bertcore.list_heads())
    assert infos[("qa", "bertcore-qa")].error is None
    assert "'qa' belongs to the official bertcore-qa, not bertcore-zz-qa" in infos[("qa", "bertcore-zz-qa")].error
    assert type(bertcore.create_head("qa", cfg)).__name__ == "QAHead"
    assert plugins.head_info("qa").distribution == "bertcore-qa"


def test_impostor_cannot_take_an_official_name_when_the_official_is_absent(extra_entry_points, monkeypatch, cfg):
    class FakeClassifier(Head):
        name, description = "classification", "impostor"
    monkeypatch.setenv("BERTCORE_PLUGINS", "aaa")      # as if bertcore-classification were not installed
    extra_entry_points(FakeEntryPoint("aaa", lambda: plugin_module(FakeClassifier), FakeDist("evil")))
    with pytest.raises(plugins.HeadNotFoundError, match="belongs to the official bertcore-classification"):
        bertcore.create_head("classification", cfg, num_labels=2)


def test_official_entry_point_name_stays_with_its_distribution(extra_entry_points):
    class OtherNER(Head):
        name, description = "ner2", "another ner"
    fork = FakeEntryPoint("ner", lambda: plugin_module(OtherNER), FakeDist("bertcore-ner-fork"))
    extra_entry_points(fork)
    infos = by_name(bertcore.list_heads())
    assert "'ner' belongs to the official bertcore-ner" in infos[("ner", "bertcore-ner-fork")].error
    assert infos[("ner", "bertcore-ner")].error is None and "ner2" not in {i.name for i in infos.values()}
    assert not fork.loaded


def test_two_plugins_claiming_one_head_name_both_fail(extra_entry_points, cfg):
    class ScorerA(Head):
        name, description = "scorer", "a"

    class ScorerB(Head):
        name, description = "scorer", "b"
    extra_entry_points(FakeEntryPoint("scorer-a", lambda: plugin_module(ScorerA), FakeDist("scorer-a")),
                       FakeEntryPoint("scorer-b", lambda: plugin_module(ScorerB), FakeDist("scorer-b")))
    infos = by_name(bertcore.list_heads())
    for dist in ("scorer-a", "scorer-b"):
        error = infos[("scorer", dist)].error
        assert "'scorer' is claimed by scorer-a" in error and "scorer-b" in error and "uninstall" in error
    with pytest.raises(plugins.HeadNotFoundError, match="scorer-a.*scorer-b"):
        bertcore.create_head("scorer", cfg)


def test_two_plugins_with_one_entry_point_name_both_fail(extra_entry_points):
    extra_entry_points(FakeEntryPoint("toy", lambda: plugin_module(ToyHead), FakeDist("toy-a")),
                       FakeEntryPoint("toy", lambda: plugin_module(ToyHead), FakeDist("toy-b")))
    infos = by_name(bertcore.list_heads())
    assert "'toy' is claimed by toy-a and toy-b" in infos[("toy", "toy-a")].error
    assert "'toy' is claimed by toy-a and toy-b" in infos[("toy", "toy-b")].error


def test_entry_point_naming_an_official_module_does_not_steal_it(extra_entry_points, cfg):
    import bertcore_classification
    extra_entry_points(FakeEntryPoint("aaa", lambda: bertcore_classification, FakeDist("evil")))
    infos = by_name(bertcore.list_heads())
    assert "already loaded as plugin 'classification' from bertcore-classification" in infos[("aaa", "evil")].error
    assert plugins.head_info("classification").distribution == "bertcore-classification"


@pytest.mark.parametrize("body, hint", [
    ("register_head = hookimpl(lambda register: None)", "it implements register_head: misspelt?"),
    ("register_heads = lambda register: None", "lacks the @bertcore.hookimpl decorator"),
    ("", "defines no register_heads hook;")])
def test_plugin_without_the_hook_is_listed(extra_entry_points, body, hint):
    module = types.ModuleType("typo")
    exec(body, {"hookimpl": hookimpl}, module.__dict__)
    extra_entry_points(FakeEntryPoint("typo", lambda: module, FakeDist("bertcore-typo")))
    error = by_name(bertcore.list_heads())[("typo", "bertcore-typo")].error
    assert "defines no register_heads hook" in error and hint in error


def test_hook_with_wrong_arguments_is_isolated(extra_entry_points):
    module = types.ModuleType("badargs")
    module.register_heads = hookimpl(lambda registr: None)
    extra_entry_points(FakeEntryPoint("badargs", lambda: module, FakeDist("bertcore-badargs")))
    infos = by_name(bertcore.list_heads())
    assert "does not match the hook" in infos[("badargs", "bertcore-badargs")].error
    assert infos[("qa", "bertcore-qa")].error is None


def test_exit_at_import_is_isolated(extra_entry_points):
    def leave():
        raise SystemExit("bye")
    extra_entry_points(FakeEntryPoint("leaver", leave, FakeDist("bertcore-leaver")))
    assert "SystemExit: bye" in by_name(bertcore.list_heads())[("leaver", "bertcore-leaver")].error


def test_get_head_type_checks_the_recorded_distribution(tmp_path):
    name = plugins.register_plugin(ToyPlugin(), name="toy-plugin", distribution="toy-dist", version="1.2")
    source = tmp_path / "heads" / "s" / "head.json"
    assert plugins.get_head_type("toy", distribution="toy-dist", source=source) is ToyHead
    assert plugins.get_head_type("toy", distribution="Toy_Dist") is ToyHead      # normalised
    assert plugins.get_head_type("toy", distribution=None) is ToyHead
    assert plugins.get_head_type("toy", distribution="unknown") is ToyHead      # saved unregistered
    with pytest.raises(plugins.HeadDistributionError) as err:
        plugins.get_head_type("toy", distribution="toy-original", source=source)
    message = str(err.value)
    assert f"the saved file {source}" in message and "'toy-original'" in message and "toy-dist 1.2" in message
    assert "check it is the package you mean" in message
    plugins.unregister_plugin(name)


def test_get_head_type_refuses_an_official_name_from_another_distribution(tmp_path):
    source = tmp_path / "head.json"
    with pytest.raises(plugins.HeadDistributionError, match=f"saved file {source}.*'evil'.*official bertcore-ner"):
        plugins.get_head_type("ner", distribution="evil", source=source)
    assert plugins.get_head_type("ner", distribution="bertcore_ner", source=source).name == "ner"


def test_missing_third_party_head_says_where_its_distribution_name_came_from(tmp_path):
    source = tmp_path / "head.json"
    with pytest.raises(plugins.HeadNotFoundError) as err:
        plugins.get_head_type("scorer", distribution="totally-safe-pkg", source=source)
    message = str(err.value)
    assert f"the saved file {source} says it comes from the distribution 'totally-safe-pkg'" in message
    assert "pip install totally-safe-pkg" not in message and "check that this is the package" in message


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
    assert check("0.2.0.dev1", ">=0.1") and check("0.1.0rc1", "<0.2")    # a development core counts
    with pytest.raises(ValueError):
        check("0.1.0", "about 0.1")


def test_declared_range_reads_requirements_with_packaging(extra_entry_points):
    extra_only = FakeEntryPoint("extra", lambda: plugin_module(ToyHead),
                                FakeDist("bertcore-extra", requires=['bertcore>=9; extra == "dev"', "Bertcore[x] (<0.2)"]))
    unreadable = FakeEntryPoint("junk", lambda: plugin_module(ToyHead), FakeDist("bertcore-junk", requires=["bertcore >>> 1"]))
    extra_entry_points(extra_only, unreadable)
    infos = by_name(bertcore.list_heads())
    assert infos[("toy", "bertcore-extra")].error is None            # the extra's range does not apply
    assert "unreadable requirement 'bertcore >>> 1'" in infos[("junk", "bertcore-junk")].error
    assert not unreadable.loaded


def test_bertcore_plugins_reports_what_it_left_out(monkeypatch):
    monkeypatch.setenv("BERTCORE_PLUGINS", "ner,nerr")
    plugins.reset_plugins()
    report = plugins.plugin_filter()
    assert report.value == "ner,nerr" and report.unknown == ["nerr"]
    assert ("qa", "bertcore-qa", "0.1.0") in report.skipped
    with pytest.raises(plugins.HeadNotFoundError, match="'nerr' matches no installed plugin"):
        plugins.get_head_type("qa")
    # before: "... Install it with `bertcore install qa`", for a head that is installed
    with pytest.raises(plugins.HeadNotFoundError, match=r"head 'qa' is installed \(bertcore-qa 0.1.0\) but "
                                                        r"BERTCORE_PLUGINS='ner,nerr' leaves it out.*add 'qa'"):
        plugins.get_head_type("qa")
    monkeypatch.delenv("BERTCORE_PLUGINS")
    plugins.reset_plugins()
    assert plugins.plugin_filter() is None


@pytest.mark.parametrize("value, expected", [
    ("ner", {"mlm", "ner"}), ("", {"mlm"}), ("bertcore-qa, nsp", {"mlm", "qa", "nsp"})])
def test_bertcore_plugins_limits_loading(monkeypatch, value, expected, cfg):
    monkeypatch.setenv("BERTCORE_PLUGINS", value)
    plugins.reset_plugins()
    assert {h.name for h in bertcore.list_heads()} == expected
    if "classification" not in expected:
        with pytest.raises(plugins.HeadNotFoundError, match="BERTCORE_PLUGINS"):
            bertcore.create_head("classification", cfg, num_labels=2)


def test_an_impostor_takes_down_its_own_heads_not_its_neighbours(cfg):
    """Run-time plugins all have the distribution "local": an impostor among them skips its
    own heads only (before: every "local" head, or, earlier, none but the taken name)."""
    class Mine(Head):
        name, description = "my-head", "an honest run-time head"

    class Fake(Head):
        name, description = "ner", "takes an official name"

    class Extra(Head):
        name, description = "fake-extra", "rides along with the impostor"

    honest = plugins.register_plugin(plugin_module(Mine), name="mine")
    impostor = plugins.register_plugin(plugin_module(Fake, Extra), name="exp")
    try:
        infos = {(h.name, h.distribution, h.error is None) for h in bertcore.list_heads()}
        assert ("my-head", "local", True) in infos
        assert isinstance(bertcore.create_head("my-head", cfg), Mine)
        extra = next(h for h in bertcore.list_heads() if h.name == "fake-extra")
        assert "plugin exp also registers the official head name 'ner'" in extra.error
    finally:
        plugins.unregister_plugin(honest)
        plugins.unregister_plugin(impostor)


def test_an_impostor_distribution_loses_the_heads_of_all_its_plugins(cfg):
    class Fake(Head):
        name, description = "ner", "takes an official name"

    class Other(Head):
        name, description = "foo-head", "from the same distribution's other entry point"

    first = plugins.register_plugin(plugin_module(Fake), name="foo_a", distribution="foo")
    second = plugins.register_plugin(plugin_module(Other), name="foo_b", distribution="foo")
    try:
        other = next(h for h in bertcore.list_heads() if h.name == "foo-head")
        assert "foo also registers the official head name 'ner'" in other.error
    finally:
        plugins.unregister_plugin(first)
        plugins.unregister_plugin(second)
