"""``cidx-jobs info``: the installed backends and plugins."""

from __future__ import annotations

from cidx_jobs._plugins import Hooks

from ._output import Output


def show_info(out: Output, *, as_json: bool = False) -> int:
    from cidx_jobs import __version__

    hooks = Hooks()
    backends = sorted(hooks.backends().items())
    plugins = []
    for name, plugin in sorted(hooks.pm.list_name_plugin(), key=lambda item: str(item[0])):
        if plugin is None:
            version = "blocked"
        else:
            version = hooks.pm.version_of(str(name)) or "built in (cidx-jobs-core)"
        plugins.append((str(name), version))
    if as_json:
        out.json(
            {
                "version": __version__,
                "backends": [
                    {
                        "name": name,
                        "plugin": backend.plugin,
                        "capabilities": sorted(flag.value for flag in backend.capabilities),
                    }
                    for name, backend in backends
                ],
                "plugins": [{"name": name, "version": version} for name, version in plugins],
            }
        )
        return 0
    out.line(f"cidx-jobs-core {__version__}")
    out.line("backends:")
    for name, backend in backends:
        capabilities = ", ".join(sorted(flag.value for flag in backend.capabilities)) or "none"
        out.line(f"  {name:<12} plugin {backend.plugin}; capabilities: {capabilities}")
    out.line("plugins:")
    for name, version in plugins:
        out.line(f"  {name:<20} {version}")
    return 0
