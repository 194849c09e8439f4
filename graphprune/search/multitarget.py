"""Several targets in one optimize run: `--target x86,arm-a72 --backend ort,tvm ...`.

Each comma list is aligned with --target: entry i of --backend, --rpc-tracker and --rpc-key
belongs to target i; a list of one entry applies to every target, and an empty entry means
"none" (`--rpc-tracker ,10.0.0.2:9190`: the first target is timed on this host). A target
appearing twice (`--target x86,x86 --backend ort,tvm`) is told apart by its backend.

Every target gets its own search, journal, front and chosen model in OUTDIR/<name>/ (name:
the target, or target-backend when a target appears twice), so each finds the configuration
that is fast where it runs. Quality does not depend on the target: every candidate's error
and counts are computed once for the whole run and kept in OUTDIR/quality.jsonl
(graphprune.search.quality_store); a configuration another target's search already evaluated
is only rebuilt and timed. OUTDIR/report.md compares the targets: each one's choice and
speed-up, and per channel group how many units each target keeps. OUTDIR/targets.json holds
the same, machine-readable. `--resume` resumes every target's search.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from graphprune.errors import GraphpruneError

STORE_NAME = "quality.jsonl"


@dataclasses.dataclass
class TargetRun:
    name: str
    target: str
    backend: str
    rpc_tracker: str | None
    rpc_key: str | None


def _aligned(option: str, text: str | None, n: int) -> list[str | None]:
    items = [None] if text is None else [s.strip() or None for s in str(text).split(",")]
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise GraphpruneError(f"{option} has {len(items)} entries for {n} targets: give one for all, "
                              f"or one per target in --target's order")
    return items


def is_multi(o) -> bool:
    return any("," in str(v) for v in (o.target, o.backend, o.rpc_tracker or "", o.rpc_key or ""))


def split_targets(o) -> list[TargetRun]:
    targets = [t.strip() for t in str(o.target).split(",")]
    if any(not t for t in targets):
        raise GraphpruneError(f"--target {o.target!r}: an empty target name")
    n = len(targets)
    backends = _aligned("--backend", o.backend, n)
    trackers, keys = _aligned("--rpc-tracker", o.rpc_tracker, n), _aligned("--rpc-key", o.rpc_key, n)
    runs = []
    for t, b, tr, k in zip(targets, backends, trackers, keys):
        if b not in ("ort", "tvm"):
            raise GraphpruneError(f"unknown backend {b!r} for target {t!r} (use ort or tvm)")
        name = t if targets.count(t) == 1 else f"{t}-{b}"
        if any(r.name == name for r in runs):
            raise GraphpruneError(f"target {t!r} with backend {b!r} is given twice")
        runs.append(TargetRun(name, t, b, tr, k))
    return runs


def target_options(o, run: TargetRun, out: Path):
    return dataclasses.replace(o, target=run.target, backend=run.backend, rpc_tracker=run.rpc_tracker,
                               rpc_key=run.rpc_key, outdir=str(out / run.name), quality_store=str(out / STORE_NAME))


def preflight(o, runs: list[TargetRun], out: Path) -> list:
    """Every target's options and device checked before anything is measured for any of them."""
    from graphprune.search.latency import resolve_latency
    from graphprune.search.options import validate
    from graphprune.search.outdir import check_outdir
    if out.exists() and not out.is_dir():
        raise GraphpruneError(f"{out}: exists and is not a folder; -o names the output folder")
    opts = []
    for r in runs:
        oi = target_options(o, r, out)
        validate(oi)
        check_outdir(oi.outdir, oi.model, oi.resume)
        resolve_latency(oi)
        opts.append(oi)
    return opts


def run_multi(o, executor=None, log=None) -> dict:
    """One search per target, sharing quality evaluations; the comparison in OUTDIR/report.md."""
    from graphprune.search.pipeline import run_optimize
    from graphprune.search.stages import default_outdir
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    runs = split_targets(o)
    out = Path(o.outdir) if o.outdir else default_outdir(o.model)
    o.outdir = str(out)   # as a single-target run does: the caller reports it
    opts = preflight(o, runs, out)
    results, failed = {}, {}
    for r, oi in zip(runs, opts):
        log(f"== target {r.name}: {r.target}, backend {r.backend}"
            + (f", tracker {r.rpc_tracker} key {r.rpc_key}" if r.rpc_tracker else ", this host"))
        try:
            results[r.name] = run_optimize(oi, executor=executor, log=log)
        except GraphpruneError as exc:
            if not (Path(oi.outdir) / "pareto.json").exists():
                raise   # it failed before searching: a real error, not "nothing meets the constraints"
            failed[r.name] = str(exc)
    summary = compare(runs, results, failed)
    summary["kept_units"] = kept_units(o, summary)
    write_comparison(out, summary)
    if failed:
        raise GraphpruneError(f"no candidate meets the constraints on {', '.join(failed)}; see {out / 'report.md'}")
    return summary


