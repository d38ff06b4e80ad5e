"""pytest hooks and fixtures of pytest-bclone. Each is a few lines delegating to the pure core.

Nothing here imports litellm or pyarrow: plain plugin loading stays cheap, and the plugin does
nothing until a ``--bclone-*`` option, an ini key, a fixture, the marker or an assertion is used.

With pytest-xdist, each worker replays what its tests need and ships its records to the
controller (a file the controller named in ``workerinput``, or ``workeroutput``), which alone
merges them, decides and writes reports.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from .config import MODES, OPTIONS, BcloneConfig, build_config, cli_options
from .errors import BcloneError, ConfigError

if TYPE_CHECKING:
    from .dataset.store import DatasetVersion
    from .reporting import FinishedRun
    from .session import BcloneSession

CONFIG_KEY = pytest.StashKey["BcloneConfig"]()
SESSION_KEY = pytest.StashKey["BcloneSession"]()
CURRENT_KEY = pytest.StashKey["list[pytest.Item | None]"]()
SUMMARY_KEY: pytest.StashKey[FinishedRun] = pytest.StashKey()
MARKER_KEYS = ("cohort", "metric", "mode")


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
        help_ = f"{opt.help} ({opt.cli})" if opt in cli_options() else opt.help
        # Typed (int, float, bool, linelist), so pytest 9's native [tool.pytest] table accepts
        # natural TOML values; pytest.ini and [tool.pytest.ini_options] strings are converted.
        parser.addini(opt.ini_name, help=help_, type=opt.ini_type, default=None)  # type: ignore[arg-type]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _getini(config: pytest.Config, name: str) -> Any:
    """``config.getini`` with pytest's own conversion error (``bclone_concurrency = many``) turned
    into one line naming the key and the fix."""
    try:
        return config.getini(name)
    except (ValueError, TypeError, pytest.UsageError) as exc:  # pytest 9 raises UsageError for bad ini values
        raise ConfigError(f"ini key {name}: {exc}; fix the value in your ini file (see pytest --help, "
                          "bclone group)") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bclone(cohort=NAME, metric=None, mode=None): the cohort a test gates (replayed up front) and "
        "the cohort whose trajectories parametrise the bclone_case fixture"
    )
    cli = {o.name: config.getoption(f"bclone_{o.name}") for o in cli_options()}
    try:
        ini = {o.name: _getini(config, o.ini_name) for o in OPTIONS}
        cfg = build_config(cli, ini, str(config.rootpath), str(config.invocation_params.dir))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[CONFIG_KEY] = cfg
    if not cfg.active:
        return
    from . import assertions, timing
    from .dataset.store import load_ref
    from .session import BcloneSession

    root_source = "--bclone-dataset-root" if cli.get("dataset_root") else (
        "ini bclone_dataset_root" if ini.get("dataset_root") else "the default bclone_dataset_root")
    hook = config.hook
    timing.reset()  # one gate per process (pytester runs several in one)
    timing.mark_startup()
    try:
        # Loaded (every hash verified) at configure time: a bad reference or a tampered file stops
        # the run with one clear line before any test runs.
        with timing.phase("load"):
            dataset = load_ref(cfg.dataset or "", cfg.dataset_root, cfg.rootdir, root_source=root_source)
        session = BcloneSession(
            cfg, dataset,
            make_agent_hook=lambda role, spec: hook.pytest_bclone_make_agent(role=role, spec=spec, config=config),
            make_environment_hook=lambda t: hook.pytest_bclone_make_environment(trajectory=t),
            make_user_hook=lambda t: hook.pytest_bclone_make_user(trajectory=t, config=config),
            register_evaluators=lambda registry: hook.pytest_bclone_register_evaluators(registry=registry),
            progress=config.option.verbose >= 0 and not _is_worker(config),
            process=str(config.workerinput["workerid"]) if _is_worker(config) else "main",  # type: ignore[attr-defined]
        )
    except BcloneError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = session
    import gc

    # The loaded dataset lives to the end of the run: out of the cyclic GC's reach, no full
    # collection (the replay's, pytest's own at exit) rescans its millions of objects.
    gc.freeze()
    current: list[pytest.Item | None] = [None]
    config.stash[CURRENT_KEY] = current
    assertions.activate(session, lambda: current[0])
    from . import signals

    signals.install(config)  # SIGTERM stops the run like Ctrl-C, reports marked incomplete; workers die with it


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    from . import signals

    signals.note_interrupt("SIGINT")  # a SIGTERM recorded first keeps its name


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        from . import assertions

        assertions.deactivate(session)


def bclone_session(config: pytest.Config) -> BcloneSession:
    """The run's session; raises BcloneError saying how to activate the plugin."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        raise BcloneError(
            "pytest-bclone is not active: no dataset named; pass --bclone-dataset=v8 (or set bclone_dataset in "
            "your ini file) to run the gate"
        )
    return session


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return None
    d, cfg = session.dataset, session.cfg
    c = d.manifest["counts"]
    return [
        f"bclone: dataset {d.ref} ({c['trajectories']} trajectories, splits {c['splits']}) sha256 {d.fingerprint}",
        (f"bclone: gating {cfg.clone or '(no clone set)'} against {cfg.expert} on the {cfg.split} split "
         f"({len(session.eval_trajectories)} trajectories), mode {cfg.mode}, cache {cfg.cache_mode}"),
    ]


