"""Plugin loading and the head registry.

Plugins are modules named by entry points in the `bertcore` group; each implements
the `register_heads(register)` hook (see `hookspecs.py`). Loading is lazy and runs
once per process, on the first `list_heads()` / `create_head()` call:

    entry points ──name rules, core range──▶ import ──▶ PluginManager.register
        └─ register_heads(register=...) per plugin ──▶ {head name: Head subclass}

Anything that goes wrong with one plugin (failing import, a core-version range
that excludes this bertcore, no `register_heads` hook, a name it may not use, an
exception in its hook) is recorded as a `HeadInfo` with `error` set and skipped;
the other heads still load. `BERTCORE_PLUGINS=a,b` loads only those plugins
(entry-point or distribution names) besides the built-ins; `BERTCORE_PLUGINS=`
loads the built-ins only.

Names never resolve by load order. An official name (`OFFICIAL`) belongs to its
distribution: any other distribution that uses it is skipped, all of its heads. A name
that two distributions claim resolves to neither, and both are listed with the error.
"""
import dataclasses
import difflib
import importlib
import importlib.metadata as metadata
import inspect
import logging
import os
import re
import sys
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import pluggy
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from . import hookspecs
from .heads import Head, HeadInfo

logger = logging.getLogger(__name__)

GROUP = "bertcore"                 # entry-point group and pluggy project name
CORE = "bertcore"                  # the core distribution; its entry points are the built-ins
# The core's own heads, registered from these modules rather than through the core's entry
# points, so a stale editable install (old entry-point metadata) or an uninstalled tree still has them.
BUILTIN_MODULES = {"mlm": "bertcore.mlm"}
ENV_VAR = "BERTCORE_PLUGINS"
# A head name is typed after --head and names a folder under heads/ in a saved model.
HEAD_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
REQUIRES_ATTR = "BERTCORE_REQUIRES"  # optional module attribute: supported core range, e.g. ">=0.1,<0.2"

# Head and entry-point names that belong to one distribution each. Another
# distribution that uses one is skipped, whatever order the entry points come in,
# so an impostor can neither shadow an official head nor be loaded in its place.
OFFICIAL = {
    "mlm": CORE,
    "classification": "bertcore-classification",
    "qa": "bertcore-qa",
    "ner": "bertcore-ner",
    "nsp": "bertcore-nsp",
    "embedding": "bertcore-embedding",
}


class HeadNotFoundError(ValueError):
    """`create_head` / `TaskModel.from_pretrained` asked for a head that is not loaded."""


class HeadDistributionError(HeadNotFoundError):
    """The installed head of that name comes from another distribution than the one asked for
    (e.g. the one a saved model's head.json records)."""


@dataclass
class PluginFilter:
    """What `BERTCORE_PLUGINS` did in this process (`plugin_filter()`)."""

    value: str                                       # the variable as set
    skipped: list = field(default_factory=list)      # (entry-point name, distribution, version) not loaded
    unknown: list = field(default_factory=list)      # names in it that match no installed plugin


@dataclass
class _State:
    pm: pluggy.PluginManager | None = None
    plugins: dict = field(default_factory=dict)     # plugin name -> (distribution, version)
    failed: list = field(default_factory=list)      # HeadInfo of plugins that did not load
    filter: PluginFilter | None = None              # None: BERTCORE_PLUGINS is not set
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
    return canonicalize_name(name)


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


def plugin_filter() -> PluginFilter | None:
    """What `BERTCORE_PLUGINS` left out in this process, and the names in it that match
    nothing installed; None when the variable is not set."""
    get_plugin_manager()
    return _state.filter


def _load() -> None:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    _state.pm, _state.plugins, _state.failed, _state.heads = pm, {}, [], None
    eps = entry_points()
    claims = defaultdict(set)                        # entry-point name -> distributions
    for ep in eps:
        claims[ep.name].add(_dist_of(ep)[0])
    allowed = _start_filter(eps)
    # Built-ins first: no entry point can take their names or their modules.
    for name, module_name in BUILTIN_MODULES.items():
        error = _register(importlib.import_module(module_name), name, CORE, core_version())
        if error is not None:
            _state.failed.append(HeadInfo(name, core_version(), CORE, "", error))
    # Core, then official heads, then the rest: a module two entry points name loads under its owner's name.
    for ep in sorted(eps, key=lambda ep: (not _is_core(ep), _dist_of(ep)[0] not in OFFICIAL.values(),
                                          ep.name, _dist_of(ep)[0])):
        dist, version = _dist_of(ep)
        if _is_core(ep) and ep.name in BUILTIN_MODULES:
            continue                                     # registered above, from the running code
        if not _is_core(ep) and allowed is not None and not {canonical(ep.name), dist} & allowed:
            _state.filter.skipped.append((ep.name, dist, version))
            continue
        error = _name_error("entry-point name", ep.name, dist, claims[ep.name])
        error = error or _check_declared_range(getattr(ep, "dist", None), dist)
        error = error or _load_plugin(ep, dist, version)
        if error is not None:
            error = _one_line(error)
            logger.warning("bertcore plugin %s (%s %s) skipped: %s", ep.name, dist, version, error)
            _state.failed.append(HeadInfo(ep.name, version, dist, "", error))


