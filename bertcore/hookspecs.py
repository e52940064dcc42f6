"""The hooks a bertcore plugin may implement (pluggy).

A plugin is a module named by an entry point in the `bertcore` group:

    [project.entry-points.bertcore]
    ner = "bertcore_ner"

and implements the hook with the `hookimpl` marker:

    from bertcore import Head, hookimpl

    @hookimpl
    def register_heads(register):
        register(NerHead)

Hooks are called with keyword arguments only. A plugin that implements no hook
named exactly `register_heads` (a misspelt name, a missing `@hookimpl`) brings no
heads: `bertcore heads` lists it as "defines no register_heads hook".
"""
import pluggy

hookspec = pluggy.HookspecMarker("bertcore")
hookimpl = pluggy.HookimplMarker("bertcore")


@hookspec
def register_heads(register):
    """Register head types: call `register(HeadType)` once for each `Head` subclass
    this plugin brings. `HeadType.name` is the name users pass to `create_head`."""
