"""The `bertcore` command: heads, install, uninstall, finetune, pretrain, predict, bench, demo.

Each command is a `cmd_<name>(args)` function below its `add_<name>(subparsers)`
argument block; the work itself lives in the library modules.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

from . import __version__


def add_demo(sub):
    p = sub.add_parser("demo", help="embed a few sentences with a real checkpoint and compare them")
    p.add_argument("--encoder", help="HF BERT checkpoint directory (default: the bundled MiniLM)")
    return p


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


def add_heads(sub):
    p = sub.add_parser("heads", help="list installed task heads (plugins) and their status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def cmd_heads(args) -> int:
    import dataclasses
    import json

    from .plugins import list_heads
    heads = list_heads()
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in heads], indent=2))
        return 0
    rows = [("NAME", "VERSION", "DISTRIBUTION", "STATUS")]
    rows += [(h.name, h.version, h.distribution, "ok" if h.error is None else f"error: {h.error}") for h in heads]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    return 0


def add_install(sub):
    p = sub.add_parser("install", help="pip-install a head plugin into this environment")
    p.add_argument("packages", nargs="+", metavar="NAME|PATH",
                   help="a head name (ner -> bertcore-ner), a distribution name or requirement, or a path")
    p.add_argument("-e", "--editable", action="store_true", help="install a local path in editable mode")
    p.add_argument("-U", "--upgrade", action="store_true", help="upgrade if already installed")
    return p


def cmd_install(args) -> int:
    targets = []
    for name in args.packages:
        target = _install_target(name)
        targets += ["-e", target] if args.editable and Path(target).exists() else [target]
    return _pip("install", *(["--upgrade"] if args.upgrade else []), *targets)


def add_uninstall(sub):
    p = sub.add_parser("uninstall", help="pip-uninstall a head plugin from this environment")
    p.add_argument("packages", nargs="+", metavar="NAME", help="a head name (ner) or distribution (bertcore-ner)")
    return p


def cmd_uninstall(args) -> int:
    from .plugins import canonical, list_heads
    owners = {h.name: h.distribution for h in list_heads()}
    dists = []
    for name in args.packages:
        dist = owners.get(name) or _distribution_name(name)
        if canonical(dist) == "bertcore":
            raise ValueError(f"{name!r} is built into bertcore itself and cannot be uninstalled")
        dists.append(dist)
    return _pip("uninstall", "-y", *dists)


def _distribution_name(name: str) -> str:
    """A bare head name is short for its distribution: `ner` -> `bertcore-ner`."""
    if re.fullmatch(r"[A-Za-z0-9_]+", name) and not name.lower().startswith("bertcore"):
        return f"bertcore-{name.lower()}"
    return name


def _install_target(name: str) -> str:
    """A path as given; a short name from this source tree's heads/NAME when there is one
    (a development checkout), else the distribution name for pip to fetch."""
    if Path(name).exists():
        return str(Path(name).resolve())
    local = Path(__file__).resolve().parent.parent / "heads" / name
    if re.fullmatch(r"[A-Za-z0-9_]+", name) and (local / "pyproject.toml").is_file():
        return str(local)
    return _distribution_name(name)


def _pip(*pip_args) -> int:
    """Run pip of the interpreter that runs bertcore, so plugins land where bertcore looks."""
    command = [sys.executable, "-m", "pip", *pip_args]
    print("running: " + " ".join(command), file=sys.stderr)
    return subprocess.run(command).returncode


COMMANDS = {"demo": (add_demo, cmd_demo), "heads": (add_heads, cmd_heads),
            "install": (add_install, cmd_install), "uninstall": (add_uninstall, cmd_uninstall)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertcore", description="BERT encoder core with pluggable task heads.")
    parser.add_argument("--version", action="version", version=f"bertcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _) in COMMANDS.items():
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command][1](args) or 0
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"bertcore {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