def _load_plugin(ep, dist: str, version: str) -> str | None:
    """Import the object `ep` names, check its core range and register it; an error string
    for anything that goes wrong there, since one broken plugin must not take down the others
    (a lazy module whose attributes raise, an entry point naming None, ...)."""
    try:
        module = ep.load()
    except (Exception, SystemExit) as err:  # any import-time failure must not break the others
        fix = f"reinstall {dist} or remove it (`bertcore uninstall {dist}`)" if dist != "unknown" else \
            "reinstall or remove the package that declares this entry point"
        return f"cannot import {ep.value}: {type(err).__name__}: {err}; {fix}"
    try:
        return (_check_range(getattr(module, REQUIRES_ATTR, None), f"{ep.value}.{REQUIRES_ATTR} is")
                or _register(module, ep.name, dist, version))
    except Exception as err:
        return (f"{ep.value} cannot be read as a plugin ({type(err).__name__}: {err}); point the entry point "
                "at a module with a `register_heads` hook")


def _one_line(text: str) -> str:
    """A plugin's error on one line: exception messages may span several (numpy's do), and
    `bertcore heads` prints one row per head, the log one line per plugin."""
    return " ".join(str(text).split())


def _start_filter(eps) -> set[str] | None:
    """The names BERTCORE_PLUGINS allows (None: no filter). Unknown ones are kept: a misspelt
    name loads nothing, so `bertcore heads` and a missing head's error name them."""
    value = os.environ.get(ENV_VAR)
    _state.filter = None if value is None else PluginFilter(value)
    if value is None:
        return None
    allowed = {canonical(n.strip()) for n in value.split(",") if n.strip()}
    known = {canonical(ep.name) for ep in eps} | {_dist_of(ep)[0] for ep in eps}
    _state.filter.unknown = sorted(allowed - known)
    return allowed


def _name_error(kind: str, name: str, dist: str, claimants) -> str | None:
    """Why `dist` may not use `name` (None: it may). `claimants`: every distribution using it."""
    if kind == "head name" and not HEAD_NAME.match(name):  # whitespace broke the `bertcore heads` table
        return (f"{kind} {name!r} is not letters, digits, '_', '-' or '.', so a command line or a folder cannot "
                f"carry it; {dist} is skipped: ask its author for such a name")
    owner = OFFICIAL.get(name)
    if owner is not None and canonical(dist) != owner:
        return (f"{kind} {name!r} belongs to the official {owner}, not {dist}; {dist} is skipped: "
                f"uninstall it (`bertcore uninstall {dist}`) or ask its author for another name")
    if owner is None and len(set(claimants)) > 1:
        return (f"{kind} {name!r} is claimed by {' and '.join(sorted(claimants))}, so it loads from none of "
                "them; uninstall all but one (`bertcore uninstall <distribution>`)")
    return None


def _register(plugin, name: str, distribution: str, version: str) -> str | None:
    """Register `plugin` under `name`; an error string when pluggy refuses it or it brings
    no `register_heads` hook (a misspelt hook would make the plugin silently useless)."""
    pm = _state.pm
    if plugin is None:            # pluggy takes None for "no plugin" and fails on it
        return "it is None, not a module; point the entry point at the module with the register_heads hook"
    if pm.is_registered(plugin):  # two entry points name one module
        other = pm.get_name(plugin)
        owner = _state.plugins.get(other, ("another distribution",))[0]
        return f"its module is already loaded as plugin {other!r} from {owner}; point the entry point at its own module"
    if pm.get_plugin(name) is not None:
        owner = _state.plugins.get(name, ("another distribution",))[0]
        return f"plugin name {name!r} is already taken by {owner}; uninstall one of them"
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as err:  # e.g. register_heads(self, registr)
        return f"its register_heads does not match the hook `register_heads(register)`: {err}"
    except Exception:  # e.g. an attribute that raises when pluggy reads it: undo the half registration
        if pm.get_plugin(name) is plugin:
            pm.unregister(name=name)
        raise
    if not any(caller.name == "register_heads" for caller in pm.get_hookcallers(plugin) or []):
        others = [caller.name for caller in pm.get_hookcallers(plugin) or []]
        pm.unregister(plugin)
        if others:
            hint = f" (it implements {', '.join(others)}: misspelt?)"
        elif callable(getattr(plugin, "register_heads", None)):
            hint = " (its register_heads lacks the @bertcore.hookimpl decorator)"
        else:
            hint = ""
        return (f"defines no register_heads hook{hint}; a plugin needs "
                "`@bertcore.hookimpl` on `def register_heads(register)`")
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

