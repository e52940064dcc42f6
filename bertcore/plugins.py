"""Plugin loading and the head registry.

Plugins are modules named by entry points in the `bertcore` group; each implements
the `register_heads(register)` hook (see `hookspecs.py`). Loading is lazy and runs
once per process, on the first `list_heads()` / `create_head()` call:

    entry points ──check core range──▶ import ──▶ PluginManager.register
        └─ register_heads(register=...) per plugin ──▶ {head name: Head subclass}

Anything that goes wrong with one plugin (failing import, a core-version range
that excludes this bertcore, a duplicate head name, an exception in its hook) is
recorded as a `HeadInfo` with `error` set and skipped; the other heads still load.
`BERTCORE_PLUGINS=a,b` loads only those plugins (entry-point or distribution
names) besides the built-ins; `BERTCORE_PLUGINS=` loads the built-ins only.
"""
import importlib
import importlib.metadata as metadata
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .heads import Head, HeadInfo

logger = logging.getLogger(__name__)

GROUP = "bertcore"                 # entry-point group and pluggy project name
CORE = "bertcore"                  # the core distribution; its entry points are the built-ins
BUILTIN_MODULES = {"mlm": "bertcore.heads"}   # registered even when run from an uninstalled tree
ENV_VAR = "BERTCORE_PLUGINS"
REQUIRES_ATTR = "BERTCORE_REQUIRES"  # optional module attribute: supported core range, e.g. ">=0.1,<0.2"


class HeadNotFoundError(ValueError):
    """`create_head` / `TaskModel.from_pretrained` asked for a head that is not loaded."""


@dataclass
class _State:
    pm: pluggy.PluginManager | None = None
    plugins: dict = field(default_factory=dict)     # plugin name -> (distribution, version)
    failed: list = field(default_factory=list)      # HeadInfo of plugins that did not load
    heads: dict | None = None                       # head name -> (Head subclass, HeadInfo)
    head_errors: list = field(default_factory=list)  # HeadInfo of skipped registrations


_state = _State()
_lock = threading.RLock()


def entry_points() -> list:
    """The installed entry points of the `bertcore` group (tests replace this function)."""
    return list(metadata.entry_points(group=GROUP))


def core_version() -> str:
    import bertcore
    return bertcore.__version__


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name: `Bertcore_NER` -> `bertcore-ner`."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- loading ---------------------------------------------------------------------------

def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide PluginManager, loading the entry points on first use."""
    with _lock:
        if _state.pm is None:
            _load()
        return _state.pm


def reset_plugins() -> None:
    """Forget everything loaded; the next call loads the entry points again (tests use it)."""
    with _lock:
        global _state
        _state = _State()


def _allowed() -> set[str] | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    return {canonical(n.strip()) for n in value.split(",") if n.strip()}


def _load() -> None:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    _state.pm, _state.plugins, _state.failed, _state.heads = pm, {}, [], None
    allowed = _allowed()
    # Built-ins first, so a third-party plugin can never shadow a built-in head name.
    for ep in sorted(entry_points(), key=lambda ep: (not _is_core(ep), ep.name)):
        dist, version = _dist_of(ep)
        if not _is_core(ep) and allowed is not None and not {canonical(ep.name), dist} & allowed:
            continue
        error = _check_range(_declared_range(getattr(ep, "dist", None)), f"{dist} declares")
        if error is None:
            try:
                module = ep.load()
            except Exception as err:  # any import-time failure must not break the others
                error = f"cannot import {ep.value}: {type(err).__name__}: {err}"
            else:
                error = _check_range(getattr(module, REQUIRES_ATTR, None), f"{ep.value}.{REQUIRES_ATTR} is")
        if error is None:
            error = _register(module, ep.name, dist, version)
        if error is not None:
            logger.warning("bertcore plugin %s (%s %s) skipped: %s", ep.name, dist, version, error)
            _state.failed.append(HeadInfo(ep.name, version, dist, "", error))
    for name, module_name in BUILTIN_MODULES.items():
        module = importlib.import_module(module_name)
        if not pm.is_registered(module) and pm.get_plugin(name) is None:
            _register(module, name, CORE, core_version())


def _register(plugin, name: str, distribution: str, version: str) -> str | None:
    try:
        _state.pm.register(plugin, name=name)
    except ValueError as err:  # pluggy: name or plugin object already registered
        owner = _state.plugins.get(name, ("another distribution",))[0]
        return f"plugin name {name!r} is already taken by {owner} ({err}); uninstall one of them"
    _state.plugins[name] = (distribution, version)
    _state.heads = None
    return None


def _is_core(ep) -> bool:
    return _dist_of(ep)[0] == CORE


def _dist_of(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return canonical(dist.name or dist.metadata["Name"] or "unknown"), dist.version or "unknown"


# ---- the core-version range a plugin declares -------------------------------------------

_REQUIREMENT = re.compile(r"^\s*bertcore\s*(?:\[[^\]]*\])?\s*\(?\s*([<>=!~][^;()]*)?\)?\s*(?:;(.*))?$", re.I)
_CLAUSE = re.compile(r"^(~=|===|==|!=|<=|>=|<|>)\s*([0-9][0-9a-zA-Z.*+!-]*)$")


def _declared_range(dist) -> str | None:
    """The version specifier of the plugin's `Requires-Dist: bertcore...`, if any."""
    for requirement in (getattr(dist, "requires", None) or []):
        match = _REQUIREMENT.match(requirement)
        if match and "extra" not in (match.group(2) or ""):
            return (match.group(1) or "").strip() or None
    return None


