import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertcore import cli

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


@pytest.fixture
def pip_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "run", lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    return calls


def test_install_and_uninstall_run_this_interpreters_pip(pip_calls, tmp_path):
    assert cli.main(["install", "sentiment_xl", "other-dist>=2", str(tmp_path)]) == 0
    assert pip_calls[-1] == [sys.executable, "-m", "pip", "install", "bertcore-sentiment_xl", "other-dist>=2",
                             str(tmp_path.resolve())]
    assert cli.main(["install", "ner"]) == 0          # this checkout's heads/ner
    assert pip_calls[-1][-1].endswith(str(Path("heads") / "ner"))
    assert cli.main(["uninstall", "ner"]) == 0
    assert pip_calls[-1] == [sys.executable, "-m", "pip", "uninstall", "-y", "bertcore-ner"]
    assert cli.main(["uninstall", "mlm"]) == 2         # built in
