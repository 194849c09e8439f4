"""Outputs: pareto.json, pareto.png (matplotlib Agg), report.md."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from graphprune.search.jsonsafe import dumps

_KEYS = ("key", "phase", "config", "error", "latency_ms", "latency_spread_ms", "macs", "params", "param_bytes",
         "energy_mj", "group", "ratio", "predicted", "size_bytes", "energy_uj", "energy_label", "int8_layers",
         "fp16_layers", "precision")


def slim(r: dict | None, metric_key: str = "accuracy") -> dict | None:
    """The record's reported fields, with the metric's value (1 - error) under the metric's name."""
    if r is None:
        return None
    out = {k: r[k] for k in _KEYS if k in r}
    if "error" in out:
        out[metric_key] = 1.0 - out["error"]
    return out


def _q(error: float, s: dict) -> str:
    """A table cell of the metric: percent (2 decimals) for the built-ins, 4 decimals otherwise."""
    return f"{100 * (1 - error):.2f}" if _metric(s).get("percent", True) else f"{1 - error:.4f}"


def _metric(s: dict) -> dict:
    return s.get("metric") or {"name": "accuracy", "reference": "labels", "percent": True}


def _qtext(error: float, s: dict) -> str:
    m = _metric(s)
    return f"{m['name']} {_q(error, s)}" + (" %" if m.get("percent", True) else "")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file + rename, with the permissions the user's umask gives a new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict) -> list[str]:
    """Valid JSON always (allow_nan=False): a non-finite number is written as null and listed in
    data["json_notes"]; returns those paths."""
    where: list[str] = []
    dumps(data, where)
    if where:
        data = {**data, "json_notes": [f"non-finite value written as null: {w}" for w in where]}
    atomic_write_text(path, dumps(data, indent=1) + "\n")
    return where


def plot(path: Path, measured: list[dict], front: list[dict], baseline: dict, uniform: list[dict],
         chosen: dict | None, recovered: dict | None, latency_label: str, title: str, criterion: str = "l1",
         extra_series: dict[str, list[tuple[float, float]]] | None = None,
         ylabel: str = "accuracy [%] on held-out data") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def xy(rows):
        rows = [r for r in rows if r.get("latency_ms") is not None]
        return [r["latency_ms"] for r in rows], [100 * (1 - r["error"]) for r in rows]

    fig, ax = plt.subplots(figsize=(7.5, 5))
    x, y = xy(measured)
    ax.scatter(x, y, s=12, c="0.75", label=f"measured candidates ({len(x)})")
    fr = sorted([r for r in front if r.get("latency_ms") is not None], key=lambda r: r["latency_ms"])
    x, y = xy(fr)
    ax.plot(x, y, "o-", c="tab:blue", ms=5, label=f"Pareto front ({len(x)})")
    if uniform:
        x, y = xy(sorted(uniform, key=lambda r: r["latency_ms"] or 0))
        ax.plot(x, y, "s--", c="tab:orange", ms=5, label=f"uniform ratio baseline ({criterion} ranking)")
    for name, pts in (extra_series or {}).items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "^:", ms=6, label=name)
    x, y = xy([baseline])
    ax.scatter(x, y, marker="*", s=220, c="k", zorder=5, label="original")
    if chosen is not None:
        x, y = xy([chosen])
        ax.scatter(x, y, marker="D", s=90, facecolors="none", edgecolors="tab:red", linewidths=2, zorder=6,
                   label="chosen (before recovery)")
    if recovered is not None and recovered.get("latency_ms") is not None:
        ax.scatter([recovered["latency_ms"]], [100 * (1 - recovered["error"])], marker="P", s=120, c="tab:green",
                   zorder=7, label="chosen after fine-tuning")
    ax.set_xlabel(f"latency [ms] ({latency_label})")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".pareto.", suffix=".png")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _row(r: dict, base: dict, energy: bool, s: dict) -> str:
    lat = r.get("latency_ms")
    sp = f"{base['latency_ms'] / lat:.2f}x" if lat and base.get("latency_ms") else "-"
    cells = [r["key"], _q(r["error"], s), f"{lat:.3f}" if lat is not None else "-", sp,
             f"{r['macs'] / 1e6:.2f}", f"{r['param_bytes'] / 1024:.1f}"]
    if energy:
        cells.append(f"{r['energy_mj']:.3f}" if r.get("energy_mj") is not None else "-")
    return "| " + " | ".join(cells) + " |"


