"""open_persistence(): from a configuration to a facade over a backend's storage."""

from __future__ import annotations

from collections.abc import Mapping

from ._config import BackendConfig, Options, StoreSettings, parse_config, read_settings
from ._persistence import JobPersistence, make_owner_id
from ._plugins import Hooks
from .backend import Backend, Storage
from .errors import BackendNotFoundError, PluginError


def find_backend(
    config: str | Mapping[str, object] | None,
    *,
    hooks: Hooks | None = None,
    settings: StoreSettings | None = None,
) -> tuple[Backend, BackendConfig, StoreSettings]:
    """The registered backend a configuration names, what its factory receives, and the
    common settings (the configuration's options over ``settings``).

    :raises ConfigError: no configuration, or a malformed or invalid common option.
    :raises BackendNotFoundError: no installed plugin provides the backend.
    :raises PluginError: a plugin is invalid.
    """
    name, url, raw = parse_config(config)
    backends = (hooks if hooks is not None else Hooks()).backends()
    backend = backends.get(name)
    if backend is None:
        raise BackendNotFoundError(name, list(backends))
    common = Options(name, raw)
    store_settings = read_settings(common, settings)
    backend_config = BackendConfig(
        backend=name,
        url=url,
        path=common.get_str("path"),
        host=common.get_str("host"),
        port=common.get_int("port", 0, minimum=0, maximum=65535) if "port" in raw else None,
        username=common.get_str("username"),
        password=common.get_str("password"),
        options=common.remaining(),
        owner_id=make_owner_id(store_settings),
    )
    return backend, backend_config, store_settings


def open_persistence(
    config: str | Mapping[str, object] | None = None,
    *,
    hooks: Hooks | None = None,
    settings: StoreSettings | None = None,
) -> JobPersistence:
    """Open the job store that ``config`` names.

    :param config: a URL (``memory://``, ``sqlite:///path/to/jobs.db?pool_size=8``)
        or a mapping with a ``backend`` key and options
        (``{"backend": "sqlite", "path": "jobs.db"}``). With ``None``, the
        ``CIDX_JOBS_URL`` environment variable.
    :param hooks: the hooks to use; by default a fresh plugin manager with the
        installed plugins.
    :param settings: defaults for the common settings (e.g. a test clock);
        options in ``config`` override them.
    :raises ConfigError: no configuration, or an option is unknown or invalid
        (the error's ``option`` names it).
    :raises BackendNotFoundError: no installed plugin provides the backend; the
        message lists the installed ones.
    :raises PluginError: a plugin is invalid.
    :raises StorageError: the backend could not open its storage.
    """
    hooks = hooks if hooks is not None else Hooks()
    backend, backend_config, store_settings = find_backend(config, hooks=hooks, settings=settings)
    storage = backend.factory(backend_config)
    if not isinstance(storage, Storage):
        raise PluginError(
            f"the factory of backend {backend.name!r} (plugin {backend.plugin!r}) returned "
            f"{type(storage).__name__}, not a cidx_jobs.backend.Storage"
        )
    try:
        return JobPersistence(
            storage, hooks=hooks, settings=store_settings, owner_id=backend_config.owner_id
        )
    except BaseException:
        storage.close()
        raise
