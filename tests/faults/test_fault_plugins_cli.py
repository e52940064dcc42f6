"""Fault suite, plugins and the commands around them: broken plugins installed as pip lays
them out (a dist-info with entry_points.txt on sys.path), `bertcore install` of paths pip
cannot install, and bad flags of `bench` and `demo`. Each is listed or refused in one line
naming the problem and the fix, before any real work, and the other plugins still load."""
import json
import subprocess
import sys
import textwrap

import pytest

from bertcore import cli, plugins
from bertcore.cli import main
from cli_testing import one_line_error


@pytest.fixture
def install_fake(tmp_path, monkeypatch):
    """install_fake(dist, entry point value, {module: source}): a distribution on sys.path as
    pip lays it out; the registry loads afresh, and forgets it after the test."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules = []

    def install(dist, value, sources, ep_name=None):
        for module, source in sources.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[bertcore]\n{ep_name or value.split(':')[0]} = {value}\n")
        plugins.reset_plugins()
    yield install
    for module in modules:
        sys.modules.pop(module, None)
    plugins.reset_plugins()


def heads_json(capsys):
    assert main(["heads", "--json"]) == 0
    captured = capsys.readouterr()
    return {(h["name"], h["distribution"]): h for h in json.loads(captured.out)}, captured.err


def test_entry_point_naming_none_or_a_module_whose_attributes_raise_leaves_the_others(install_fake, capsys):
    # was: pluggy's AssertionError / the module's ImportError ended `bertcore heads` (exit 1), every head gone
    install_fake("bertcore-nothing", "nothing_mod:plugin", {"nothing_mod": "plugin = None\n"}, ep_name="nothing")
    install_fake("bertcore-lazy", "lazy_mod", {"lazy_mod": '''
        def __getattr__(name):
            raise ImportError(f"lazy attribute {name} needs a missing package")
        def __dir__():
            return ["register_heads"]
    '''})
    heads, _ = heads_json(capsys)
    assert "is None, not a module" in heads[("nothing", "bertcore-nothing")]["error"]
    assert "lazy attribute" in heads[("lazy_mod", "bertcore-lazy")]["error"]
    assert "register_heads" in heads[("lazy_mod", "bertcore-lazy")]["error"]
    assert heads[("qa", "bertcore-qa")]["error"] is None
    assert plugins.get_head_type("ner").name == "ner"


def test_a_plugin_error_of_several_lines_is_one_line_with_the_fix(install_fake, capsys):
    install_fake("bertcore-multi", "multi_mod", {"multi_mod": '''
        raise ImportError("the extension failed to load.\\n\\nIMPORTANT: read this\\n  and this")
    '''})
    assert main(["heads"]) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if "bertcore-multi" in line)
    assert "IMPORTANT: read this and this" in row                      # was: the row went on over three lines
    assert "bertcore uninstall bertcore-multi" in row                  # the fix: reinstall or remove it
    warning = next(line for line in captured.err.splitlines() if "multi_mod" in line)
    assert "and this" in warning


def test_heads_json_stays_json_when_a_plugin_prints_while_loading(install_fake, capsys):
    install_fake("bertcore-chatty", "chatty_mod", {"chatty_mod": '''
        print("chatty plugin 2.0 loaded! visit example.org")
        from bertcore import Head, hookimpl
        class Chatty(Head):
            name, description = "chatty", "prints"
        @hookimpl
        def register_heads(register):
            print("registering chatty")
            register(Chatty)
    '''})
    heads, err = heads_json(capsys)                                    # was: JSONDecodeError on stdout
    assert heads[("chatty", "bertcore-chatty")]["error"] is None
    assert "chatty plugin 2.0 loaded" in err and "registering chatty" in err


def test_register_heads_that_returns_its_heads_instead_of_registering_them_is_listed(install_fake, capsys):
    install_fake("bertcore-returner", "returner_mod", {"returner_mod": '''
        from bertcore import Head, hookimpl
        class Returned(Head):
            name, description = "returned", "never registered"
        @hookimpl
        def register_heads(register):
            return [Returned]
    '''})
    heads, _ = heads_json(capsys)                                      # was: no row at all, no error anywhere
    error = heads[("returned", "bertcore-returner")]["error"]
    assert "returned [<class 'returner_mod.Returned'>]" in error and "register(HeadType)" in error
    with pytest.raises(plugins.HeadNotFoundError, match="register_heads returned"):
        plugins.get_head_type("returned")


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "no-such-plugin", "does not exist"),
    (lambda tmp: tmp.joinpath("empty").mkdir() or tmp / "empty", "without a pyproject.toml or setup.py"),
    (lambda tmp: tmp.joinpath("extras").mkdir() or f"{tmp / 'extras'}[dev]", "without a pyproject.toml")])
def test_install_of_a_path_pip_cannot_install_is_one_line_before_pip(tmp_path, monkeypatch, capsys, make, message):
    monkeypatch.setattr(cli.plugins, "_pip", lambda *a, **k: pytest.fail(f"pip ran: {a}"))   # was: pip's 4 lines
    target = str(make(tmp_path))
    assert main(["install", target]) == 2
    line = one_line_error(capsys.readouterr().err, "install")
    assert message in line and "head plugin" in line


def test_install_editable_of_a_name_from_the_index_is_refused_before_pip(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli.plugins, "_pip", lambda *a, **k: calls.append(a) or (0, ""))
    assert main(["install", "-e", "bertcore-sentiment-xl"]) == 2          # was: -e dropped without a word
    line = one_line_error(capsys.readouterr().err, "install")
    assert "-e installs a local folder" in line and "drop -e" in line and calls == []
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'my-head'\n")
    assert main(["install", "-e", str(tmp_path)]) == 0                     # a folder keeps its -e
    assert calls[-1][-2:] == ("-e", str(tmp_path.resolve()))


@pytest.fixture
def no_runs(monkeypatch):
    """Benchmarks and the demo fail the test if they start: only the flags are checked here."""
    import bertcore.demo
    from bertcore.bench import attention, encoder, finetune, layer_norm
    for module, name in ((attention, "run"), (layer_norm, "run"), (layer_norm, "run_bias_gelu"),
                         (encoder, "run"), (finetune, "run"), (bertcore.demo, "run_demo")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("the work started"))


def test_bench_on_cuda_without_a_gpu_is_a_user_error(monkeypatch, capsys, no_runs):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["bench", "kernels", "--device", "cuda", "--no-write"]) == 2   # was: exit 1, AssertionError
    assert "--device cpu" in one_line_error(capsys.readouterr().err, "bench")


@pytest.mark.parametrize("argv", [["bench", "kernels"], ["demo", "--quick"]])
@pytest.mark.parametrize("where, message", [("file", "is a file, not a folder; name a folder"),
                                            ("file/sub", "is a file, not a folder"),
                                            ("", "empty; name a folder")])
def test_output_that_cannot_be_a_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys, no_runs,
                                                                     argv, where, message):
    # was: bench said "[Errno 20] Not a directory" and demo "[Errno 17] File exists" (no fix);
    # an empty --output (an unset variable) ran and wrote into the current folder
    (tmp_path / "file").write_text("mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--output", where])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --output" in err and message in err
    assert (tmp_path / "file").read_text() == "mine"


def test_demo_into_a_read_only_folder_is_refused_before_the_work(read_only_disk, capsys, no_runs):
    # was: the demo ran its minutes of training, then failed writing results.md
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--quick", "--output", str(read_only_disk / "results")])
    assert exit_.value.code == 2
    assert "read-only or not yours" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_demo_steps_scale_must_be_positive(value, capsys, no_runs):
    # was: -1 and 0 ran every budget at 2 steps; nan said "cannot convert float NaN to integer"
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--quick", "--steps-scale", value])
    assert exit_.value.code == 2
    assert "argument --steps-scale" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda tmp: (tmp.joinpath("model.bin").write_bytes(b"\0"), tmp / "model.bin")[1],
     "is a file; give the checkpoint"),
    (lambda tmp: tmp.joinpath("empty").mkdir() or tmp / "empty", "holds no config.json")])
def test_demo_encoder_that_is_no_checkpoint_is_one_line_before_the_work(tmp_path, capsys, no_runs, make, message):
    # was: after reading the corpora, "model.bin lacks the special token [PAD]" (read as a vocabulary)
    encoder = make(tmp_path)
    assert main(["demo", "--quick", "--encoder", str(encoder), "--output", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys.readouterr().err, "demo")


def test_python_m_bertcore_runs_no_plugin_lying_in_the_current_folder(tmp_path):
    """Before: `python -m bertcore heads` in a folder holding a dist-info and its module (an
    unpacked download) imported that module as a plugin: its code ran. `python -m` puts the
    current folder first on sys.path; the console script does not."""
    info = tmp_path / "evil-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[bertcore]\nevil = evil_mod\n")
    marker = tmp_path / "ran"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    out = subprocess.run([sys.executable, "-m", "bertcore", "heads"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "classification" in out.stdout          # the installed plugins still load
    assert not marker.exists() and "evil" not in out.stdout + out.stderr


def test_a_head_name_a_command_line_cannot_carry_is_listed_as_an_error(install_fake, capsys):
    install_fake("bertcore-spacey", "spacey_mod", {"spacey_mod": '''
        from bertcore import Head, hookimpl
        class Spacey(Head):
            name, description = "my head\\nnext", "a name with a line break"
        @hookimpl
        def register_heads(register):
            register(Spacey)
    '''})
    assert main(["heads"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "spacey" in line or "next" in line]
    assert len(rows) == 1 and "is not letters, digits" in rows[0]      # was: the table row broke in two, loaded
    with pytest.raises(plugins.HeadNotFoundError, match="is not letters, digits"):
        plugins.get_head_type("my head\nnext")
    assert plugins.get_head_type("qa").name == "qa"


@pytest.mark.parametrize("argv", [["finetune", "--head", "classification", "--encoder", "e", "--train", "t",
                                   "--output", "o", "--batch-size", "0"], ["finetune"], ["no-such-command"]])
def test_a_usage_error_is_one_line(argv, capsys):
    # was: argparse printed finetune's usage block (a dozen lines) before the error
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("bertcore") and ": error: " in err and "--help` lists the options" in err