def _check_declared_range(dist, name: str) -> str | None:
    """Check the plugin's `Requires-Dist: bertcore...` (all that apply, markers evaluated)
    before importing it: a plugin made for another bertcore is never run."""
    specs = SpecifierSet()
    for line in (getattr(dist, "requires", None) or []):
        try:
            requirement = Requirement(line)
        except InvalidRequirement as err:
            return f"{name} declares an unreadable requirement {line!r}: {err}; reinstall a fixed release"
        applies = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        if canonical(requirement.name) == CORE and applies:
            specs &= requirement.specifier
    return _check_range(str(specs), f"{name} declares")


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


def version_in_range(version: str, spec: str) -> bool:
    """Whether `version` satisfies a PEP 440 specifier such as ">=0.1,<0.2" (pre-releases
    count: a development core still loads its plugins). ValueError when either is unreadable."""
    return SpecifierSet(spec).contains(Version(version), prereleases=True)


# ---- the head registry ------------------------------------------------------------------

def _heads() -> dict:
    with _lock:
        pm = get_plugin_manager()
        if _state.heads is not None:
            return _state.heads
        claims, errors = defaultdict(dict), []     # head name -> {Head subclass: HeadInfo}
        plugin_of, impostors = {}, {}              # Head subclass -> plugin; impostor plugin -> the name it took
        for impl in pm.hook.register_heads.get_hookimpls():
            dist, version = _state.plugins.get(impl.plugin_name, ("unknown", "unknown"))
            found = []
            try:
                returned = impl.function(register=found.append)
            except (Exception, SystemExit) as err:
                errors.append(HeadInfo(impl.plugin_name, version, dist, "",
                                       _one_line(f"register_heads raised {type(err).__name__}: {err}")))
                continue
            if returned is not None:   # `return [MyHead]` (or a `yield`) registers nothing: say so, not silence
                message = _one_line(f"register_heads returned {_short(returned)} instead of None; it must call "
                                    "register(HeadType) for each head it brings (returned heads are not registered)")
                # Listed under the returned heads' names, so create_head("that name") says why it is missing.
                names = [t.name for t in (returned if isinstance(returned, (list, tuple)) else [returned])
                         if isinstance(t, type) and issubclass(t, Head) and isinstance(t.name, str) and t.name]
                errors += [HeadInfo(n, version, dist, "", message) for n in names or [impl.plugin_name]]
            for head_type in found:
                if not (isinstance(head_type, type) and issubclass(head_type, Head)
                        and isinstance(head_type.name, str) and head_type.name):
                    errors.append(HeadInfo(impl.plugin_name, version, dist, "",
                                           f"registered {head_type!r}, which is not a Head subclass with a name"))
                else:
                    claims[head_type.name][head_type] = HeadInfo(head_type.name, version, dist,
                                                                 head_type.description)
                    plugin_of[head_type] = impl.plugin_name
        heads = {}
        for name, claimants in claims.items():
            labels = {f"{info.distribution} ({t.__module__}.{t.__qualname__})" for t, info in claimants.items()}
            for head_type, info in claimants.items():
                error = _name_error("head name", name, info.distribution, labels if len(claimants) > 1 else [])
                if error is None:
                    heads[name] = (head_type, info)
                else:
                    errors.append(dataclasses.replace(info, error=error))
                    if OFFICIAL.get(name) not in (None, canonical(info.distribution)):
                        impostors[_origin(plugin_of[head_type], info)] = name
        # A distribution that registers an official head name is an impostor: none of its
        # heads load, as its error says ("... is skipped"), not only the name it took.
        for name, (head_type, info) in list(heads.items()):
            taken = impostors.get(_origin(plugin_of[head_type], info))
            if taken is not None:
                del heads[name]
                errors.append(dataclasses.replace(info, error=(
                    f"{_origin(plugin_of[head_type], info)} also registers the official head name {taken!r}, so "
                    f"none of its heads load; uninstall {info.distribution} (`bertcore uninstall {info.distribution}`)")))
        for info in errors:
            logger.warning("bertcore head %s (%s) skipped: %s", info.name, info.distribution, info.error)
        _state.heads, _state.head_errors = heads, errors
        return heads


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _origin(plugin: str, info: HeadInfo) -> str:
    """Who answers for a head: its distribution; for a run-time plugin (all share "local")
    or an entry point without one ("unknown"), the plugin itself."""
    return f"plugin {plugin}" if info.distribution in ("local", "unknown") else info.distribution


