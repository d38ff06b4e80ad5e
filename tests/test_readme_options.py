"""The README's options table is generated from pytest_bclone.config.OPTIONS (the one source of
options), and a test keeps it in sync:

    python tests/test_readme_options.py            # print the table
    python tests/test_readme_options.py --write    # replace the table in README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from pytest_bclone.config import OPTIONS, cli_options

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- options:start -->", "<!-- options:end -->"


def _default(value: object) -> str:
    if value in (None, {}, [], frozenset()):
        return "—"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def table() -> str:
    with_cli = {opt.name for opt in cli_options()}
    lines = ["| option | ini key | ini type | default | meaning |", "|---|---|---|---|---|"]
    for opt in OPTIONS:
        flag = f"`{opt.cli}`" if opt.name in with_cli else "(ini only)"
        text = opt.help.replace("|", "\\|")
        if opt.path:
            text += " (a path: on the command line relative to where pytest runs, in an ini file to that file)"
        lines.append(f"| {flag} | `{opt.ini_name}` | {opt.ini_type} | {_default(opt.default)} | {text} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    block = f"{START}\n{table()}\n{END}"
    if not argv:
        print(table())
        return 0
    readme = README.read_text()
    if START not in readme or END not in readme:
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + block + tail
    if argv[0] == "--check":
        if new != readme:
            print("README.md's options table is out of date: run python tests/test_readme_options.py --write",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


def test_the_readme_options_table_is_generated_from_the_options() -> None:
    assert main(["--check"]) == 0, "run: python tests/test_readme_options.py --write"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