def _check_range(spec: str | None, who: str) -> str | None:
    if not spec:
        return None
    try:
        ok = version_in_range(core_version(), spec)
    except ValueError as err:
        return f"{who} an unreadable bertcore range {spec!r}: {err}"
    if ok:
        return None
    return (f"{who} bertcore{spec}, but this is bertcore {core_version()}; "
            "install a release of the plugin made for this bertcore")


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(x) for x in match.group(0).split("."))


def _pad(a: tuple, b: tuple) -> tuple[tuple, tuple]:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)), b + (0,) * (n - len(b))


def version_in_range(version: str, spec: str) -> bool:
    """Whether `version` satisfies a PEP 440 specifier such as ">=0.1,<0.2" (release
    numbers only; enough for a plugin's core range, and no `packaging` dependency)."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        match = _CLAUSE.match(clause)
        if not match:
            raise ValueError(f"cannot read version clause {clause!r}")
        op, value = match.groups()
        if value.endswith(".*"):
            prefix = _release(value[:-2])
            same = _pad(have, prefix)[0][:len(prefix)] == prefix
            if same != (op == "=="):
                return False
            continue
        a, b = _pad(have, _release(value))
        ok = {"==": a == b, "===": a == b, "!=": a != b, "<=": a <= b, ">=": a >= b, "<": a < b,
              ">": a > b, "~=": a >= b and a[:len(_release(value)) - 1] == b[:len(_release(value)) - 1]}[op]
        if not ok:
            return False
    return True


# ---- the head registry ------------------------------------------------------------------

def _heads() -> dict:
    with _lock:
        pm = get_plugin_manager()
        if _state.heads is not None:
            return _state.heads
        heads, errors = {}, []
        # get_hookimpls() lists plugins in registration order: the first to claim a name keeps it.
        for impl in pm.hook.register_heads.get_hookimpls():
            dist, version = _state.plugins.get(impl.plugin_name, ("unknown", "unknown"))
            found = []
            try:
                impl.function(register=found.append)
            except Exception as err:
                errors.append(HeadInfo(impl.plugin_name, version, dist, "",
                                       f"register_heads raised {type(err).__name__}: {err}"))
                continue
            for head_type in found:
                if not (isinstance(head_type, type) and issubclass(head_type, Head) and head_type.name):
                    errors.append(HeadInfo(impl.plugin_name, version, dist, "",
                                           f"registered {head_type!r}, which is not a Head subclass with a name"))
                elif head_type.name in heads:
                    other = heads[head_type.name][1].distribution
                    errors.append(HeadInfo(head_type.name, version, dist, head_type.description,
                                           f"duplicate head name {head_type.name!r}: {other} already registers it; "
                                           f"`pip uninstall {dist}` or `pip uninstall {other}`"))
                else:
                    heads[head_type.name] = (head_type, HeadInfo(head_type.name, version, dist,
                                                                 head_type.description))
        for info in errors:
            logger.warning("bertcore head %s (%s) skipped: %s", info.name, info.distribution, info.error)
        _state.heads, _state.head_errors = heads, errors
        return heads


def list_heads() -> list[HeadInfo]:
    """Every head type found: the loaded ones (error None) and the plugins or
    registrations that were skipped (error says why), sorted by name."""
    heads = _heads()
    infos = [info for _, info in heads.values()] + _state.failed + _state.head_errors
    return sorted(infos, key=lambda i: (i.name, i.error is not None))


def head_info(name: str) -> HeadInfo:
    """The HeadInfo of a loaded head type (version and distribution are saved with heads)."""
    return _heads()[get_head_type(name).name][1]


def get_head_type(name: str) -> type[Head]:
    """The Head subclass registered as `name`; a clear error when there is none."""
    heads = _heads()
    if name in heads:
        return heads[name][0]
    broken = [i for i in _state.failed + _state.head_errors
              if i.name == name or i.distribution == f"bertcore-{canonical(name)}"]
    if broken:
        raise HeadNotFoundError(f"head {name!r} is installed but did not load: {broken[0].error}")
    installed = ", ".join(sorted(heads)) or "none"
    hint = ""
    if os.environ.get(ENV_VAR) is not None:
        hint = f" ({ENV_VAR}={os.environ[ENV_VAR]!r} limits which plugins load)"
    raise HeadNotFoundError(
        f"no head named {name!r}; installed heads: {installed}{hint}. Install it with "
        f"`bertcore install {name}` (that is: {sys.executable} -m pip install bertcore-{canonical(name)})")


def create_head(name: str, config, **kwargs) -> Head:
    """A new head of type `name` for an encoder with this BertConfig.

    >>> head = create_head("classification", cfg, labels=["neg", "pos"])
    """
    return get_head_type(name)(config, **kwargs)


def register_plugin(plugin, name: str | None = None, distribution: str = "local",
                    version: str = "0") -> str:
    """Register a plugin object (module or class with `@hookimpl` functions) at run time,
    e.g. in a test or a notebook. Returns its plugin name for `unregister_plugin`."""
    with _lock:
        get_plugin_manager()
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        error = _register(plugin, name, distribution, version)
        if error:
            raise ValueError(error)
        return name


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered under `name` (its heads disappear from the registry)."""
    with _lock:
        pm = get_plugin_manager()
        if pm.get_plugin(name) is None:
            raise ValueError(f"no plugin named {name!r} is registered")
        pm.unregister(name=name)
        _state.plugins.pop(name, None)
        _state.heads = None
