"""The README's settings table, generated from backend.config.Settings so it cannot drift.

    python scripts/settings_table.py            # print it
    python scripts/settings_table.py --write    # replace the block between the markers in README.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from backend.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- settings:start -->\n).*?(<!-- settings:end -->)", re.S)


def table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(derived)" if default is None else f"`{default}`"
        rows.append(f"| `DUALSEG_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


def readme_block() -> str:
    match = BLOCK.search(README.read_text())
    return match.group(0)[len("<!-- settings:start -->\n"):-len("<!-- settings:end -->")] if match else ""


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(BLOCK.sub(lambda m: m.group(1) + table() + m.group(2), README.read_text()))
    else:
        print(table(), end="")
