"""The `bertcore` command: demo, finetune, pretrain, predict, heads, install, uninstall,
bench, export, embed.

One module per group of commands; in each, a command is a `cmd_<name>(args)` function
below its `add_<name>(subparsers)` argument block, and the work itself lives in the
library modules. This module gathers them and runs one (`main`), every error as one line.
"""
import argparse
import logging
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

from .. import __version__
from . import bench, demo, export, plugins, predict, train

TRAINING = ("finetune", "pretrain")   # the commands that write checkpoints to resume from
COMMANDS = {**demo.COMMANDS, **train.COMMANDS, "predict": predict.COMMANDS["predict"],
            "evaluate": predict.COMMANDS["evaluate"], **plugins.COMMANDS,
            **bench.COMMANDS, **export.COMMANDS, "embed": predict.COMMANDS["embed"]}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as every other error here: its own print the
    usage block first, twenty lines for finetune. Subcommands' parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bertcore", description="BERT encoder core with pluggable task heads.")
    parser.add_argument("--version", action="version", version=f"bertcore {__version__}")
    debug_help = "show the traceback of an error (also BERTCORE_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}   # name: its parser, whose errors name its own --help
    for name, (add, _) in COMMANDS.items():
        # --debug after the command too (`bertcore demo --quick --debug`), as the errors'
        # "(--debug shows where)" invites; SUPPRESS: left out there, the one before stands
        parser.commands[name] = add(sub)
        parser.commands[name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `timeout`'s stop) in a training command: it unwinds as
    Ctrl-C does, so the run says where its last checkpoint is, and exits 143."""


@contextmanager
def _sigterm_as_interrupt(command: str):
    """While a training command runs, SIGTERM raises _Terminated (only in this process:
    a forked child that inherits the handler dies as SIGTERM's default would)."""
    if command not in TRAINING or threading.current_thread() is not threading.main_thread():
        yield
        return
    import os
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:
            os._exit(128 + signum)
        raise _Terminated()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(args, err: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM: where the last checkpoint is and how to go on from it, or, when
    the run wrote none yet, that there is nothing to --resume."""
    how, code = ("terminated (SIGTERM)", 143) if isinstance(err, _Terminated) else ("interrupted", 130)
    where = getattr(args, "output", None)
    hint = ""
    if args.command in TRAINING and where:
        from pathlib import Path

        from ..runfolder import checkpoint_step, find_checkpoint
        try:
            folder = find_checkpoint(Path(where) / "last")   # last/, or one a crash left beside it
            hint = (f"; the last checkpoint is in {folder} (step {checkpoint_step(folder)}): run the same command "
                    "with --resume to continue")
        except Exception:   # none yet (stopped before the first save), or none complete
            hint = (f"; no checkpoint was written to {where}/last yet, so there is nothing to resume: run the "
                    "same command without --resume to start again")
    print(f"bertcore {args.command}: {how}{hint}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    """Run one command. Every error is one line on stderr and exit 2 (1 for one that is
    not the user's, 130 for Ctrl-C, 143 for SIGTERM in a training command); --debug (before
    or after the command) or BERTCORE_DEBUG=1 shows the traceback."""
    import os

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:   # said by the command's parser: `bertcore export --help` lists what export takes
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug = args.debug or os.environ.get("BERTCORE_DEBUG", "") not in ("", "0")
    logger = logging.getLogger("bertcore")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("bertcore: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        with warnings.catch_warnings(), _sigterm_as_interrupt(args.command):
            if not debug:
                warnings.showwarning = _show_warning
            return COMMANDS[args.command][1](args) or 0
    except BrokenPipeError:   # `bertcore heads --json | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # nor at exit's flush
        return 1
    except KeyboardInterrupt as err:
        return _interrupted(args, err)
    except Exception as err:
        if debug:
            raise
        print(f"bertcore {args.command}: error: {_one_line(err)}", file=sys.stderr)
        user = isinstance(err, (ValueError, OSError, KeyError, TypeError, FloatingPointError, ImportError,
                                RuntimeError))
        return 2 if user else 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, like the errors (Python's own shows the source file and line
    of the code that warned, which is not the user's to fix; --debug keeps it)."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    print(f"bertcore: warning: {kind}{' '.join(str(message).split())}", file=sys.stderr)


class _StderrHandler(logging.StreamHandler):
    """Log records to whatever sys.stderr is when they are emitted (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _one_line(err: BaseException) -> str:
    """An exception as one line: KeyError's message without quotes, the type where the
    message alone would not say what happened, and a pointer to --debug for the rest."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or type(err).__name__
    known = (ValueError, OSError, KeyError, FloatingPointError)
    return text if isinstance(err, known) else f"{type(err).__name__}: {text} (--debug shows where)"
