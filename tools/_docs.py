"""Shared by the measurement tools: write a generated section into a doc in place."""
from __future__ import annotations

from pathlib import Path


def update_section(path: Path, name: str, body: str, title: str = "# Importance criteria\n") -> None:
    """Replace the text between this tool's markers in `path` (appending the section if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else title
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def cpu_name() -> str:
    """The host CPU's model name (for the line that says where a table was measured)."""
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
