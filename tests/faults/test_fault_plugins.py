"""Fault suite, plugins: hostile plugins installed for real into a throwaway environment.

The environment is a venv on top of this one (a .pth adds .venv's site-packages, so
bertcore, pip and setuptools are there), into whose own site-packages the hostile
distributions go: a dist-info with METADATA, entry_points.txt and RECORD is what pip
itself writes, so importlib.metadata finds them and `pip uninstall` removes them. Then
one script runs `bertcore heads/install/uninstall` in that environment and reports.
"""
import json
import os
import site
import subprocess
import sys
import textwrap
import venv

import pytest

pytestmark = pytest.mark.slow

HOSTILE = {
    # An impostor of an official head whose entry point sorts before every other.
    ("bertcore-turbo-classifier", "aaa_turbo", "turbo_cls"): '''
        from bertcore import Head, hookimpl
        class Turbo(Head):
            name, description = "classification", "an impostor"
        class Extra(Head):
            name, description = "turbo-extra", "rides along with the impostor"
        @hookimpl
        def register_heads(register):
            register(Turbo)
            register(Extra)
    ''',
    # Two third-party plugins claiming one name.
    ("scorer-a", "scorer_a", "scorer_a"): '''
        from bertcore import Head, hookimpl
        class Scorer(Head):
            name, description = "scorer", "a"
        @hookimpl
        def register_heads(register):
            register(Scorer)
    ''',
    ("scorer-b", "scorer_b", "scorer_b"): '''
        from bertcore import Head, hookimpl
        class Scorer(Head):
            name, description = "scorer", "b"
        @hookimpl
        def register_heads(register):
            register(Scorer)
    ''',
    # A misspelt hook, and a plugin that exits at import.
    ("bertcore-typo", "typo", "typo_plugin"): '''
        from bertcore import hookimpl
        @hookimpl
        def register_head(register):
            raise AssertionError("never called")
    ''',
    ("bertcore-quitter", "quitter", "quitter"): '''
        import sys
        sys.exit("bye")
    ''',
}

SCRIPT = r'''
import contextlib, io, json, sys
from importlib import metadata
from bertcore import cli, plugins

def run(*argv):
    plugins.reset_plugins()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

def installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

result = {"heads": run("heads", "--json")}
plugins.reset_plugins()
result["classification_module"] = plugins.get_head_type("classification").__module__
for name, dist in [("classification", "bertcore-turbo-classifier"), ("scorer", None)]:
    try:
        plugins.get_head_type(name, distribution=dist, source="/saved/heads/x/head.json")
    except plugins.HeadNotFoundError as err:
        result[f"get_{name}"] = str(err)
for argv in (["safetensors>=0.1"], ["bertcore==0.1.0"], ["scorer"]):
    result["uninstall " + argv[0]] = run("uninstall", *argv)
result["safetensors_still_installed"] = installed("safetensors")
result["install"] = run("install", sys.argv[1])
result["uninstall scorer-a"] = run("uninstall", "scorer-a")
result["scorer-a_installed"] = installed("scorer-a")
plugins.reset_plugins()
result["scorer_after"] = plugins.get_head_type("scorer").__module__
print("RESULT " + json.dumps(result))
'''


def install_fake(site_packages, dist, ep_name, module, source):
    """Install one distribution the way pip lays it out (module, dist-info, RECORD)."""
    (site_packages / f"{module}.py").write_text(textwrap.dedent(source))
    info = site_packages / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\nRequires-Dist: bertcore>=0.1\n")
    (info / "entry_points.txt").write_text(f"[bertcore]\n{ep_name} = {module}\n")
    (info / "INSTALLER").write_text("pip\n")
    files = [f"{module}.py"] + [f"{info.name}/{f}" for f in ("METADATA", "entry_points.txt", "INSTALLER", "RECORD")]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    site_packages = __import__("pathlib").Path(purelib)
    ours = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    (site_packages / "zz_bertcore_base.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    for (dist, ep_name, module), source in HOSTILE.items():
        install_fake(site_packages, dist, ep_name, module, source)
    # A package that is no head plugin, for `bertcore install` to build and warn about.
    package = root / "not-a-plugin"
    package.mkdir()
    (package / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "not-a-plugin"
        version = "1.0"
        [tool.setuptools]
        py-modules = ["not_a_plugin"]
    '''))
    (package / "not_a_plugin.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "BERTCORE_"))}
    env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    out = subprocess.run([str(python), "-c", SCRIPT, str(package)], capture_output=True, text=True,
                         env=env, cwd=root, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the script failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_impostor_of_an_official_head_is_listed_and_never_loaded(hostile_env):
    heads = {(h["name"], h["distribution"]): h for h in json.loads(hostile_env["heads"]["out"])}
    assert heads[("classification", "bertcore-classification")]["error"] is None
    assert "belongs to the official bertcore-classification" in heads[("classification", "bertcore-turbo-classifier")]["error"]
    # its other heads are skipped with it (before: "skipped", yet turbo-extra loaded)
    assert "also registers the official head name 'classification'" in \
        heads[("turbo-extra", "bertcore-turbo-classifier")]["error"]
    assert hostile_env["classification_module"] == "bertcore_classification"
    message = hostile_env["get_classification"]
    assert "the saved file /saved/heads/x/head.json" in message and "bertcore-turbo-classifier" in message


def test_two_claimants_are_both_reported_and_neither_loads(hostile_env):
    heads = {(h["name"], h["distribution"]): h for h in json.loads(hostile_env["heads"]["out"])}
    for dist in ("scorer-a", "scorer-b"):
        assert "'scorer' is claimed by scorer-a" in heads[("scorer", dist)]["error"]
    assert "scorer-a" in hostile_env["get_scorer"] and "scorer-b" in hostile_env["get_scorer"]


def test_misspelt_hook_and_exit_at_import_are_listed(hostile_env):
    heads = {(h["name"], h["distribution"]): h for h in json.loads(hostile_env["heads"]["out"])}
    assert "defines no register_heads hook (it implements register_head" in heads[("typo", "bertcore-typo")]["error"]
    assert "SystemExit: bye" in heads[("quitter", "bertcore-quitter")]["error"]
    assert heads[("qa", "bertcore-qa")]["error"] is None


def test_uninstall_refuses_what_is_no_head_plugin(hostile_env):
    other = hostile_env["uninstall safetensors>=0.1"]     # a dependency bertcore needs, not a plugin
    assert other["code"] == 2 and "safetensors is not a head plugin" in other["err"]
    assert "running:" not in other["err"] and hostile_env["safetensors_still_installed"]
    core = hostile_env["uninstall bertcore==0.1.0"]
    assert core["code"] == 2 and "is bertcore itself" in core["err"] and "running:" not in core["err"]
    both = hostile_env["uninstall scorer"]
    assert both["code"] == 2 and "claimed by scorer-a and scorer-b" in both["err"]


def test_uninstall_removes_the_named_plugin_for_real(hostile_env):
    assert hostile_env["uninstall scorer-a"]["code"] == 0
    assert hostile_env["scorer-a_installed"] is None
    assert hostile_env["scorer_after"] == "scorer_b"       # the name is no longer shared


def test_install_warns_about_a_package_without_a_bertcore_entry_point(hostile_env):
    install = hostile_env["install"]
    assert install["code"] == 0, install["err"][-2000:]
    assert "warning: not-a-plugin is installed but declares no `bertcore` entry point" in install["err"]
