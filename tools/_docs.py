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


def run_prefix() -> str:
    """`nice -n N ` when this process runs niced, else "": the command line a table quotes is the
    one that ran (a tool must not claim `nice` it did not get)."""
    import os
    n = os.nice(0)
    return f"nice -n {n} " if n > 0 else ""


def load_text(load0, load1) -> str:
    """The host's load while a table was measured, e.g. `load average 0.8 at the start, 2.3 at the
    end, 2 cores`: the reader judges from it how noisy the latencies are (the tool cannot know
    whether other jobs shared the cores)."""
    import os
    return f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end, {os.cpu_count()} cores"


def write_result(out: Path, name: str, res: dict, doc: Path | None, markdown, load0, tool: str, argv) -> None:
    """OUT/<name>.json, and unless `doc` is None the doc section `name` (with '_' as '-') from
    markdown(res, load0, load1, command as run). For the probes that write one section each."""
    import json
    import os
    import sys
    (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    if doc is not None:
        cmd = run_prefix() + f".venv/bin/python tools/{tool} " + " ".join(argv if argv is not None else sys.argv[1:])
        update_section(doc, name.replace("_", "-"), markdown(res, load0, os.getloadavg(), cmd.strip()))
