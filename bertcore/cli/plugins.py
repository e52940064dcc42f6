"""`bertcore heads`, `install` and `uninstall`: the head plugins in this environment."""
import re
import subprocess
import sys
from pathlib import Path


def add_heads(sub):
    p = sub.add_parser("heads", help="list installed task heads (plugins) and their status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def cmd_heads(args) -> int:
    import contextlib
    import dataclasses
    import json

    from ..plugins import ENV_VAR, list_heads, plugin_filter
    # Loading runs the plugins' code: what they print goes to stderr, so stdout stays the table (one JSON document).
    with contextlib.redirect_stdout(sys.stderr):
        heads = list_heads()
        limited = plugin_filter()
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in heads], indent=2))
    else:
        rows = [("NAME", "VERSION", "DISTRIBUTION", "STATUS")]
        rows += [(h.name, h.version, h.distribution, "ok" if h.error is None else f"error: {h.error}") for h in heads]
        rows += [(name, version, dist, f"off: not in {ENV_VAR}") for name, dist, version in
                 (limited.skipped if limited else [])]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    if limited is not None:
        # With --json the note goes to stderr, so stdout stays one JSON document.
        out = sys.stderr if args.json else sys.stdout
        print(f"{ENV_VAR}={limited.value!r}: only these plugins load besides the built-ins", file=out)
        for name in limited.unknown:
            print(f"warning: {ENV_VAR} names {name!r}, which is no installed plugin or distribution "
                  "(check the spelling; `unset " + ENV_VAR + "` loads them all)", file=out)
    return 0


def add_install(sub):
    p = sub.add_parser("install", help="pip-install a head plugin into this environment")
    p.add_argument("packages", nargs="+", metavar="NAME|PATH",
                   help="a head name (ner -> bertcore-ner), a distribution name or requirement, or a path")
    p.add_argument("-e", "--editable", action="store_true", help="install a local path in editable mode")
    p.add_argument("-U", "--upgrade", action="store_true", help="upgrade if already installed")
    return p


def cmd_install(args) -> int:
    import json
    import tempfile
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version

    from ..plugins import GROUP, OFFICIAL, canonical
    targets, from_index = [], []
    for name in args.packages:
        target = _install_target(name)
        if args.editable and not Path(target).exists():   # pip's -e takes a folder: it was dropped without a word
            raise ValueError(f"-e installs a local folder in editable mode, and {name} resolves to {target} from "
                             "the package index; drop -e, or give the plugin's folder (e.g. heads/ner of a checkout)")
        targets += ["-e", target] if args.editable else [target]
        if name in OFFICIAL and not Path(target).exists():
            from_index.append((name, target))
    # pip's installation report names what it installed, so we can check each requested
    # package really is a head plugin (pip >= 22.2 writes one).
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        can_report = Version(metadata.version("pip")) >= Version("22.2")
        pip_args = ("install", *(["--report", str(report)] if can_report else []),
                    *(["--upgrade"] if args.upgrade else []), *targets)
        code, pip_errors = _pip(*pip_args, hold_stderr=not getattr(args, "debug", False))
        installed = json.loads(report.read_text()).get("install", []) if report.is_file() else []
    if code != 0:
        raise ValueError(_install_failed(args.packages, targets, from_index, pip_errors))
    names = {canonical(item["metadata"]["name"]) for item in installed if item.get("requested")}
    for target in targets:
        if target != "-e" and not Path(target).exists():
            try:
                names.add(canonical(Requirement(target).name))
            except InvalidRequirement:
                pass  # pip accepted it (a URL or the like); the report above names it
    for dist in sorted(names):
        try:
            found = metadata.distribution(dist).entry_points.select(group=GROUP)
        except metadata.PackageNotFoundError:
            continue
        if not list(found):
            print(f"bertcore install: warning: {dist} is installed but declares no `{GROUP}` entry point, so "
                  f"bertcore finds no head in it (a head plugin declares [project.entry-points.{GROUP}]); "
                  f"if you installed it by mistake: {sys.executable} -m pip uninstall {dist}", file=sys.stderr)
    return 0


