#!/usr/bin/env python
"""Copy the measured tables from docs/*.md into README.md.

The measurement scripts write their tables to docs/ (coverage, speed, latency,
importance, optimize); the README shows the same tables between markers
`<!-- table: docs/NAME.md -->` and `<!-- /table -->`. Rerun after any measurement.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(<!-- table: (?P<doc>[^ ]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def tables(doc: Path) -> str:
    """Every markdown table of `doc`, each with the heading or line introducing it."""
    lines = doc.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            intro = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            if intro.startswith("#"):
                out.append("**" + intro.lstrip("# ").strip() + "**\n")
            out.append("\n".join(lines[i:j]) + "\n")
            i = j
        else:
            i += 1
    return "\n".join(out)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()

    def fill(m: re.Match) -> str:
        doc = ROOT / m.group("doc")
        body = tables(doc) if doc.exists() else f"(not measured yet: run the script named in {m.group('doc')})\n"
        return m.group(1) + body + m.group(4)

    new = MARK.sub(fill, text)
    if new != text:
        readme.write_text(new)
    print(f"README.md: {len(MARK.findall(text))} table block(s) refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
