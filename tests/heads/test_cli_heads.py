import json
import subprocess
import sys
from pathlib import Path

import pytest

import bertcore
from bertcore import Head, cli, plugins

from test_registry import FakeDist, FakeEntryPoint, extra_entry_points, plugin_module  # noqa: F401

FIVE = {"classification", "qa", "ner", "nsp", "mlm"}


def test_heads_json_in_process(capsys):
    assert cli.main(["heads", "--json"]) == 0
    heads = {h["name"]: h for h in json.loads(capsys.readouterr().out)}
    assert FIVE <= set(heads)
    assert all(heads[n]["version"] == "0.1.0" and heads[n]["error"] is None for n in FIVE)
    assert heads["mlm"]["distribution"] == "bertcore" and heads["ner"]["distribution"] == "bertcore-ner"


def test_heads_table(capsys):
    assert cli.main(["heads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "DISTRIBUTION", "STATUS"]
    assert any(line.split()[:4] == ["qa", "0.1.0", "bertcore-qa", "ok"] for line in lines)


def test_console_script():
    script = Path(sys.executable).parent / "bertcore"
    out = subprocess.run([str(script), "heads", "--json"], capture_output=True, text=True, timeout=120, check=True)
    assert FIVE <= {h["name"] for h in json.loads(out.stdout)}


def test_python_m_bertcore():
    out = subprocess.run([sys.executable, "-m", "bertcore", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"bertcore {bertcore.__version__}"


def test_heads_shows_the_plugin_filter_and_flags_unknown_names(capsys, monkeypatch):
    monkeypatch.setenv("BERTCORE_PLUGINS", "ner,nerr")
    plugins.reset_plugins()
    assert cli.main(["heads"]) == 0
    out = capsys.readouterr().out
    assert "BERTCORE_PLUGINS='ner,nerr': only these plugins load" in out
    assert "warning: BERTCORE_PLUGINS names 'nerr', which is no installed plugin" in out
    assert any(line.split()[:3] == ["qa", "0.1.0", "bertcore-qa"] and "off: not in BERTCORE_PLUGINS" in line
               for line in out.splitlines())
    assert cli.main(["heads", "--json"]) == 0
    out, err = capsys.readouterr()
    assert {h["name"] for h in json.loads(out)} == {"mlm", "ner"} and "'nerr'" in err


@pytest.fixture
def pip_calls(monkeypatch):
    """subprocess.run of pip, faked: records the command; `pip_calls.installed` is what the
    installation report says, `pip_calls.code` the exit status."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if "--report" in cmd:
            report = {"install": [{"metadata": {"name": n, "version": "1.0"}, "requested": True}
                                  for n in calls.installed]}
            Path(cmd[cmd.index("--report") + 1]).write_text(json.dumps(report))
        return subprocess.CompletedProcess(cmd, calls.code, stderr="" if kwargs.get("stderr") else None)
    calls = type("Calls", (list,), {"installed": [], "code": 0})()
    monkeypatch.setattr(cli.plugins.subprocess, "run", run)
    return calls


def pip_args(cmd):
    """The pip command without its --report FILE, which is a temporary file."""
    if "--report" in cmd:
        i = cmd.index("--report")
        cmd = cmd[:i] + cmd[i + 2:]
    return cmd


def test_install_and_uninstall_run_this_interpreters_pip(pip_calls, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'my-head'\n")   # a folder pip can install
    assert cli.main(["install", "sentiment_xl", "other-dist>=2", str(tmp_path)]) == 0
    assert pip_args(pip_calls[-1]) == [sys.executable, "-m", "pip", "install", "bertcore-sentiment_xl",
                                       "other-dist>=2", str(tmp_path.resolve())]
    assert cli.main(["install", "ner"]) == 0          # this checkout's heads/ner
    assert pip_args(pip_calls[-1])[-1].endswith(str(Path("heads") / "ner"))
    assert cli.main(["uninstall", "ner"]) == 0
    assert pip_calls[-1] == [sys.executable, "-m", "pip", "uninstall", "-y", "bertcore-ner"]
    assert cli.main(["uninstall", "mlm"]) == 2         # built in


def test_install_short_name_is_not_a_folder_of_the_same_name(pip_calls, tmp_path, monkeypatch):
    (tmp_path / "ner").mkdir()                       # e.g. a data folder called ner
    monkeypatch.chdir(tmp_path)
    assert cli.main(["install", "ner"]) == 0
    target = pip_args(pip_calls[-1])[-1]
    assert target.endswith(str(Path("heads") / "ner")) and not target.startswith(str(tmp_path))


def fake_core_installed_from(monkeypatch, url):
    """bertcore's direct_url.json says it was installed from `url`; the package itself lives elsewhere."""
    from importlib import metadata
    real = metadata.distribution

    class Core:
        def read_text(self, name):
            return json.dumps({"url": url, "dir_info": {}}) if name == "direct_url.json" else None
    monkeypatch.setattr(metadata, "distribution", lambda name: Core() if name == "bertcore" else real(name))
    monkeypatch.setattr(cli.plugins, "__file__", "/nonexistent/site-packages/bertcore/cli/plugins.py")


def test_install_official_head_from_the_tree_bertcore_was_installed_from(pip_calls, tmp_path, monkeypatch):
    (tmp_path / "heads" / "qa").mkdir(parents=True)
    (tmp_path / "heads" / "qa" / "pyproject.toml").write_text("[project]\nname = 'bertcore-qa'\n")
    fake_core_installed_from(monkeypatch, tmp_path.as_uri())
    assert cli.main(["install", "qa"]) == 0
    assert pip_args(pip_calls[-1])[-1] == str(tmp_path / "heads" / "qa")


def test_install_official_head_without_a_source_tree_says_which_pip_install(pip_calls, monkeypatch, capsys):
    fake_core_installed_from(monkeypatch, "https://example.org/bertcore-0.1.0.tar.gz")
    pip_calls.code = 1                               # not on the index
    assert cli.main(["install", "ner"]) == 2                   # a one-line error, as every error
    assert pip_args(pip_calls[-1])[-1] == "bertcore-ner"
    assert f"run `{sys.executable} -m pip install <checkout>/heads/ner`" in capsys.readouterr().err


def test_install_warns_when_the_package_is_no_head_plugin(pip_calls, tmp_path, monkeypatch, capsys):
    info = tmp_path / "site" / "not_a_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: not-a-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[console_scripts]\nnap = not_a_plugin:main\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pip_calls.installed = ["not-a-plugin"]
    (tmp_path / "some" / "path").mkdir(parents=True)
    (tmp_path / "some" / "path" / "pyproject.toml").write_text("[project]\nname = 'not-a-plugin'\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["install", "./some/path"]) == 0
    err = capsys.readouterr().err
    assert "warning: not-a-plugin is installed but declares no `bertcore` entry point" in err
    pip_calls.installed = []
    assert cli.main(["install", "bertcore-ner"]) == 0      # already installed: no report entry, still checked
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["install", "safetensors>=0.1"]) == 0      # a requirement, not a head name
    assert "warning: safetensors is installed but declares no `bertcore` entry point" in capsys.readouterr().err


@pytest.mark.parametrize("name, message", [
    ("safetensors", "safetensors is not a head plugin"),
    ("bertcore==0.1.0", "is bertcore itself"),
    ("bertcore", "is bertcore itself"),
    ("bertcore-ner==9", "bertcore-ner 0.1.0 is installed, which is not ==9"),
    ("no-such-head", "no installed head plugin is named 'no-such-head'"),
    ("ner[", "cannot read 'ner['")])
def test_uninstall_removes_head_plugins_only(pip_calls, capsys, name, message):
    assert cli.main(["uninstall", "qa", name]) == 2
    assert message in capsys.readouterr().err and pip_calls == []     # nothing removed, not even qa


def test_uninstall_reads_requirements(pip_calls):
    assert cli.main(["uninstall", "bertcore-ner>=0.1", "Bertcore_QA", "qa"]) == 0
    assert pip_calls[-1][-2:] == ["bertcore-ner", "bertcore-qa"]


@pytest.mark.parametrize("entry_point", ["aaa", "zz"])     # sorting before or after the official one
def test_uninstall_removes_the_provider_not_a_failed_impostor(pip_calls, extra_entry_points, entry_point):
    class FakeNER(Head):
        name, description = "ner", "impostor"
    extra_entry_points(FakeEntryPoint(entry_point, lambda: plugin_module(FakeNER), FakeDist("evil-ner")))
    assert cli.main(["uninstall", "ner"]) == 0
    assert pip_calls[-1][-1] == "bertcore-ner"
    assert cli.main(["uninstall", "evil-ner"]) == 0 and pip_calls[-1][-1] == "evil-ner"


def test_uninstall_of_a_name_two_plugins_claim_asks_which(pip_calls, extra_entry_points, capsys):
    class A(Head):
        name, description = "scorer", "a"

    class B(Head):
        name, description = "scorer", "b"
    extra_entry_points(FakeEntryPoint("sa", lambda: plugin_module(A), FakeDist("scorer-a")),
                       FakeEntryPoint("sb", lambda: plugin_module(B), FakeDist("scorer-b")))
    assert cli.main(["uninstall", "scorer"]) == 2
    assert "'scorer' is claimed by scorer-a and scorer-b" in capsys.readouterr().err and pip_calls == []


def test_install_refuses_an_empty_name_and_pip_options(pip_calls, tmp_path, monkeypatch, capsys):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'unrelated'\n")
    monkeypatch.chdir(tmp_path)                # before: "" was Path("."), and pip built this folder
    for name, message in (("", "an empty name to install"), ("  ", "an empty name to install"),
                          ("--index-url=http://evil.invalid", "pip options are not passed on")):
        assert cli.main(["install", "--", name]) == 2
        assert message in capsys.readouterr().err
    assert pip_calls == []
    url = "https://example.invalid/bertcore_x-1.0-py3-none-any.whl"
    assert cli.main(["install", url, f"bertcore-x @ {url}"]) == 0   # pip's to resolve, not paths here
    assert pip_args(pip_calls[-1])[-2:] == [url, f"bertcore-x @ {url}"]