# -- marker, parametrisation, declared cohorts --------------------------------------------------------
def _marker_kwargs(node: Any) -> dict[str, Any] | None:
    marker = node.get_closest_marker("bclone")
    if marker is None:
        return None
    unknown = set(marker.kwargs) - set(MARKER_KEYS)
    if marker.args or unknown:
        raise BcloneError(
            f"@pytest.mark.bclone on {node.nodeid}: unexpected {list(marker.args) or sorted(unknown)}; "
            f"use keywords {', '.join(MARKER_KEYS)}, e.g. @pytest.mark.bclone(cohort='long_tail')"
        )
    if marker.kwargs.get("mode") not in (None, *MODES):
        raise BcloneError(
            f"@pytest.mark.bclone on {node.nodeid}: mode={marker.kwargs['mode']!r} is not one of {', '.join(MODES)}"
        )
    return dict(marker.kwargs)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bclone_case" not in metafunc.fixturenames:
        return
    try:
        session = bclone_session(metafunc.config)
        kwargs = _marker_kwargs(metafunc.definition) or {}
        cohort = kwargs.get("cohort")
        if cohort is None:
            raise BcloneError(
                f"{metafunc.definition.nodeid} uses bclone_case but names no cohort: add "
                "@pytest.mark.bclone(cohort='long_tail')"
            )
        session.check_cohort(cohort, f"@pytest.mark.bclone on {metafunc.definition.nodeid}")
    except BcloneError as exc:
        pytest.fail(str(exc), pytrace=False)
    from .cases import BcloneCase

    cases = [BcloneCase(session, t.id, cohort, kwargs.get("mode")) for t in session.eval_trajectories
             if cohort in t.cohorts]
    metafunc.parametrize("bclone_case", cases, ids=[c.trajectory_id for c in cases])


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    bsession = config.stash.get(SESSION_KEY, None)
    if bsession is None:
        return
    known: set[str] | None = None
    for item in items:
        try:
            kwargs = _marker_kwargs(item)
        except BcloneError as exc:
            raise pytest.UsageError(str(exc)) from None
        if kwargs and "cohort" in kwargs:
            cohort = kwargs["cohort"]
            if not isinstance(cohort, str) or not cohort:
                raise pytest.UsageError(
                    f"@pytest.mark.bclone on {item.nodeid}: cohort={cohort!r} names no cohort; pass the cohort's "
                    "name, e.g. @pytest.mark.bclone(cohort='long_tail')")
            if known is None:
                known = set(bsession.dataset.cohorts)  # once: bclone_case parametrises many items
            if cohort not in known:
                # A name the dataset does not know at all is a typo: stop before anything runs. (A
                # cohort that only a --bclone-sample left empty fails its own assertions instead.)
                try:
                    bsession.check_cohort(cohort, f"@pytest.mark.bclone on {item.nodeid}")
                except BcloneError as exc:
                    raise pytest.UsageError(str(exc)) from None
            if cohort not in bsession.cohorts:
                continue
            mode = kwargs.get("mode") or bsession.cfg.mode
            bsession.declared_cohorts.setdefault(mode, set()).add(kwargs["cohort"])
    if _is_worker(config):
        # Under xdist a worker replays only what its own tests ask for (lazily), so two workers
        # do not both pay for every declared cohort.
        for cohorts in bsession.declared_cohorts.values():
            cohorts.clear()