def markdown(s: dict) -> str:
    """The human report from the summary dict that pareto.json also holds."""
    base = s["baseline"]
    energy = s["latency"].get("power_w") is not None
    m = _metric(s)
    L = [f"# graphprune optimize: {s['model']}", ""]
    if s["latency"].get("stand_in"):
        L += [f"> **STAND-IN TIMINGS**: {s['latency_label']}. No latency below is from "
              f"target `{s['latency']['target']}`.", ""]
    L += [f"- target: `{s['latency']['target']}`; latency: {s['latency_label']}",
          f"- threads: {s.get('threads_text', '-')}",
          f"- data: {s['data']['description']}",
          f"- quality metric: **{m['name']}** against {m['reference']}"
          + (f" ({m['why']})" if m.get("why") else "") + (f": {m['description']}" if m.get("description") else "")
          + "; error = 1 - metric",
          f"- objectives: {', '.join(s['objectives'])}; constraints: {s['constraints_text']}; "
          f"preferences: {s['weights_text']}",
          f"- search space: {len(s['space']['groups'])} groups, channel step {s['space']['step']}, "
          f"{s['space_size']:.3g} configurations; optimizer {s['optimizer']} (nevergrad), budget {s['budget']}, "
          f"{s['workers']} worker(s), seed {s['seed']}",
          f"- candidates: {s['counts']['asked']} proposed, {s['counts']['measured_total']} measured in all "
          f"({s['counts']['measured_this_run']} in this run, {s['counts']['from_journal']} read back from the journal), "
          f"{s['counts']['screened']} screened out by the surrogate, {s['counts']['duplicates']} repeats",
          ""]
    if energy:
        L += [f"Energy is an ESTIMATE: latency x stated power {s['latency']['power_w']} W of the "
              f"{'stand-in ' if s['latency'].get('stand_in') else ''}target; it is not measured.", ""]
    L += ["## Original", "", f"{_qtext(base['error'], s)}, latency {base['latency_ms']:.3f} ms, "
          f"{base['macs'] / 1e6:.2f} M MACs, {base['param_bytes'] / 1024:.1f} KiB parameters", ""]
    ch = s.get("chosen")
    L += ["## Choice", ""]
    if ch is None:
        L += [f"**No candidate meets the constraints.** {s['choice_reason']}", ""]
    else:
        L += [f"Chosen configuration `{ch['key']}` (kept units per group): {s['choice_reason']}.", ""]
        rec = s.get("recovery")
        if rec:
            L += ["### Recovery by fine-tuning", "", rec["text"], ""]
        bad = s.get("recovery_rejected")
        if bad:
            L += ["### Recovery rejected", "", f"The fine-tuned `{bad['key']}` was **not delivered**: {bad['reason']}. "
                  f"Delivered instead: `{s['delivered']['key']}` as pruned, without recovery, "
                  f"{_qtext(1 - s['delivered'][m.get('key', 'accuracy')], s)}.", ""]
        fin = s.get("final")
        if fin:
            L += ["### Delivered model vs original, measured side by side", "", fin["text"] + ".",
                  "", "The latencies in the front below are the search's (they may come from the latency "
                  "cache, measured in other runs); this comparison is the one to quote.", ""]
    L += ["## Pareto front", "", "kept units per group in the order " +
          ", ".join(f"{g['id']} ({g['units']})" for g in s["space"]["groups"]), "",
          f"| configuration | {m['name']}{' %' if m.get('percent', True) else ''} | latency ms (search) | speed-up (search) | M MACs | param KiB |" + (" energy mJ (est.) |" if energy else ""),
          "|---|---|---|---|---|---|" + ("---|" if energy else "")]
    L += [_row(r, base, energy, s) for r in s["front"]]
    L += ["", "## Sensitivity (each group pruned alone)", ""]
    for gid, rows in s["sensitivity"]["curves"].items():
        cells = ", ".join(f"{r['kept']}: {_q(r['error'], s)} / {r['latency_ms']:.3f} ms"
                          if r.get("latency_ms") is not None else f"{r['kept']}: {_q(r['error'], s)}"
                          for r in rows)
        L.append(f"- group {gid}: {cells}")
    b = s["sensitivity"]["bounds"]
    L += ["", "Search bounds from sensitivity: " + (", ".join(f"group {g} keeps >= {v}" for g, v in b.items())
                                                     if b else "none (no error constraint, or no group fails alone)"), ""]
    sg = s["surrogate"]
    L += ["## Surrogate (regression) accuracy", ""]
    for name, pe in (("held-out random configurations, fitted on the sensitivity sweep", sg.get("holdout")),
                     ("search candidates, predicted before they were measured", sg.get("prospective"))):
        if pe and pe.get("n"):
            mape = f"latency MAPE {pe['latency_mape_pct']:.1f} %, " if pe.get("latency_mape_pct") is not None else ""
            L.append(f"- {name} (n={pe['n']}): {mape}error MAE {pe['error_mae_pp']:.2f} pp")
    L += ["", f"Model: {sg['model']}", ""]
    for note in (s.get("notes") or []) + (s.get("json_notes") or []):
        L += [f"Note: {note}", ""]
    L += ["## Files", "", "- `best.onnx`: the chosen model" + (" after recovery" if s.get("recovery") else ""),
          "- `pareto.json`, `pareto.png`, `journal.jsonl` (every measurement; `--resume` continues from it)", ""]
    return "\n".join(L)