def _install_failed(packages, targets, from_index, pip_errors: str) -> str:
    """pip's failure as one line: what did not install, pip's own ERROR lines, and the
    likely fix (the spelling of a head name, the source tree of an official head)."""
    import difflib

    from ..plugins import OFFICIAL, list_heads
    known = sorted(set(OFFICIAL) | {h.name for h in list_heads()})
    asked = ", ".join(name if target == name else f"{name} ({target})" for name, target in
                      zip(packages, [t for t in targets if t != "-e"]))
    lines = [line.strip() for line in pip_errors.splitlines() if line.strip()]
    # pip's ERROR lines; a failed build says why in indented lines only: its last two
    why = "; ".join(line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")) or \
        "; ".join(lines[-2:]) or "see --debug for pip's output"
    close = [match for name in packages if name not in known and not Path(name).exists()
             for match in difflib.get_close_matches(name, known, n=1)]
    folders = [t for t in targets if t != "-e" and Path(t).exists()]
    if folders:
        fix = (f"pip could not build {', '.join(folders)}: check its pyproject.toml ([build-system]) and that "
               "its build backend is installed; --debug shows pip's whole output")
    elif close:
        fix = f"did you mean {' or '.join(close)}? (bertcore install {' '.join(close)})"
    elif from_index:
        fix = ("the official heads ship in bertcore's source tree: from a checkout, run " + "; ".join(
            f"`{sys.executable} -m pip install <checkout>/heads/{name}`" for name, _ in from_index))
    else:
        fix = ("check the name (`bertcore heads` lists the installed heads) or give the plugin's folder or wheel; "
               "--debug shows pip's whole output")
    return f"pip could not install {asked}: {why}; {fix}"


def add_uninstall(sub):
    p = sub.add_parser("uninstall", help="pip-uninstall a head plugin from this environment")
    p.add_argument("packages", nargs="+", metavar="NAME",
                   help="a head name (ner), or a head plugin's distribution name or requirement (bertcore-ner)")
    return p


def cmd_uninstall(args) -> int:
    from ..plugins import plugin_distribution
    # Resolve every name before removing anything: one bad name removes nothing.
    dists = list(dict.fromkeys(plugin_distribution(name) for name in args.packages))
    return _pip("uninstall", "-y", *dists)[0]


def _distribution_name(name: str) -> str:
    """A bare head name is short for its distribution: `ner` -> `bertcore-ner`."""
    from ..plugins import OFFICIAL
    if name in OFFICIAL:
        return OFFICIAL[name]
    if re.fullmatch(r"[A-Za-z0-9_]+", name) and not name.lower().startswith("bertcore"):
        return f"bertcore-{name.lower()}"
    return name


def _install_target(name: str) -> str:
    """A path as given (pip's rule: it has a slash, or is a folder with a pyproject.toml or
    setup.py); an official head from the source tree bertcore was installed from, when there
    is one; else the distribution name for pip to fetch from the index."""
    import os
    if not name.strip():      # Path("") is "." : an unset shell variable would install this folder
        raise ValueError("an empty name to install; give a head name (ner), a distribution, or a path "
                         "(. for this folder)")
    if name.startswith("-"):  # pip would read it as one of its own options (--index-url=...)
        raise ValueError(f"{name!r} is not a head name, distribution or path; pip options are not passed on")
    if "://" in name or " @ " in name:   # a URL or a direct reference: pip's to resolve, not a path
        return name
    path = Path(name)
    if "/" in name or os.sep in name or name.startswith(".") or (
            path.is_dir() and any((path / f).is_file() for f in ("pyproject.toml", "setup.py"))):
        _check_local_path(Path(re.sub(r"\[[^\]]*\]$", "", name)), name)   # pip's path[extra] form too
        return str(path.resolve())
    from ..plugins import OFFICIAL
    if name in OFFICIAL:
        for tree in _source_trees():
            if (tree / "heads" / name / "pyproject.toml").is_file():
                return str(tree / "heads" / name)
    return _distribution_name(name)


def _check_local_path(path: Path, name: str) -> None:
    """Refuse a path pip cannot install before running pip (whose error spans lines and exits 1)."""
    if not path.exists():
        raise FileNotFoundError(f"{name} does not exist; give the folder of a head plugin (with a pyproject.toml), "
                                "a wheel or sdist file, or a head name such as ner")
    if path.is_dir() and not any((path / f).is_file() for f in ("pyproject.toml", "setup.py")):
        raise ValueError(f"{name} is a folder without a pyproject.toml or setup.py, so no package pip can install; "
                         "give the folder of a head plugin (bertcore's own are in heads/<name>/ of its checkout)")


def _source_trees() -> list[Path]:
    """Where bertcore's source may be: the tree around this package (a checkout, editable or
    run in place), and the folder pip installed it from (its direct_url.json, PEP 610)."""
    import json
    from importlib import metadata
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    trees = [Path(__file__).resolve().parents[2]]   # bertcore/cli/plugins.py -> the tree
    try:
        direct = json.loads(metadata.distribution("bertcore").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        direct = {}
    url = urlparse(direct.get("url", ""))
    if url.scheme == "file" and "dir_info" in direct:
        trees.append(Path(url2pathname(url.path)))
    return trees


def _pip(*pip_args, hold_stderr: bool = False) -> tuple[int, str]:
    """Run pip of the interpreter that runs bertcore, so plugins land where bertcore looks;
    its exit status, and with `hold_stderr` its stderr (warnings, a multi-line error),
    held back for a one-line error and passed on as it was when pip succeeds."""
    command = [sys.executable, "-m", "pip", *pip_args]
    print("running: " + " ".join(command), file=sys.stderr)
    if not hold_stderr:
        return subprocess.run(command).returncode, ""
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True, errors="replace")
    if done.returncode == 0 and done.stderr:
        sys.stderr.write(done.stderr)
    return done.returncode, done.stderr or ""


COMMANDS = {"heads": (add_heads, cmd_heads), "install": (add_install, cmd_install), "uninstall": (add_uninstall, cmd_uninstall)}