@pytest.hookimpl(tryfirst=True)  # an xdist worker: before xdist's own sends collectionfinish to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    # The gate tests of the run (after deselection): each must end with a verdict or pass, or its
    # cohort is MISSING and the gate blocks. Every xdist worker collects them all and ships them.
    bsession = session.config.stash.get(SESSION_KEY, None)
    if bsession is None:
        return
    from .gate import GateTest

    cohorts: dict[str, str | None] = {}
    for item in session.items:
        marker = item.get_closest_marker("bclone")
        cohort = marker.kwargs.get("cohort") if marker is not None else None
        cohorts[item.nodeid] = cohort if isinstance(cohort, str) else None
        if marker is not None:
            bsession.gate_tests[item.nodeid] = GateTest(item.nodeid, cohorts[item.nodeid])
    path = getattr(session.config, "workerinput", {}).get(GROUPS_INPUT)
    if path:
        _write_groups(str(path), *bsession.work_groups(cohorts))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    # The current item through setup, call and teardown: a verdict asserted in a fixture is
    # attributed to the test whose setup or teardown ran it.
    current = item.config.stash.get(CURRENT_KEY, None)
    if current is None:
        return (yield)
    current[0] = item
    try:
        return (yield)
    finally:
        current[0] = None


# -- fixtures ------------------------------------------------------------------------------------------
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


@pytest.fixture(scope="session")
def bclone(pytestconfig: pytest.Config) -> Any:
    """The session's results: ``bclone.scores(cohort, metric)``, ``bclone.parity(...)``,
    ``bclone.cohorts``, ``bclone.routes()`` (see :class:`pytest_bclone.cases.BcloneResults`)."""
    from .cases import BcloneResults

    try:
        return BcloneResults(bclone_session(pytestconfig))
    except BcloneError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def bclone_case(request: pytest.FixtureRequest) -> Any:
    """One trajectory of the cohort named by ``@pytest.mark.bclone(cohort=...)`` (one test each)."""
    return request.param


# -- controller: collect verdicts, merge workers, decide, report ----------------------------------------
_OUTCOME_RANK = {"passed": 0, "xfailed": 1, "skipped": 2, "failed": 3, "error": 4, "crashed": 5}


def _outcome(report: pytest.TestReport) -> str | None:
    """How one phase's report ends its test, for the gate (None: says nothing yet)."""
    if report.when not in ("setup", "call", "teardown"):  # xdist's report for a crashed worker
        return "crashed" if report.failed else None
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "passed" if report.when == "call" else None


FAST_EXIT_ITEMS = 50_000
"""Results from which a finished gate exits without freeing them (below: the ordinary exit)."""


def fast_exit_applies(config: pytest.Config, items: int) -> bool:
    """Whether this process may end with :func:`fast_exit`: a gate with at least
    :data:`FAST_EXIT_ITEMS` results, on pytest's cleanup stack, run as the ``pytest`` command
    itself (not ``pytest.main()`` from a program that goes on, nor pytester's in-process runs) or
    as an xdist worker (a process xdist started for this run alone; its results already shipped)."""
    import sys

    if items < FAST_EXIT_ITEMS or not hasattr(config, "_cleanup_stack"):
        return False
    if _is_worker(config):
        return True
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    command = (getattr(spec, "name", None) == "pytest.__main__"
               or os.path.basename(sys.argv[0]) in ("pytest", "py.test"))
    return command and tuple(config.invocation_params.args) == tuple(sys.argv[1:])


def fast_exit(config: pytest.Config, code: int) -> None:
    """End the process with ``code`` once pytest's exit work is done, skipping the freeing.

    A million results are millions of objects: freeing them one by one when the session goes away
    cost about a tenth of a large gate's wall time, for memory the OS reclaims at once. Everything
    pytest and Python do at exit still runs first: the reports were written at session finish,
    the rest of pytest's cleanup stack runs here, the cache's queued writes finish, the standard
    streams are flushed and every ``atexit`` function runs (logging's flush, coverage's data file).
    """
    import atexit
    import sys

    config._cleanup_stack.close()
    # os._exit skips the interpreter's wait for the cache's writer thread: an entry queued by a call
    # cancelled at Ctrl-C would be lost. Imported only if a replay loaded it.
    cache = sys.modules.get("pytest_bclone.cache")
    if cache is not None:
        cache.drain_writes()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: what Python's own exit would meet
            pass
    atexit._run_exitfuncs()
    os._exit(code)


