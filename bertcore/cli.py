"""The `bertcore` command: heads, install, uninstall, finetune, pretrain, predict, bench, demo.

Each command is a `cmd_<name>(args)` function below its `add_<name>(subparsers)`
argument block; the work itself lives in the library modules.
"""
import argparse
import sys

from . import __version__


def add_demo(sub):
    p = sub.add_parser("demo", help="embed a few sentences with a real checkpoint and compare them")
    p.add_argument("--encoder", help="HF BERT checkpoint directory (default: the bundled MiniLM)")
    return p


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


COMMANDS = {"demo": (add_demo, cmd_demo)}


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