def list_heads() -> list[HeadInfo]:
    """Every head type found: the loaded ones (error None) and the plugins or
    registrations that were skipped (error says why), sorted by name."""
    heads = _heads()
    infos = [info for _, info in heads.values()] + _state.failed + _state.head_errors
    return sorted(infos, key=lambda i: (i.name, i.error is not None, i.distribution))


def transformers_head(config: dict) -> tuple[type[Head], dict] | None:
    """(head type, options) of the installed head that imports the transformers class a
    checkpoint's config.json names (`Head.options_from_transformers`), or None."""
    claims = [(head_type, options) for head_type, _ in _heads().values()
              if (options := head_type.options_from_transformers(config)) is not None]
    return claims[0] if claims else None


def head_info(name: str) -> HeadInfo:
    """The HeadInfo of a loaded head type (version and distribution are saved with heads)."""
    return _heads()[get_head_type(name).name][1]


def get_head_type(name: str, distribution: str | None = None, source=None) -> type[Head]:
    """The Head subclass registered as `name`; a clear error when there is none.

    `distribution`: the distribution the head must come from (what a saved model's
    head.json records; None or "unknown" skips the check). `source`: the file `name`
    and `distribution` were read from, named in every error, since a saved file may
    come from anyone and its distribution name is not to be installed unseen."""
    heads = _heads()
    where = f"the saved file {source}" if source is not None else "the caller"
    wanted = canonical(distribution) if distribution and distribution != "unknown" else None
    owner = OFFICIAL.get(name)
    if wanted and owner and wanted != owner:
        raise HeadDistributionError(
            f"{where} asks for a {name!r} head from {distribution!r}, but {name!r} is the official "
            f"{owner} head and no other distribution provides it; refusing to load it: fix the "
            f"distribution in {where} to {owner!r} if it is that head, or use the plugin it was saved with")
    if name in heads:
        head_type, info = heads[name]
        if wanted and wanted != canonical(info.distribution):
            raise HeadDistributionError(
                f"{where} asks for a {name!r} head from {distribution!r}, but the installed {name!r} head "
                f"comes from {info.distribution} {info.version}; refusing to load another distribution's head: "
                f"uninstall {info.distribution} and install the plugin the head was saved with (the name "
                f"{distribution!r} is read from {where}: check it is the package you mean before installing it)")
        return head_type
    broken = [i for i in _state.failed + _state.head_errors
              if i.name == name or i.distribution == (owner or f"bertcore-{canonical(name)}")]
    if broken:
        raise HeadNotFoundError(f"head {name!r} is installed but did not load: "
                                + "; ".join(f"{i.distribution}: {i.error}" for i in broken))
    installed = ", ".join(sorted(heads)) or "none"
    hint = ""
    if _state.filter is not None:
        unknown = "".join(f"; {n!r} matches no installed plugin" for n in _state.filter.unknown)
        hint = f" ({ENV_VAR}={_state.filter.value!r} limits which plugins load{unknown})"
        held_back = next(((ep, d, v) for ep, d, v in _state.filter.skipped
                          if ep == name or canonical(d) == (owner or f"bertcore-{canonical(name)}")), None)
        if held_back:   # installed, only left out: "install it" would be the wrong fix
            raise HeadNotFoundError(f"head {name!r} is installed ({held_back[1]} {held_back[2]}) but "
                                    f"{ENV_VAR}={_state.filter.value!r} leaves it out{unknown}; add "
                                    f"{held_back[0]!r} to {ENV_VAR}, or unset it")
    close = difflib.get_close_matches(name, sorted(heads), n=3) if source is None and not owner else []
    if close:   # a typo: the fix is the spelling, not installing a package named after it
        raise HeadNotFoundError(f"no head named {name!r}; did you mean {' or '.join(close)}? "
                                f"(installed heads: {installed}){hint}")
    if owner or (not wanted and source is None):
        dist = owner or f"bertcore-{canonical(name)}"
        fix = f"Install it with `bertcore install {name}` (that is: {sys.executable} -m pip install {dist})"
    else:
        fix = (f"It is a third-party head: {where} says it comes from the distribution {distribution!r}; "
               f"check that this is the package you mean before installing it "
               f"({sys.executable} -m pip install <that package>)")
    raise HeadNotFoundError(f"no head named {name!r}{' (asked for by ' + where + ')' if source else ''}; "
                            f"installed heads: {installed}{hint}. {fix}")