class _Controller:
    """Registered on the controller only. The verdict channel's end: verdicts recorded on this
    process's session, verdicts riding on test reports (from xdist workers too, so a worker that
    dies still delivered the verdicts of its finished tests) and the workers' exported sessions,
    merged once per verdict; and how every test ended, so a gate test without a verdict blocks."""

    def __init__(self, config: pytest.Config, session: BcloneSession) -> None:
        self.config = config
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        import json

        outcome = _outcome(report)
        if outcome is not None:
            old = self.session.outcomes.get(report.nodeid)
            if old is None or _OUTCOME_RANK[outcome] > _OUTCOME_RANK[old]:
                self.session.outcomes[report.nodeid] = outcome
        records = [json.loads(value) for name, value in report.user_properties
                   if name == "bclone_record" and isinstance(value, str)]
        if records:
            self.session.add_verdicts(records)

    @pytest.hookimpl(optionalhook=True)  # an xdist hook: absent under -p no:xdist
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        # Taken, not read: once merged, the worker's shipped columns are garbage (xdist keeps the
        # node's output to the end of the run; a large gate's would double the controller's peak).
        output = getattr(node, "workeroutput", {})
        data = output.pop("bclone", None)
        path = output.pop("bclone_file", None)
        if path:
            import pickle

            # Our own run's file (pytest_configure_node named it, in a directory only this run uses).
            try:
                with open(path, "rb") as f:
                    data = pickle.load(f)
                os.remove(path)
            except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
                # The worker's results are lost and the report would lack them: the gate blocks,
                # naming the file (an unidentified crash blocks the same way).
                self.session.outcomes[f"{node.gateway.id}'s results file {path} ({type(exc).__name__}: {exc})"] = "crashed"
                return
        if data:
            self.session.merge(data)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from . import timing
        from .reporting import finish

        self.pytest_session = session
        with timing.phase("report"):
            run = finish(self.session, session, self.config)
        if run is not None:
            self.config.stash[SUMMARY_KEY] = run

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        # The last unconfigure of a large run: exit without freeing what the OS frees.
        session = getattr(self, "pytest_session", None)
        if session is not None and fast_exit_applies(config, len(self.session.store)):
            fast_exit(config, int(session.exitstatus))


# -- xdist scheduling: the tests of a cohort group on one worker ------------------------------------------
GROUPS_INPUT = "bclone_groups"
"""``workerinput`` key: the file where a worker writes its tests' cohort groups (the controller sees
only node ids; a cohort named only by ``@pytest.mark.bclone`` is in no node id)."""
EXPORT_INPUT = "bclone_export"
"""``workerinput`` key: the file where a worker writes its results for the controller (see
:func:`pytest_sessionfinish`)."""
CHANNEL_DIR_KEY = pytest.StashKey[str]()


def _write_groups(path: str, groups: dict[str, str], weights: dict[str, int]) -> None:
    """Write a worker's {node id: cohort group} and {group: weight} for the controller's scheduler,
    whole or not at all (renamed into place: the controller never reads half a file)."""
    import json

    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump({"groups": groups, "weights": weights}, f)
    os.replace(f"{path}.tmp", path)


def _read_groups(directory: str) -> tuple[dict[str, str], dict[str, int]] | None:
    """Every worker's written groups, merged (workers collect the same tests); None when none wrote."""
    import json

    groups: dict[str, str] = {}
    weights: dict[str, int] = {}
    found = False
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".groups.json"):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        found = True
        groups.update(data.get("groups") or {})
        for g, w in (data.get("weights") or {}).items():
            weights[g] = max(weights.get(g, 0), int(w))
    return (groups, weights) if found else None


