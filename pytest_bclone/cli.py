"""The ``bclone`` command: manage trajectory dataset versions.

    bclone dataset import FILE --name support --version v8 [--format auto] [--cohort C ...] [--strict]
    bclone dataset build SOURCE... --name support --version v9 [--min-score task_completion=0.8] [--rules R.toml]
    bclone dataset export support@v8 --format openai-jsonl [--split train] [-o FILE]
    bclone dataset ls | show REF | diff A B | validate FILE|REF
    bclone --version

The root is ``--root`` (accepted before or after the verb), else ``$BCLONE_DATASET_ROOT``, else
``bclone_datasets``. Errors print one ``bclone: error: ...`` line and exit 2; never a traceback
(set ``BCLONE_DEBUG=1`` to see one for an unexpected error).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NoReturn

from .errors import BcloneError, ConfigError, DatasetNotFound

IMPORT_FORMATS = ("auto", "openai-jsonl", "tau-bench", "otel", "openinference", "langfuse")
EXPORT_FORMATS = ("openai-jsonl",)
ROOT_ENV = "BCLONE_DATASET_ROOT"
SKIPPED_SHOWN = 5
"""How many skipped sources the import summary lists (the count covers all of them)."""

# Importers that validate every row themselves, naming its line: the CLI need not re-check them.
_SELF_VALIDATING = frozenset({"openai-jsonl", "tau-bench", "langfuse"})

_FORMAT_HELP = (
    "input format (default auto: guessed from the file's first bytes when unambiguous): openai-jsonl = OpenAI "
    "fine-tuning JSONL or our own rows; tau-bench = a tau2 domain folder/tasks.json, tau-bench run trajectories or a "
    "tau2 results file; otel / openinference = OpenTelemetry span exports (OpenInference, traceAI, GenAI semconv, "
    "OpenLLMetry); langfuse = Langfuse observation export (JSONL)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``bclone: error:`` line naming the fix, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bclone: error: {message} (see `{self.prog} --help`)\n")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a share in [0, 1], e.g. 0.2") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]; give the share of rows put in eval, e.g. 0.2")
    return value


def _add_root(p: argparse.ArgumentParser, top: bool = False) -> None:
    # SUPPRESS below the top: a --root given before the verb is not reset by the sub-parser's default.
    p.add_argument("--root", default=None if top else argparse.SUPPRESS, metavar="DIR_OR_URI",
                   help=f"dataset root (a directory or pyarrow URI such as s3://bucket/prefix), accepted before or "
                        f"after the verb; default ${ROOT_ENV}, else ./bclone_datasets")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-bclone")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bclone", description="Manage pytest-bclone trajectory datasets.")
    p.add_argument("--version", action="version", version=f"bclone (pytest-bclone) {_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="group", required=True, metavar="{dataset}", parser_class=_Parser)
    ds = sub.add_parser("dataset", help="dataset versions: import, build, export, ls, show, diff, validate")
    _add_root(ds, top=True)
    cmds = ds.add_subparsers(dest="cmd", required=True, parser_class=_Parser,
                             metavar="{import,build,export,ls,show,diff,validate}")

    imp = cmds.add_parser("import", help="import a file as a new write-once version")
    imp.add_argument("file", help="the file (or tau2 domain directory) to import")
    imp.add_argument("--format", choices=IMPORT_FORMATS, default="auto", help=_FORMAT_HELP)
    imp.add_argument("--name", required=True, help="dataset name, e.g. support")
    imp.add_argument("--version", required=True, help="new version, e.g. v8")
    imp.add_argument("--parent", default=None, help="the version this one derives from (lineage)")
    imp.add_argument("--cohort", action="append", default=[], help="cohort for rows that name none (repeatable)")
    imp.add_argument("--split", choices=("train", "eval"), default=None, help="force every row into one split")
    imp.add_argument("--eval-fraction", type=_fraction, default=0.2,
                     help="share of rows put in eval (stable hash of the id) when rows name no split; in [0, 1]")
    imp.add_argument("--strict", action="store_true",
                     help="fail on the first unreadable trace/run instead of skipping and reporting it")
    imp.add_argument("--keep-unknown-keys", action="store_true",
                     help="keep unknown row keys under metadata.import_extra instead of refusing the row")
    _add_root(imp)

    bld = cmds.add_parser("build", help="curate a new version from versions or files: score filters, cohort rules, "
                                        "grouped split, dedup, toolset drift, lineage")
    _add_build_arguments(bld)
    _add_root(bld)

    exp = cmds.add_parser("export", help="export a version (OpenAI fine-tuning JSONL)")
    exp.add_argument("ref", help="the version to export: v8, support@v8, latest, or a version directory")
    exp.add_argument("--format", choices=EXPORT_FORMATS, default="openai-jsonl",
                     help="output format (OpenAI fine-tuning JSONL, what clones are trained on)")
    exp.add_argument("--split", choices=("train", "eval", "all"), default="train",
                     help="which split (default train: the rows a clone is fine-tuned on)")
    exp.add_argument("--with-ids", action="store_true", help="keep id, cohorts, split... so a re-import round-trips")
    exp.add_argument("-o", "--output", default="-", help="output file (default stdout); its directory must exist")
    _add_root(exp)

    ls = cmds.add_parser("ls", help="list datasets and versions")
    _add_root(ls)
    show = cmds.add_parser("show", help="print a version's manifest (counts, toolset, lineage) as JSON")
    show.add_argument("ref", help="the version: v8, support@v8, latest, or a version directory")
    show.add_argument("--lineage", action="store_true",
                      help="print the lineage (sources, build steps with row counts, warnings) as text instead")
    _add_root(show)
    diff = cmds.add_parser("diff", help="compare two versions")
    diff.add_argument("a", help="the older version (v7, support@v7...)")
    diff.add_argument("b", help="the newer version (v8, support@v8...)")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    _add_root(diff)
    val = cmds.add_parser("validate", help="check a file (every bad line) or a stored version (hashes)")
    val.add_argument("target", help="an import file, or a version ref such as v8")
    val.add_argument("--format", choices=IMPORT_FORMATS, default="auto", help=_FORMAT_HELP)
    _add_root(val)
    return p


def _root(args: argparse.Namespace) -> tuple[str, str]:
    if getattr(args, "root", None):
        return args.root, "--root"
    if os.environ.get(ROOT_ENV):
        return os.environ[ROOT_ENV], f"${ROOT_ENV}"
    return "bclone_datasets", f"the default, as no --root was given and ${ROOT_ENV} is unset"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bclone`` console script."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except BcloneError as exc:
        print(f"bclone: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `bclone dataset export v8 | head`: the reader left; that is not an error of ours.
        sys.stderr.close()
        return 0
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"bclone: error: cannot access{where}: {exc.strerror or exc}; check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bclone: error: interrupted; nothing was written (versions are written atomically)", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("BCLONE_DEBUG"):
            raise
        print(f"bclone: error: unexpected {type(exc).__name__}: {exc}; this is a bug in bclone: rerun with "
              "BCLONE_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 2


def _store(args: argparse.Namespace, *, must_exist: bool) -> Any:
    from .dataset.store import DatasetStore

    root, root_source = _root(args)
    store = DatasetStore(root, source=root_source)
    if must_exist:
        try:
            store.check_root()
        except DatasetNotFound:
            raise DatasetNotFound(
                f"dataset root {store.display!r} (from {root_source}) does not exist; pass --root DIR (before or "
                f"after the verb) or set ${ROOT_ENV} to the directory holding your datasets, or create a version "
                "with `bclone dataset import FILE --name NAME --version v1`"
            ) from None
    return store


def _load(args: argparse.Namespace, ref: str, command: str) -> Any:
    from .dataset.store import MANIFEST, load_ref

    root, root_source = _root(args)
    if not os.path.isfile(os.path.join(ref, MANIFEST)):
        _store(args, must_exist=True)
    return load_ref(ref, root, source=f"bclone dataset {command}", root_source=root_source)


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "import":
        return _import(args)
    if args.cmd == "build":
        return _build(args)
    if args.cmd == "export":
        return _export(args)
    if args.cmd == "ls":
        store = _store(args, must_exist=True)
        names = store.names()
        for name in names:
            print(f"{name}: {', '.join(store.versions(name)) or '(no complete version)'}")
        if not names:
            print(f"no datasets under {store.display}")
        for leftover in store.staging_leftovers():  # a killed import's half-written directory
            print(f"note: {leftover.describe()}")
        return 0
    if args.cmd == "show":
        version = _load(args, args.ref, "show")
        if args.lineage:
            from .dataset.build import lineage_lines

            lines = lineage_lines(version.manifest.get("lineage") or {})
            print("\n".join(lines) if lines else f"{version.ref} records no build lineage")
            return 0
        print(json.dumps({**version.manifest, "fingerprint": version.fingerprint}, indent=2, sort_keys=True))
        return 0
    if args.cmd == "diff":
        from .dataset.diff import diff_versions

        a = _load(args, args.a, "diff")
        b = _load(args, args.b, "diff")
        d = diff_versions(a, b)
        print(json.dumps(d.to_dict(), indent=2) if args.json else "\n".join(d.lines()))
        return 0
    if args.cmd == "validate":
        return _validate(args)
    raise AssertionError(args.cmd)


def import_rows(
    path: str, fmt: str, options: Any, skipped: list[Any]
) -> tuple[str, Iterator[dict[str, Any]]]:
    """(resolved format, streamed valid rows) of an import file; rows failing validation are
    skipped and reported (or raise under ``options.strict``)."""
    from .dataset.importers import get_importer, sniff_format

    if fmt == "auto":
        fmt = sniff_format(path)
    rows = get_importer(fmt)(path, options, skipped)
    if fmt not in _SELF_VALIDATING:
        rows = _checked(rows, path, options, skipped)
    return fmt, rows


def _checked(rows: Iterable[dict[str, Any]], path: str, options: Any, skipped: list[Any]) -> Iterator[dict[str, Any]]:
    from .dataset.importers import skip_or_raise
    from .dataset.schema import validate_row

    for row in rows:
        where = f"{path}: row {row.get('id', '?')!r}"
        try:
            validate_row(row, where)
        except BcloneError as exc:
            skip_or_raise(exc, where, options, skipped)
            continue
        yield row


def write_rows(store: Any, name: str, version: str, rows: Iterable[dict[str, Any]], *, parent: str | None,
               lineage: dict[str, Any], source: str) -> dict[str, Any]:
    """Write validated rows as a new version, streamed when the store supports it."""
    if hasattr(store, "write_version_stream"):
        manifest: dict[str, Any] = store.write_version_stream(name, version, rows, parent=parent, lineage=lineage,
                                                              source=source)
    else:
        manifest = store.write_version(name, version, rows, parent=parent, validate=False, source=source,
                                       lineage=lineage)
    return manifest


def _import(args: argparse.Namespace) -> int:
    from .dataset.importers import ImportOptions, SkippedSource
    from .dataset.store import check_name

    check_name(args.name, "dataset name", "bclone dataset import --name")
    check_name(args.version, "dataset version", "bclone dataset import --version")
    options = ImportOptions(cohorts=tuple(args.cohort), split=args.split, eval_fraction=args.eval_fraction,
                            strict=args.strict, keep_unknown_keys=args.keep_unknown_keys)
    skipped: list[SkippedSource] = []
    fmt, rows = import_rows(args.file, args.format, options, skipped)
    first = next(rows, None)  # nothing is written when nothing imports
    if first is None:
        raise ConfigError(f"no trajectory imported from {args.file} (format {fmt}): " + (
            f"{len(skipped)} source(s) skipped, the first: {skipped[0].where}: {skipped[0].reason}" if skipped
            else "the file holds none") + "; fix the file or choose the right --format")
    store = _store(args, must_exist=False)
    lineage = {"imported_from": os.path.basename(args.file), "format": fmt, "cohorts": args.cohort,
               "split": args.split, "eval_fraction": args.eval_fraction, "strict": args.strict}
    manifest = write_rows(store, args.name, args.version, itertools.chain([first], rows), parent=args.parent,
                          lineage={**lineage, "skipped_sources": len(skipped)}, source=args.file)
    c = manifest["counts"]
    print(f"wrote {args.name}@{args.version}: {c['trajectories']} trajectories, "
          f"{sum(c['decision_points'].values())} decision points, splits {c['splits']}")
    print(f"imported {c['trajectories']} rows from {args.file} (format {fmt})")
    _print_skipped(skipped)
    return 0


def _print_skipped(skipped: Sequence[Any]) -> None:
    if not skipped:
        print("skipped sources: 0")
        return
    print(f"skipped sources: {len(skipped)} (not imported; --strict fails on them instead)")
    for s in skipped[:SKIPPED_SHOWN]:
        print(f"  {s.where}: {s.reason}")
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more")


def _export(args: argparse.Namespace) -> int:
    from .dataset.openai_jsonl import write_openai_jsonl

    if args.output != "-":
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output):
            raise ConfigError(f"-o {args.output} is a directory; give a file path, e.g. {args.output.rstrip('/')}"
                              "/train.jsonl")
        if not os.path.isdir(out_dir):
            raise ConfigError(f"-o {args.output}: directory {out_dir} does not exist; create it first "
                              f"(mkdir -p {out_dir}) or write elsewhere")
    version = _load(args, args.ref, "export")
    selected = version.select(args.split)
    if args.output == "-":
        n = write_openai_jsonl(selected, sys.stdout, with_ids=args.with_ids)
    else:
        tmp = args.output + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                n = write_openai_jsonl(selected, f, with_ids=args.with_ids)
            os.replace(tmp, args.output)  # a reader never sees half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    print(f"exported {n} {args.split} trajectories of {version.ref}", file=sys.stderr)
    return 0


def _add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="versions (v8, support@v8, a version directory) and/or import files, in priority order "
                        "(de-duplication keeps the first copy)")
    p.add_argument("--name", required=True, help="dataset name of the new version, e.g. support")
    p.add_argument("--version", required=True, help="the new version, e.g. v9")
    p.add_argument("--parent", default=None, help="the version this one derives from (lineage)")
    p.add_argument("--format", choices=IMPORT_FORMATS, default="auto", help="format of file sources; " + _FORMAT_HELP)
    p.add_argument("--strict", action="store_true", help="fail on an unreadable trace/run in a file source")
    p.add_argument("--keep-unknown-keys", action="store_true",
                   help="keep unknown row keys of file sources under metadata.import_extra")
    p.add_argument("--min-score", action="append", default=[], metavar="NAME=THRESHOLD",
                   help="keep trajectories whose expert scored at least THRESHOLD on NAME (repeatable, all must hold; "
                        "a trajectory without that score is dropped), e.g. task_completion=0.8")
    p.add_argument("--rules", default=None, metavar="TOML",
                   help="cohort rules (tools called, user turns, metadata fields, keyword regexes, rarity); see "
                        "pytest_bclone.dataset.build for the format")
    p.add_argument("--split-by", default=None, metavar="FIELD",
                   help="metadata field grouping the split (task_id, user_id, session_id...): no group on both sides; "
                        "default: each trajectory on its own")
    p.add_argument("--eval-fraction", type=_fraction, default=0.2, help="share of groups put in eval, in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (a seeded hash of each group)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="do not drop trajectories with the same messages and tools as an earlier one")
    p.add_argument("--since", default=None, metavar="TIME",
                   help="keep trajectories at or after this ISO 8601 time (metadata timestamp); undated ones are dropped")
    p.add_argument("--until", default=None, metavar="TIME", help="keep trajectories before this ISO 8601 time")
    tools = p.add_mutually_exclusive_group()
    tools.add_argument("--toolset", default=None, metavar="FILE",
                       help="the current toolset (JSON: OpenAI tools or tool names); trajectories whose expert calls a "
                            "tool outside it are dropped and counted")
    tools.add_argument("--toolset-from", default=None, metavar="VERSION",
                       help="take the current toolset from this version's manifest")
    p.add_argument("--min-cohort-rows", type=int, default=30,
                   help="warn for each cohort with fewer trajectories than this (default 30)")
    p.add_argument("--margin", type=float, default=3.0,
                   help="parity margin in points the gate will use: warn for each eval cohort too small to resolve it "
                        "(rule of three; default 3)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of that sample-size check (default 0.95)")


def _file_digest(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    for name in files:
        if len(files) > 1:
            h.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _is_file_source(src: str) -> bool:
    if os.path.isfile(src):
        return True
    return os.path.isdir(src) and not os.path.isfile(os.path.join(src, "manifest.json"))


def _load_toolset(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, str]:
    if args.toolset_from:
        v = _load(args, args.toolset_from, "build --toolset-from")
        return tuple(v.manifest.get("toolset") or ()), f"--toolset-from {v.ref} (fingerprint {v.fingerprint})"
    if not args.toolset:
        return None, ""
    try:
        with open(args.toolset, "rb") as f:
            raw = f.read()
        data = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --toolset {args.toolset!r}: {exc.strerror}; check the path") from None
    except ValueError as exc:
        raise ConfigError(f"--toolset {args.toolset} is not UTF-8 JSON ({exc}); give a JSON list of OpenAI tools "
                          "or tool names") from None
    items = data.get("tools") if isinstance(data, dict) else data
    names = []
    for i, t in enumerate(items if isinstance(items, list) else [None]):
        name = t if isinstance(t, str) else ((t.get("function") or {}).get("name") or t.get("name")
                                             if isinstance(t, dict) else None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"--toolset {args.toolset}: entry {i} names no tool; give a JSON list of OpenAI tools "
                              '({"type": "function", "function": {"name": ...}}) or of tool names')
        names.append(name)
    import hashlib

    return tuple(names), f"--toolset {args.toolset} (sha256 {hashlib.sha256(raw).hexdigest()})"


def _time_arg(value: str | None, flag: str) -> Any:
    if value is None:
        return None
    from .dataset.build import parse_time

    try:
        return parse_time(value, flag)
    except (ValueError, TypeError):
        raise ConfigError(f"{flag} {value!r} is not an ISO 8601 time; use e.g. 2025-06-01 or "
                          "2025-06-01T12:00:00Z") from None


def _build(args: argparse.Namespace) -> int:
    from .dataset.build import BuildSpec, build, load_rules, parse_min_scores
    from .dataset.importers import ImportOptions, SkippedSource
    from .dataset.schema import trajectory_to_row
    from .dataset.store import check_name

    check_name(args.name, "dataset name", "bclone dataset build --name")
    check_name(args.version, "dataset version", "bclone dataset build --version")
    if args.margin <= 0 or not math.isfinite(args.margin):
        raise ConfigError(f"--margin {args.margin} must be a positive number of points, e.g. 3")
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence {args.confidence} must be in (0, 1), e.g. 0.95")
    if args.min_cohort_rows < 0:
        raise ConfigError(f"--min-cohort-rows {args.min_cohort_rows} must be >= 0")
    toolset, toolset_source = _load_toolset(args)
    spec = BuildSpec(
        min_scores=parse_min_scores(args.min_score), rules=load_rules(args.rules) if args.rules else None,
        split_by=args.split_by, eval_fraction=args.eval_fraction, seed=args.seed, dedup=not args.keep_duplicates,
        since=_time_arg(args.since, "--since"), until=_time_arg(args.until, "--until"), toolset=toolset,
        toolset_source=toolset_source, min_cohort_rows=args.min_cohort_rows, margin=args.margin,
        confidence=args.confidence,
    )
    rows: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    skipped: list[SkippedSource] = []
    for src in args.sources:
        if _is_file_source(src):
            options = ImportOptions(strict=args.strict, keep_unknown_keys=args.keep_unknown_keys)
            before = len(skipped)
            fmt, it = import_rows(src, args.format, options, skipped)
            got = list(it)
            sources.append({"kind": "file", "path": src, "format": fmt, "sha256": _file_digest(src),
                            "rows": len(got), "skipped": len(skipped) - before})
        else:
            v = _load(args, src, "build")
            got = [trajectory_to_row(t) for t in v.trajectories]
            sources.append({"kind": "version", "ref": v.ref, "fingerprint": v.fingerprint, "rows": len(got)})
        rows.extend(got)
    result = build(rows, spec)
    if not result.rows:
        raise ConfigError("the build kept no trajectory: " + "; ".join(
            f"{s['step']} left {s['rows']}" for s in result.steps) + "; loosen the filters or check the sources")
    lineage = {"built_by": "bclone dataset build", "sources": sources, "steps": result.steps,
               "warnings": result.warnings, "skipped_sources": len(skipped)}
    store = _store(args, must_exist=False)
    manifest = write_rows(store, args.name, args.version, result.rows, parent=args.parent, lineage=lineage,
                          source="bclone dataset build")
    c = manifest["counts"]
    print(f"built {args.name}@{args.version}: {c['trajectories']} trajectories from {len(sources)} source(s), "
          f"splits {c['splits']}, cohorts { {k: sum(v.values()) for k, v in c['cohorts'].items()} }")
    for s in result.steps:
        print(f"  {s['step']}: {s['rows']} rows")
    _print_skipped(skipped)
    for w in result.warnings:
        print(f"bclone: warning: {w}", file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .dataset.importers import ImportOptions, SkippedSource, sniff_format

    is_file = os.path.isfile(args.target) or (os.path.isdir(args.target) and not os.path.isfile(
        os.path.join(args.target, "manifest.json")) and os.path.isfile(os.path.join(args.target, "tasks.json")))
    if not is_file:
        # A stored version: every problem listed (fingerprint, paths, each file, counts against the
        # data, every row), never only the first; a damaged version exits 2.
        from .dataset.store import MANIFEST

        store = _store(args, must_exist=not os.path.isfile(os.path.join(args.target, MANIFEST)))
        report = store.verify(args.target, source="bclone dataset validate")
        print("\n".join(report.lines()))
        return 0 if report.ok else 2
    fmt = sniff_format(args.target) if args.format == "auto" else args.format
    if fmt == "openai-jsonl":
        return _validate_jsonl(args.target)
    skipped: list[SkippedSource] = []
    options = ImportOptions(strict=False)
    _, rows = import_rows(args.target, fmt, options, skipped)
    good = sum(1 for _ in rows)
    for s in skipped:
        print(f"{s.where}: {s.reason}")
    print(f"{args.target}: {good} valid, {len(skipped)} invalid ({fmt})")
    return 1 if skipped else 0


def _validate_jsonl(path: str) -> int:
    from .dataset.openai_jsonl import check_unique_id, iter_openai_jsonl
    from .dataset.schema import validate_row

    bad = good = 0

    def report(exc: BcloneError) -> None:
        nonlocal bad
        print(exc)
        bad += 1

    seen: dict[str, int] = {}
    for lineno, row in iter_openai_jsonl(path, on_error=report):
        try:
            validate_row(row, f"{path}:{lineno}")
            check_unique_id(row["id"], lineno, seen, f"{path}:{lineno}")
            good += 1
        except BcloneError as exc:
            report(exc)
    print(f"{path}: {good} valid, {bad} invalid")
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