def create_head(name: str, config, **kwargs) -> Head:
    """A new head of type `name` for an encoder with this BertConfig; an option the head
    does not take is named with those it does.

    >>> head = create_head("classification", cfg, labels=["neg", "pos"])
    """
    head_type = get_head_type(name)
    parameters = inspect.signature(head_type.__init__).parameters.values()
    accepted = [p.name for p in parameters if p.name not in ("self", "config")
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters):
        raise ValueError(f"the {name} head has no option {unknown[0]!r}; its options: {', '.join(accepted) or 'none'}")
    return head_type(config, **kwargs)


def register_plugin(plugin, name: str | None = None, distribution: str = "local",
                    version: str = "0") -> str:
    """Register a plugin object (module or class with `@hookimpl` functions) at run time,
    e.g. in a test or a notebook. Returns its plugin name for `unregister_plugin`."""
    with _lock:
        get_plugin_manager()
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        error = _register(plugin, name, distribution, version)
        if error:
            raise ValueError(f"cannot register plugin {name!r}: {error}")
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


# ---- which distribution a name means (`bertcore uninstall`) ------------------------------

def plugin_distribution(name: str) -> str:
    """The installed head-plugin distribution that `name` means: an official head's own
    distribution, a plugin distribution named so (a requirement string is fine), else the one
    providing the head or entry point `name`. ValueError for the core, for a package that is
    not a head plugin, and for a name several distributions claim."""
    try:
        requirement = Requirement(name)
    except InvalidRequirement as err:
        raise ValueError(f"cannot read {name!r} as a head name or a requirement: {err}") from None
    wanted = canonical(requirement.name)
    plugins = defaultdict(set)                      # plugin distribution -> its entry-point names
    for ep in entry_points():
        plugins[_dist_of(ep)[0]].add(ep.name)
    bare = requirement.name == name.strip()
    if wanted == CORE or (bare and OFFICIAL.get(name) == CORE):
        raise ValueError(f"{name!r} is bertcore itself (the mlm head is built in); `bertcore uninstall` removes "
                         f"head plugins only (to remove bertcore, run `{sys.executable} -m pip uninstall bertcore`)")
    if bare and name in OFFICIAL:
        candidates = {OFFICIAL[name]}
    elif wanted in plugins:
        candidates = {wanted}
    else:
        # Only now import the plugins: removing one by its distribution name must work even
        # when it breaks on import.
        infos = [i for i in list_heads() if i.name == requirement.name and i.distribution != "unknown"]
        ok = [i for i in infos if i.error is None]
        candidates = ({ok[0].distribution} if ok else {i.distribution for i in infos}
                      or {d for d, names in plugins.items() if wanted in map(canonical, names)}
                      or {f"bertcore-{wanted}"} & set(plugins))
    if len(candidates) > 1:
        raise ValueError(f"{name!r} is claimed by {' and '.join(sorted(candidates))}; "
                         "name the distribution to remove (`bertcore uninstall <distribution>`)")
    if not candidates:
        _not_a_plugin(name, wanted)
    dist = candidates.pop()
    if dist not in plugins:
        _not_a_plugin(name, dist)
    installed = metadata.version(dist) if _installed(dist) else None
    if installed and requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        raise ValueError(f"{dist} {installed} is installed, which is not {requirement.specifier}; "
                         f"to remove it, run `bertcore uninstall {dist}`")
    return dist


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _not_a_plugin(name: str, dist: str):
    if _installed(dist):
        raise ValueError(f"{dist} is not a head plugin (it declares no `{GROUP}` entry point); `bertcore uninstall` "
                         f"removes head plugins only (use `{sys.executable} -m pip uninstall {dist}` for other packages)")
    raise ValueError(f"no installed head plugin is named {name!r}; `bertcore heads` lists them")