@pytest.hookimpl(optionalhook=True)  # an xdist hook (controller, once per worker started)
def pytest_configure_node(node: Any) -> None:
    """Tell each worker where to write its tests' cohort groups (:data:`GROUPS_INPUT`) and its
    results (:data:`EXPORT_INPUT`): files in a directory of this run, removed at its end."""
    config = node.config
    if not config.stash[CONFIG_KEY].active:
        return
    directory = config.stash.get(CHANNEL_DIR_KEY, None)
    if directory is None:
        import shutil
        import tempfile

        directory = config.stash[CHANNEL_DIR_KEY] = tempfile.mkdtemp(prefix="bclone-xdist-")
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))
    node.workerinput[GROUPS_INPUT] = os.path.join(directory, f"{node.gateway.id}.groups.json")
    node.workerinput[EXPORT_INPUT] = os.path.join(directory, f"{node.gateway.id}.export.pickle")


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # an xdist hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` with xdist's default ``load`` distribution: the tests of cohorts that share
    trajectories go to one worker (xdist's loadscope, scoped by cohort group), so each trajectory is
    replayed by one worker, not by every worker whose tests touch it. Other tests keep one scope each.

    The groups come from the workers (:func:`pytest_collection_finish` writes each test's, from its
    marker and its parameter ids, where :func:`pytest_configure_node` said), read once all workers
    collected; without them, from the node ids alone (:meth:`BcloneSession.work_group`). The
    heaviest group (most decision points) is handed out first, and a worker's second group at the
    start goes to the least loaded worker, so the replay splits as evenly as whole groups allow."""
    bsession = config.stash.get(SESSION_KEY, None)
    if bsession is None or config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    directory = config.stash.get(CHANNEL_DIR_KEY, None)
    fallback = bsession.work_group

    class CohortScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self.groups: dict[str, str] | None = None
            self.weights: dict[str, int] = {}
            self.starting = False

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first asked in schedule(), once every worker has collected
                written = _read_groups(directory) if directory else None
                if written is None:
                    group = fallback()
                    self.groups = {n: g for n in self.collection or () if (g := group(n))}
                else:
                    self.groups, self.weights = written
            return self.groups.get(nodeid) or nodeid

        def _load(self, node: Any) -> int:
            return sum(self.weights.get(scope, 0) for scope, unit in self.assigned_work.get(node, {}).items()
                       if not all(unit.values()))

        def _assign_work_unit(self, node: Any) -> None:
            # The heaviest waiting group first (first in collection order among equals).
            heaviest = max(self.workqueue, key=lambda scope: self.weights.get(scope, 0), default=None)
            if heaviest is not None and self.weights.get(heaviest, 0) > 0:
                self.workqueue.move_to_end(heaviest, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node: Any) -> None:
            # xdist gives every worker a second unit at the start; only the least loaded gets it.
            if self.starting and self.weights and self._load(node) > min(self._load(n) for n in self.nodes):
                return
            super()._reschedule(node)

        def schedule(self) -> None:
            self.starting = self.collection is None
            try:
                super().schedule()
            finally:
                self.starting = False

    return CohortScheduling(config, log)


class _Worker:
    """Registered on an xdist worker only: a large gate's worker exits without freeing its results.
    The controller waits for every worker's process to end before it reports, and a worker
    freeing a million results one by one was seconds of that wait."""

    def __init__(self, session: BcloneSession) -> None:
        self.session = session

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        # Its results and the workerfinished event are sent by now (pytest_sessionfinish).
        if fast_exit_applies(config, len(self.session.store)):
            fast_exit(config, 0)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    bsession = session.config.stash.get(SESSION_KEY, None)
    if bsession is not None and _is_worker(session.config):
        session.config.pluginmanager.register(_Worker(bsession), "bclone-worker")
    if bsession is not None and not _is_worker(session.config):
        session.config.pluginmanager.register(_Controller(session.config, bsession), "bclone-controller")
        from .progress import terminal_progress

        # Live progress through pytest's terminal writer (the replay runs inside a captured test).
        bsession.runner.progress = terminal_progress(session.config) or False


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    bsession = session.config.stash.get(SESSION_KEY, None)
    if bsession is not None and _is_worker(session.config):
        output = session.config.workeroutput  # type: ignore[attr-defined]
        path = session.config.workerinput.get(EXPORT_INPUT)  # type: ignore[attr-defined]
        if path:
            # Through a file the controller named, not xdist's channel: execnet builds the whole
            # message in memory (twice) and walks it object by object in Python; pickle streams
            # it to disk in C. The controller reads it when the worker is down.
            import pickle

            try:
                with open(f"{path}.tmp", "wb") as f:
                    pickle.dump(bsession.export(objects=True), f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(f"{path}.tmp", path)
            except OSError:  # a full disk, a temporary directory removed mid-run: xdist's channel still works
                with contextlib.suppress(OSError):
                    os.remove(f"{path}.tmp")
            else:
                output["bclone_file"] = str(path)
                return
        output["bclone"] = bsession.export()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash.get(SUMMARY_KEY, None)
    if run is None:
        return
    from .reporting import terminal

    terminal(terminalreporter, run, config.option.verbose)
    if config.stash[CONFIG_KEY].profile:
        from . import timing

        terminalreporter.write_line(timing.format_line(timing.snapshot()))
