"""The ``bclone`` command: manage trajectory dataset versions.

    bclone dataset import FILE --name support --version v8 [--format openai-jsonl] [--cohort C ...]
    bclone dataset export support@v8 --format openai-jsonl [--split train] [-o FILE]
    bclone dataset ls | show REF | diff A B | validate FILE

The root is ``--root``, else ``$BCLONE_DATASET_ROOT``, else ``bclone_datasets`` (the plugin's
default for ini ``bclone_dataset_root``). Errors print one ``bclone: error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .errors import BcloneError

IMPORT_FORMATS = ("openai-jsonl", "tau-bench", "openinference")
EXPORT_FORMATS = ("openai-jsonl",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bclone", description="Manage pytest-bclone trajectory datasets.")
    sub = p.add_subparsers(dest="group", required=True)
    ds = sub.add_parser("dataset", help="dataset versions: import, export, ls, show, diff, validate")
    ds.add_argument("--root", default=None,
                    help="dataset root (dir or pyarrow URI); default $BCLONE_DATASET_ROOT or bclone_datasets")
    cmds = ds.add_subparsers(dest="cmd", required=True)

    imp = cmds.add_parser("import", help="import a file as a new write-once version")
    imp.add_argument("file")
    imp.add_argument("--format", choices=IMPORT_FORMATS, default="openai-jsonl")
    imp.add_argument("--name", required=True, help="dataset name, e.g. support")
    imp.add_argument("--version", required=True, help="new version, e.g. v8")
    imp.add_argument("--parent", default=None, help="the version this one derives from (lineage)")
    imp.add_argument("--cohort", action="append", default=[], help="cohort for rows that name none (repeatable)")
    imp.add_argument("--split", choices=("train", "eval"), default=None, help="force every row into one split")
    imp.add_argument("--eval-fraction", type=float, default=0.2,
                     help="share of rows put in eval (stable hash of the id) when rows name no split")

    exp = cmds.add_parser("export", help="export a version (OpenAI fine-tuning JSONL)")
    exp.add_argument("ref")
    exp.add_argument("--format", choices=EXPORT_FORMATS, default="openai-jsonl")
    exp.add_argument("--split", choices=("train", "eval", "all"), default="train",
                     help="which split (default train: the rows a clone is fine-tuned on)")
    exp.add_argument("--with-ids", action="store_true", help="keep id, cohorts, split... so a re-import round-trips")
    exp.add_argument("-o", "--output", default="-", help="output file (default stdout)")

    cmds.add_parser("ls", help="list datasets and versions")
    show = cmds.add_parser("show", help="print a version's manifest")
    show.add_argument("ref")
    diff = cmds.add_parser("diff", help="compare two versions")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    val = cmds.add_parser("validate", help="check a file (every bad line) or a stored version (hashes)")
    val.add_argument("target", help="an import file, or a version ref such as v8")
    val.add_argument("--format", choices=IMPORT_FORMATS, default="openai-jsonl")
    return p


def _root(args: argparse.Namespace) -> tuple[str, str]:
    if args.root:
        return args.root, "--root"
    if os.environ.get("BCLONE_DATASET_ROOT"):
        return os.environ["BCLONE_DATASET_ROOT"], "$BCLONE_DATASET_ROOT"
    return "bclone_datasets", "the default root bclone_datasets"


def _read_import(args: argparse.Namespace, path: str) -> list[dict[str, Any]]:
    if args.format == "tau-bench":
        from .dataset.tau_bench import read_tau_tasks

        return read_tau_tasks(path, cohorts=args.cohort, split=args.split)
    if args.format == "openinference":
        from .dataset.openinference import read_openinference

        return read_openinference(path, cohorts=args.cohort, split=args.split, eval_fraction=args.eval_fraction)
    from .dataset.openai_jsonl import read_openai_jsonl

    return read_openai_jsonl(path, cohorts=args.cohort, split=args.split, eval_fraction=args.eval_fraction)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bclone`` console script."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BcloneError as exc:
        print(f"bclone: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `bclone dataset export v8 | head`: the reader left; that is not an error of ours.
        sys.stderr.close()
        return 0


def _run(args: argparse.Namespace) -> int:
    from .dataset.store import DatasetStore, load_ref

    root, root_source = _root(args)
    store = DatasetStore(root, source=root_source)
    if args.cmd == "import":
        from .dataset.store import check_name

        check_name(args.name, "dataset name", "bclone dataset import --name")
        check_name(args.version, "dataset version", "bclone dataset import --version")
        rows = _read_import(args, args.file)
        manifest = store.write_version(
            args.name, args.version, rows, parent=args.parent, validate=False, source=args.file,
            lineage={"imported_from": os.path.basename(args.file), "format": args.format,
                     "cohorts": args.cohort, "split": args.split},
        )
        c = manifest["counts"]
        print(f"wrote {args.name}@{args.version}: {c['trajectories']} trajectories, "
              f"{sum(c['decision_points'].values())} decision points, splits {c['splits']}")
        return 0
    if args.cmd == "export":
        from .dataset.openai_jsonl import write_openai_jsonl

        version = load_ref(args.ref, root, source="bclone dataset export", root_source=root_source)
        selected = version.select(args.split)
        if args.output == "-":
            n = write_openai_jsonl(selected, sys.stdout, with_ids=args.with_ids)
        else:
            tmp = args.output + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                n = write_openai_jsonl(selected, f, with_ids=args.with_ids)
            os.replace(tmp, args.output)  # a reader never sees half a file
        print(f"exported {n} {args.split} trajectories of {version.ref}", file=sys.stderr)
        return 0
    if args.cmd == "ls":
        names = store.names()
        for name in names:
            print(f"{name}: {', '.join(store.versions(name)) or '(no complete version)'}")
        if not names:
            print(f"no datasets under {store.display}")
        return 0
    if args.cmd == "show":
        version = load_ref(args.ref, root, source="bclone dataset show", root_source=root_source)
        print(json.dumps({**version.manifest, "fingerprint": version.fingerprint}, indent=2, sort_keys=True))
        return 0
    if args.cmd == "diff":
        from .dataset.diff import diff_versions

        a = load_ref(args.a, root, source="bclone dataset diff", root_source=root_source)
        b = load_ref(args.b, root, source="bclone dataset diff", root_source=root_source)
        d = diff_versions(a, b)
        print(json.dumps(d.to_dict(), indent=2) if args.json else "\n".join(d.lines()))
        return 0
    if args.cmd == "validate":
        return _validate(args, root, root_source)
    raise AssertionError(args.cmd)


def _validate(args: argparse.Namespace, root: str, root_source: str) -> int:
    from .dataset.schema import validate_row
    from .dataset.store import load_ref

    is_import_file = os.path.isfile(args.target) or (args.format == "tau-bench" and os.path.isdir(args.target))
    if not is_import_file:
        v = load_ref(args.target, root, source="bclone dataset validate", root_source=root_source)
        print(f"{v.ref}: {len(v.trajectories)} trajectories, every file matches its sha256 ({v.fingerprint})")
        return 0
    if args.format != "openai-jsonl":
        args.cohort, args.split, args.eval_fraction = [], None, 0.2
        rows = _read_import(args, args.target)
        print(f"{args.target}: {len(rows)} valid rows")
        return 0
    from .dataset.openai_jsonl import iter_openai_jsonl

    bad = good = 0
    try:
        for lineno, row in iter_openai_jsonl(args.target):
            try:
                validate_row(row, f"{args.target}:{lineno}")
                good += 1
            except BcloneError as exc:
                print(exc)
                bad += 1
    except BcloneError as exc:  # a line that is not JSON stops the reader: report it with the others
        print(exc)
        bad += 1
    print(f"{args.target}: {good} valid, {bad} invalid")
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
