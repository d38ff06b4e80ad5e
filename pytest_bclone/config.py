"""One frozen :class:`BcloneConfig`, built once in ``pytest_configure``.

Every setting is declared once in :data:`OPTIONS`; the plugin turns that table into ``--bclone-*``
options and ``bclone_*`` ini keys, and :func:`build_config` resolves each value CLI > ini >
default, validating as it goes. A bad value raises :class:`~pytest_bclone.errors.ConfigError`
naming the value, where it came from and what would be accepted (the plugin turns it into
``pytest.UsageError``, exit status 4).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .policy import CohortPolicy, parse_policy
from .redact import redact_text

CACHE_MODES = ("none", "new_episodes", "all", "off")
MODES = ("step", "rollout")
SPLIT_CHOICES = ("eval", "train", "all")
ON_FAIL = ("block", "route", "warn")
# Kept equal to pytest_bclone.evaluators.trajectory.MATCH_MODES (a test checks); not imported,
# so that building the config imports no evaluator code.
TRAJECTORY_MATCH = ("strict", "unordered", "subset", "superset")


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if isinstance(text, (float, bool)):  # a TOML 2.5 or true is not an integer
            raise ValueError("must be an integer")  # noqa: TRY004 (build_config reports ValueError)
        value = int(text)
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be an integer {'>= ' + str(lo) if hi is None else f'from {lo} to {hi}'}")
        return value

    parse.ini_type = "int"  # type: ignore[attr-defined]
    return parse


def _float(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        bad_lo = value <= lo if open_lo else value < lo
        bad_hi = value >= hi if open_hi else value > hi
        if bad_lo or bad_hi or math.isnan(value):
            lo_s = f"{'>' if open_lo else '>='} {lo}"
            hi_s = f"{'<' if open_hi else '<='} {hi}"
            raise ValueError(f"must be a number {lo_s} and {hi_s}")
        return value

    parse.ini_type = "float"  # type: ignore[attr-defined]
    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _str(text: str) -> str:
    return text


class _SecretValueError(ValueError):
    """A bad value that may hold credentials (``bclone_*_params``): reported without the value."""


def _json_object(text: str) -> dict[str, Any]:
    # The value may hold an API key or an Authorization header: the error names only where the
    # JSON breaks (line, column), never the text around it.
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise _SecretValueError(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}, character {exc.pos}); "
            'expected a JSON object such as {"api_base": "http://127.0.0.1:8000/v1"}'
        ) from None
    if not isinstance(value, dict):
        # ValueError, not TypeError: build_config reports ValueError as a bad option value (shown
        # with its secrets masked: a parsed value can be redacted, a malformed one cannot).
        raise ValueError('must be a JSON object such as {"api_base": "http://127.0.0.1:8000/v1"}')  # noqa: TRY004
    return value


def _prices(items: list[str]) -> dict[str, tuple[float, float]]:
    prices: dict[str, tuple[float, float]] = {}
    for item in items:
        model, sep, pair = item.rpartition("=")
        inp, slash, out = pair.partition("/")
        try:
            if not sep or not slash or not model:
                raise ValueError
            prices[model] = (float(inp), float(out))
        except ValueError:
            raise ValueError(
                f"{item!r} is not MODEL=IN/OUT (USD per million input/output tokens), "
                "e.g. openai/gpt-4o-mini=0.15/0.60"
            ) from None
        if not all(math.isfinite(p) and p >= 0 for p in prices[model]):
            # A negative or NaN price would turn the estimated saving into nonsense (or a "saving"
            # from a dearer clone): refuse it like any other malformed value.
            raise ValueError(f"{item!r} has a price that is negative or not a number; prices are USD per million "
                             "tokens, zero or more, e.g. openai/gpt-4o-mini=0.15/0.60")
    return prices


def _names(lines: list[str]) -> frozenset[str]:
    names = frozenset(item for line in lines for item in line.replace(",", " ").split())
    bad = sorted(n for n in names if not n.replace("_", "").replace("-", "").replace(".", "").isalnum())
    if bad:
        raise ValueError(f"{bad[0]!r} is not a tool name; list tool names, one per line or comma-separated")
    return names


def _cohort_metrics(lines: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for line in lines:
        for item in line.replace(",", " ").split():
            cohort, sep, metric = item.partition("=")
            if not sep or not cohort or not metric:
                raise ValueError(f"{item!r} is not COHORT=METRIC, e.g. long_tail=trajectory_score")
            mapping[cohort] = metric
    return mapping


@dataclass(frozen=True)
class Option:
    """One setting: its CLI flag, ini twin, parser, default and help."""

    name: str  # attribute of BcloneConfig; flag is --bclone-<name with dashes>, ini bclone_<name>
    help: str
    default: Any
    parse: Callable[[Any], Any] = _str  # a str, or the list of lines when ``multiple``
    metavar: str | None = None
    ini: bool = True
    flag: bool = False  # a boolean switch (store_true) instead of a value
    multiple: bool = False  # repeatable flag / linelist ini; parse takes the list
    path: bool = False  # a file or directory: resolved like --junitxml (see build_config)

    @property
    def ini_type(self) -> str:
        """The pytest ``addini`` type, so that ``[tool.pytest]`` (TOML) takes natural values:
        ``bclone_confidence = 0.9``, ``bclone_holm = true``, ``bclone_concurrency = 8``."""
        if self.flag:
            return "bool"
        if self.multiple:
            return "linelist"
        return str(getattr(self.parse, "ini_type", "string"))

    @property
    def cli(self) -> str:
        return "--bclone-" + self.name.replace("_", "-")

    @property
    def ini_name(self) -> str:
        return "bclone_" + self.name


OPTIONS: tuple[Option, ...] = (
    # dataset
    Option("dataset", "dataset version to gate on: v8, NAME@v8, latest, or a path to a version directory "
           "(the plugin is inactive when unset)", None, metavar="REF"),
    Option("dataset_root", "root of the dataset store: a directory or a pyarrow filesystem URI such as "
           "s3://bucket/datasets", "bclone_datasets", metavar="URI", path=True),
    Option("split", "which split to evaluate: eval (default; scoring a clone on its training rows overstates "
           "it), train, or all", "eval", _choice(SPLIT_CHOICES)),
    Option("sample", "evaluate a seeded random sample of N trajectories (quick local runs)", None, _int(1),
           metavar="N"),
    Option("seed", "seed for sampling, bootstrap and agents that sample", 0, _int(0), metavar="N"),
    # agents and replay
    Option("clone", "the clone: a litellm model string (openai/my-ft-model), python:module:callable, or a name "
           "resolved by the pytest_bclone_make_agent hook", None, metavar="SPEC"),
    Option("expert", "the expert: recorded (its actions from the dataset, no calls), a litellm model string, "
           "or python:module:callable", "recorded", metavar="SPEC"),
    Option("clone_params", "extra litellm parameters for the clone as a JSON object (ini only)", {}, _json_object,
           ini=True),
    Option("expert_params", "extra litellm parameters for the expert as a JSON object (ini only)", {},
           _json_object, ini=True),
    Option("user", "rollout mode: who answers the agent between its turns: recorded (the next recorded user "
           "message, whatever the agent said), python:module:callable (a factory taking the trajectory), or a "
           "litellm model string (an LLM plays the customer from the trajectory's instructions); a "
           "pytest_bclone_make_user hook is asked first", "recorded", metavar="SPEC"),
    Option("user_params", "extra litellm parameters for an LLM user as a JSON object (ini only)", {},
           _json_object, ini=True),
    Option("mode", "step: ask each agent at every recorded state (teacher forcing); rollout: each agent "
           "drives the whole episode in the suite's environment", "step", _choice(MODES)),
    Option("concurrency", "maximum model calls in flight", 16, _int(1, 4096), metavar="N"),
    Option("repeats", "independent samples per state (for pass^k)", 1, _int(1, 100), metavar="K"),
    Option("timeout", "seconds before one model call times out", 60.0, _float(0, 3600, open_lo=True),
           metavar="SECONDS"),
    Option("max_retries", "retries of a call after transient faults (5xx, timeouts, connection errors); 429/503 "
           "are retried for as long as --bclone-retry-budget lasts", 6, _int(0, 20), metavar="N"),
    Option("retry_budget", "seconds one model call may spend in attempts and backoff (429/503 honour Retry-After "
           "within it); beyond it the call fails and is counted", 300.0, _float(0, 86400, open_lo=True),
           metavar="SECONDS"),
    Option("cache_mode", "record/replay of model calls: none (replay only, a miss is an error), new_episodes "
           "(replay, record misses), all (re-record), off", "new_episodes", _choice(CACHE_MODES)),
    Option("cache_dir", "where recorded model calls are kept", ".bclone/cache", metavar="DIR", path=True),
    Option("price", "price override, USD per million tokens: MODEL=IN/OUT (repeatable)", {}, _prices,
           metavar="MODEL=IN/OUT", multiple=True),
    Option("trajectory_match", "rollout mode: how trajectory_score compares the agent's tool sequence with the "
           "expert's: strict, unordered, subset or superset", "strict", _choice(TRAJECTORY_MATCH)),
    Option("state_changing_tools", "tool names that change state, beyond the defaults (read-only prefixes such as "
           "get_/find_/list_ are not), for safety_refusal and task_completion (ini only, one per line)",
           frozenset(), _names, multiple=True),
    Option("read_only_tools", "tool names that never change state (ini only, one per line)", frozenset(), _names,
           multiple=True),
    Option("judge", "litellm model for the judge evaluators (reasoning_quality, toxicity, prompt_injection)",
           None, metavar="MODEL"),
    # gate
    Option("confidence", "confidence level of the parity intervals", 0.95,
           _float(0.5, 1.0, open_hi=True), metavar="LEVEL"),
    Option("bootstrap", "paired-bootstrap resamples per interval", 2000, _int(100, 1_000_000), metavar="N"),
    Option("max_error_rate", "share of failed model calls above which a cohort is inconclusive (default 0: any "
           "failed call makes the cohort inconclusive)", 0.0,
           _float(0.0, 1.0), metavar="RATE"),
    Option("holm", "Holm-correct the parity tests across the cohorts of a run", False, flag=True),
    # cost of the gate itself
    Option("sequential", "replay each declared cohort in seeded rounds of trajectories and stop it as soon as an "
           "anytime-valid confidence sequence settles its verdict (fewer calls; a cohort too small for even an "
           "identical clone to pass stops at half; otherwise full replay when it does not settle)",
           False, flag=True),
    Option("batch", "step mode: send the run's cache misses through the provider's batch API (about half the "
           "price; answers land in the cache, then the run scores as usual)", False, flag=True),
    Option("batch_poll", "seconds between polls of a running batch", 30.0, _float(0.0, 3600.0, open_lo=True),
           metavar="SECONDS"),
    Option("cohort_metrics", "default metric per cohort for assert_parity: COHORT=METRIC lines (ini only)", {},
           _cohort_metrics, multiple=True),
    Option("policy", "release policy per cohort: COHORT = ON_FAIL | REMEDY lines (on_fail block, route or warn; "
           "the remedy is printed as the cohort's next step when it fails); an assertion's own on_fail=/remedy= "
           "win (ini only)", {}, parse_policy, multiple=True),
    # reports
    Option("report_json", "write the full report as JSON", None, metavar="PATH", path=True),
    Option("report_md", "write the report as Markdown (also appended to $GITHUB_STEP_SUMMARY when set)", None,
           metavar="PATH", path=True),
    Option("report_html", "write a self-contained HTML report", None, metavar="PATH", path=True),
    Option("routes", "write the routing decision (cohort -> model) as JSON", None, metavar="PATH", path=True),
    Option("divergences", "write every state where clone and expert disagree (.parquet or .jsonl)", None,
           metavar="PATH", path=True),
    Option("baseline", "compare with an earlier JSON report and flag per-cohort drift", None, metavar="PATH", path=True),
    Option("drift_margin", "points a cohort may drop against the baseline before it is flagged", 2.0,
           _float(0.0, 100.0), metavar="POINTS"),
    Option("save_baseline", "save this run's JSON report as the baseline for the next one", None,
           metavar="PATH", path=True),
    Option("profile", "print one line splitting the gate's time into phases (start-up, load, replay, scoring, "
           "shift check, statistics, report); the JSON report always has them (run.phases_s)", False, flag=True),
)

_INI_ONLY = {"clone_params", "expert_params", "user_params", "cohort_metrics", "policy", "state_changing_tools", "read_only_tools"}


@dataclass(frozen=True)
class BcloneConfig:
    """Every bclone setting of a run, resolved CLI > ini > default. See :data:`OPTIONS`."""

    rootdir: str = "."
    dataset: str | None = None
    dataset_root: str = "bclone_datasets"
    split: str = "eval"
    sample: int | None = None
    seed: int = 0
    clone: str | None = None
    expert: str = "recorded"
    clone_params: Mapping[str, Any] = field(default_factory=dict)
    expert_params: Mapping[str, Any] = field(default_factory=dict)
    user: str = "recorded"
    user_params: Mapping[str, Any] = field(default_factory=dict)
    mode: str = "step"
    concurrency: int = 16
    repeats: int = 1
    timeout: float = 60.0
    max_retries: int = 6
    retry_budget: float = 300.0
    cache_mode: str = "new_episodes"
    cache_dir: str = ".bclone/cache"
    price: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    trajectory_match: str = "strict"
    state_changing_tools: frozenset[str] = frozenset()
    read_only_tools: frozenset[str] = frozenset()
    judge: str | None = None
    confidence: float = 0.95
    bootstrap: int = 2000
    max_error_rate: float = 0.0
    holm: bool = False
    sequential: bool = False
    batch: bool = False
    batch_poll: float = 30.0
    cohort_metrics: Mapping[str, str] = field(default_factory=dict)
    policy: Mapping[str, CohortPolicy] = field(default_factory=dict)
    report_json: str | None = None
    report_md: str | None = None
    report_html: str | None = None
    routes: str | None = None
    divergences: str | None = None
    baseline: str | None = None
    drift_margin: float = 2.0
    save_baseline: str | None = None
    profile: bool = False

    @property
    def active(self) -> bool:
        """The gate runs only when a dataset is named."""
        return self.dataset is not None


def cli_options() -> tuple[Option, ...]:
    """Options that have a command-line flag (ini-only ones are left out)."""
    return tuple(o for o in OPTIONS if o.name not in _INI_ONLY)


def resolve_path(value: str, base: str) -> str:
    """``value`` made absolute against ``base``; URIs (``s3://...``) and absolute paths unchanged."""
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def build_config(
    cli: Mapping[str, Any], ini: Mapping[str, Any], rootdir: str = ".", invocation_dir: str | None = None
) -> BcloneConfig:
    """Resolve every option: ``cli[name]`` (None when not given) > ``ini[name]`` > default.

    ``cli`` values are raw strings (or lists for repeatable flags, bools for switches);
    ``ini`` values are what pytest returns for the option's :attr:`Option.ini_type` (empty when
    unset). Paths are made absolute the way pytest treats its own: a command-line value against
    the directory pytest was invoked from (``invocation_dir``, like ``--junitxml``), an ini value
    or a default against ``rootdir`` (where the ini file is).
    """
    values: dict[str, Any] = {"rootdir": rootdir}
    for opt in OPTIONS:
        raw: Any = cli.get(opt.name)
        source = f"command-line option {opt.cli}"
        base = invocation_dir or rootdir
        if raw is None or raw == [] or (opt.flag and raw is False):
            raw = ini.get(opt.name)
            source = f"ini key {opt.ini_name}"
            base = rootdir
            if raw is None or (isinstance(raw, (str, list)) and not raw):
                values[opt.name] = (resolve_path(opt.default, rootdir) if opt.path and opt.default
                                    else opt.default)
                continue
        if opt.flag:
            values[opt.name] = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes")
            continue
        if opt.multiple and isinstance(raw, str):
            raw = raw.splitlines()
        try:
            values[opt.name] = opt.parse(raw) if opt.parse is not _str else str(raw)
            if opt.path and values[opt.name]:
                values[opt.name] = resolve_path(str(values[opt.name]), base)
        except (ValueError, json.JSONDecodeError) as exc:
            fix = f"pass {opt.cli}=..." if opt.name not in _INI_ONLY else f"set {opt.ini_name} in your ini file"
            shown = ("(value not shown: it may hold credentials)" if isinstance(exc, _SecretValueError)
                     else redact_text(repr(raw)))
            raise ConfigError(f"{source}: invalid value {shown}: {exc}; {fix} (see pytest --help, bclone group)") \
                from None
    return BcloneConfig(**values)