def compare(runs: list[TargetRun], results: dict, failed: dict) -> dict:
    """Per target: the choice, its figures, the front; per group: units kept on each target."""
    per = {}
    for r in runs:
        s = results.get(r.name)
        entry = {"target": r.target, "backend": r.backend, "rpc_tracker": r.rpc_tracker, "rpc_key": r.rpc_key,
                 "folder": r.name}
        if s is None:
            entry["failed"] = failed.get(r.name)
        else:
            measured = s.get("_measured") or []
            entry.update(chosen=s["chosen"]["key"], config=s["chosen"]["config"],
                         latency_ms=s["chosen"]["latency_ms"], error=s["chosen"]["error"],
                         baseline_latency_ms=s["baseline"]["latency_ms"], baseline_error=s["baseline"]["error"],
                         front=[f["key"] for f in s["front"]], latency_label=s["latency_label"],
                         speedup=(s.get("final") or {}).get("speedup"), measured=len(measured),
                         quality_shared=sum(1 for m in measured if m.get("quality_shared")))
        per[r.name] = entry
    groups = sorted({int(g) for e in per.values() for g in (e.get("config") or {})})
    widths = next(({str(g["id"]): g["units"] for g in s["space"]["groups"]} for s in results.values()), {})
    return {"targets": per, "groups": groups, "units": widths}


def kept_units(o, summary: dict) -> dict:
    """{group: {target: [unit indices kept]}} for the groups where the targets' choices differ:
    which channels each target keeps, as the search judged them (ranked by --criterion on the
    original weights; recovery with --finetune-steps re-ranks on the trained weights)."""
    import graphprune as gp
    per = {n: e for n, e in summary["targets"].items() if "config" in e}
    differing = [g for g in summary["groups"] if len({e["config"].get(str(g)) for e in per.values()}) > 1]
    if not differing:
        return {}
    an = gp.analyse(gp.load(o.model), input_shapes=o.input_shapes)
    out = {}
    for name, e in per.items():
        plan = gp.choose(an, keep={int(g): int(v) for g, v in e["config"].items()}, criterion=o.criterion)
        for g in differing:
            units = an.units_of_group(g)
            out.setdefault(str(g), {})[name] = [i for i, u in enumerate(units) if plan.keep_units[u]]
    return out


def _unit_list(ids: list[int], limit: int = 24) -> str:
    return ", ".join(map(str, ids[:limit])) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def report_lines(summary: dict) -> list[str]:
    per = summary["targets"]
    names = list(per)
    lines = ["# Several targets, one run", "",
             "Each target was searched with its own latency; candidate quality was computed once and shared "
             "(`quality.jsonl`). The channels a group keeps are the top-ranked ones under the run's "
             "criterion, so a smaller count keeps a subset of a larger one.", "",
             "| target | folder | chosen | latency ms (search) | error | speed-up (final) | front | measured | "
             "quality shared |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        e = per[n]
        if "failed" in e:
            lines.append(f"| {e['target']} ({e['backend']}) | {n}/ | none: {e['failed']} | | | | | | |")
            continue
        sp = f"{e['speedup']:.2f}x" if e.get("speedup") else "-"
        lines.append(f"| {e['target']} ({e['backend']}) | {n}/ | {e['chosen']} | {e['latency_ms']:.3f} "
                     f"(original {e['baseline_latency_ms']:.3f}) | {e['error']:.4f} | {sp} | {len(e['front'])} | "
                     f"{e['measured']} | {e['quality_shared']} |")
    lines += ["", "## Units kept per channel group", "",
              "| group | " + " | ".join(names) + " | differs |", "|---|" + "---|" * (len(names) + 1)]
    for g in summary["groups"]:
        kept = [per[n].get("config", {}).get(str(g)) for n in names]
        width = summary["units"].get(str(g))
        cells = [("-" if k is None else f"{k}" + (f" ({100 * k / width:.0f} %)" if width else "")) for k in kept]
        differs = "yes" if len({k for k in kept if k is not None}) > 1 else ""
        lines.append(f"| {g}{f' (of {width})' if width else ''} | " + " | ".join(cells) + f" | {differs} |")
    kept = summary.get("kept_units") or {}
    if kept:
        lines += ["", "## Which units each target keeps where they differ", "",
                  "Unit indices within the group (0 = the group's first channel), kept by one target and not by "
                  "another:", ""]
        for g, by in kept.items():
            union = set().union(*map(set, by.values()))
            for name, ids in by.items():
                only_others = sorted(union - set(ids))
                lines.append(f"- group {g}, {name} keeps {len(ids)}; drops what another keeps: "
                             f"{_unit_list(only_others) or 'nothing'}")
    return lines + [""]


def write_comparison(out: Path, summary: dict) -> None:
    from graphprune.search.report import atomic_write_text, write_json
    write_json(out / "targets.json", summary)
    atomic_write_text(out / "report.md", "\n".join(report_lines(summary)))
