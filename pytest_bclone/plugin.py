"""pytest hooks and fixtures of pytest-bclone. Each is a few lines delegating to the pure core.

Nothing here imports litellm or pyarrow: plain plugin loading stays cheap, and the plugin does
nothing until a ``--bclone-*`` option, an ini key, a fixture, the marker or an assertion is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .config import OPTIONS, BcloneConfig, build_config, cli_options
from .errors import BcloneError, ConfigError

if TYPE_CHECKING:
    from .dataset.store import DatasetVersion
    from .session import BcloneSession

CONFIG_KEY = pytest.StashKey["BcloneConfig"]()
SESSION_KEY = pytest.StashKey["BcloneSession"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bclone", "behavior-cloning release gate (pytest-bclone)")
    for opt in cli_options():
        if opt.flag:
            group.addoption(opt.cli, action="store_true", default=None, dest=f"bclone_{opt.name}", help=opt.help)
        else:
            default = f" (default: {opt.default})" if opt.default not in (None, {}, []) else ""
            group.addoption(
                opt.cli, action="append" if opt.multiple else "store", default=None, dest=f"bclone_{opt.name}",
                metavar=opt.metavar or opt.name.upper(), help=opt.help + default,
            )
    for opt in OPTIONS:
        kind = "bool" if opt.flag else ("linelist" if opt.multiple else "string")
        parser.addini(opt.ini_name, help=f"{opt.help} ({opt.cli})" if opt in cli_options() else opt.help,
                      type=kind, default=None)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bclone(cohort=NAME, metric=None): parametrise bclone_case over the trajectories of a cohort"
    )
    cli = {o.name: config.getoption(f"bclone_{o.name}") for o in cli_options()}
    ini = {o.name: config.getini(o.ini_name) for o in OPTIONS}
    try:
        cfg = build_config(cli, ini, str(config.rootpath))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[CONFIG_KEY] = cfg
    if cfg.active:
        from .session import BcloneSession

        try:
            session = BcloneSession(cfg, config)
        except BcloneError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.stash[SESSION_KEY] = session
        config.pluginmanager.register(session, "bclone-session")


def bclone_session(config: pytest.Config) -> BcloneSession:
    """The run's session, or a UsageError-style failure saying how to activate the plugin."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        raise BcloneError(
            "pytest-bclone is not active: no dataset named; pass --bclone-dataset=v8 (or set bclone_dataset in "
            "your ini file) to run the gate"
        )
    return session


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION_KEY, None)
    return session.header_lines() if session is not None else None


@pytest.fixture(scope="session")
def bclone_dataset(pytestconfig: pytest.Config) -> DatasetVersion:
    """The loaded, hash-verified dataset version named by ``--bclone-dataset``."""
    try:
        return bclone_session(pytestconfig).dataset
    except BcloneError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def bclone_config(pytestconfig: pytest.Config) -> BcloneConfig:
    """The resolved :class:`~pytest_bclone.config.BcloneConfig` of this run."""
    return pytestconfig.stash[CONFIG_KEY]
