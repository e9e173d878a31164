"""Plugin discovery: pluggy over the ``omni.plugins`` entry-point group."""

from __future__ import annotations

from typing import Any

import pluggy

from omni_core import hookspecs

ENTRY_POINT_GROUP = "omni.plugins"


def make_plugin_manager(
    load_entry_points: bool = True, disabled: tuple[str, ...] = (), extra: list[Any] | None = None
) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs and every installed plugin, except the ``disabled`` names."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points and "*" not in disabled:
        for name in disabled:
            pm.set_blocked(name)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra or []:
        pm.register(plugin)
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Name, distribution version, hooks and channels of every loaded plugin."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        dist = dists.get(id(plugin))
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        channels: list[str] = []
        impl = getattr(plugin, "omni_channels", None)
        if callable(impl):
            channels = list(impl() or [])
        out.append(
            {
                "name": name,
                "package": dist.project_name if dist is not None else None,
                "version": dist.version if dist is not None else None,
                "hooks": hooks,
                "channels": channels,
            }
        )
    return sorted(out, key=lambda p: p["name"])


def channels(pm: pluggy.PluginManager) -> set[str]:
    names: set[str] = set()
    for result in pm.hook.omni_channels():
        names.update(result or [])
    return names
