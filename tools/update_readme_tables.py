#!/usr/bin/env python
"""Copy the measured tables from docs/*.md into README.md.

The measurement scripts write their tables to docs/ (coverage, speed, latency,
importance, optimize); the README shows the same tables between markers
`<!-- table: docs/NAME.md -->` and `<!-- /table -->` (`docs/NAME.md#2,3` takes only the
2nd and 3rd tables). Rerun after any measurement.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(<!-- table: (?P<doc>[^ #]+)(?:#(?P<pick>[0-9,]+))? -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def tables(doc: Path, pick: list[int] | None = None) -> str:
    """The markdown tables of `doc` (all, or the 1-based `pick`), each with its heading."""
    lines = doc.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        intro = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        head = "**" + intro.lstrip("# ").strip() + "**\n\n" if intro.startswith("#") else ""
        found.append(head + "\n".join(lines[i:j]) + "\n")
        i = j
    chosen = found if pick is None else [found[k - 1] for k in pick if 0 < k <= len(found)]
    return "\n".join(chosen)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()

    def fill(m: re.Match) -> str:
        doc = ROOT / m.group("doc")
        pick = [int(k) for k in m.group("pick").split(",")] if m.group("pick") else None
        body = tables(doc, pick) if doc.exists() else f"(not measured yet: run the script named in {m.group('doc')})\n"
        return m.group(1) + body + m.group(5)

    new = MARK.sub(fill, text)
    if new != text:
        readme.write_text(new)
    print(f"README.md: {len(MARK.findall(text))} table block(s) refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
