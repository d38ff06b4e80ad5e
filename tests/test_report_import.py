"""Importing the report package stays cheap: heavy and optional libraries load only when used."""

from __future__ import annotations

import subprocess
import sys


def test_report_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, pytest_bclone.report as r\n"
        "heavy = ('pyarrow', 'litellm', 'pytest', '_pytest', 'tabulate', 'jsonschema', 'yaml', 'numpy')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
