"""Where to attach the branch: each candidate tensor tried briefly, picked by accuracy and measured latency.

Candidates are the ends of the conv stages: among the tensors where a branch can attach
(graphprune.dynamic.graph.candidates: a 4-D map that cuts the graph, convs before it, a
gateable conv after it), the last one of each conv count (after its ReLU or pooling).
For each, on a fixed-seed subset of the training data (three quarters fit, one quarter
judged):

* the head (the same pooling + linear layer as the real branch) is fitted on the frozen
  features, which one onnxruntime pass of the original model computes for every
  candidate at once;
* on the judged quarter: the fraction of inputs that exit at --threshold, how many of the
  exits are right, whether the label is among the branch's top-k (the gated path gets the
  filters of the right classes only then), and a *proxy accuracy*: an exiting input is
  right when the branch is, any other when the original model is right and the label is
  in the branch's top-k. It assumes the gated path after fine-tuning is as accurate as
  the original wherever the subset is right (the fine-tuning is not run per candidate:
  too slow), so it ranks candidates, it does not predict the final accuracy;
* the early-exit and gated (longest) paths of the candidate's dynamic model at --budget,
  measured on a probe (graphprune.dynamic.probe: the latency depends on shapes only),
  and the expected average = exit fraction x exit path + the rest x gated path.

The pick: the lowest expected average among the candidates whose proxy accuracy is within
--branch-max-drop of the original's on the same inputs (ties: the shorter longest path);
when none is, the candidate of highest proxy accuracy.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError

JUDGED_FRACTION = 0.25
MAX_SEARCH_SAMPLES = 2000


def stage_candidates(m: onnx.ModelProto) -> list[str]:
    """The last candidate tensor of each conv count (graph order): the ends of the conv stages."""
    from graphprune.dynamic.graph import candidates
    last: dict[int, str] = {}
    for t, before in candidates(m):
        last[before] = t
    return [last[b] for b in sorted(last)]


def _features(m, names: list[str], output: str, x: np.ndarray, batch: int = 256) -> tuple[list, np.ndarray]:
    """Each candidate tensor and the model's output on x, one onnxruntime pass (batches)."""
    from graphprune.dynamic.build import _graph_inputs, extract
    from graphprune.runtime import session
    sub = extract(m, [i.name for i in _graph_inputs(m)], list(names) + [output])
    sess = session(sub)
    inp = sess.get_inputs()[0].name
    outs = [sess.run(None, {inp: x[i:i + batch]}) for i in range(0, len(x), batch)]
    return [[o[j] for o in outs] for j in range(len(names))], np.concatenate([o[-1] for o in outs])


def _pooled(chunks: list, pool):
    import torch

    from graphprune.dynamic.gated import pooled
    with torch.no_grad():
        return torch.cat([pooled(torch.from_numpy(c), pool) for c in chunks])


def judge(z: np.ndarray, y: np.ndarray, orig_pred: np.ndarray, k: int, threshold: float) -> dict:
    """Exit fraction, exits right, top-k recall and proxy accuracy of branch scores z on labelled inputs."""
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    exits = p.max(1) >= threshold
    right = z.argmax(1) == y
    in_topk = (np.argsort(-z, axis=1, kind="stable")[:, :k] == y[:, None]).any(1)
    proxy = np.where(exits, right, (orig_pred == y) & in_topk)
    return {"exit": float(exits.mean()), "exit_correct": float(right[exits].mean()) if exits.any() else None,
            "branch_accuracy": float(right.mean()), "topk_recall": float(in_topk.mean()),
            "proxy_accuracy": float(proxy.mean())}


def pick(rows: list[dict], original_accuracy: float, max_drop: float) -> tuple[dict, str]:
    """The chosen row and why (see the module docstring)."""
    ok = [r for r in rows if r.get("avg_ms") is not None]
    if not ok:
        raise GraphpruneError("no branch candidate could be measured: " + "; ".join(
            f"{r['tensor']}: {r.get('skipped')}" for r in rows))
    within = [r for r in ok if r["proxy_accuracy"] >= original_accuracy - max_drop - 1e-12]
    if within:
        best = min(within, key=lambda r: (r["avg_ms"], r["gated_ms"]))
        return best, (f"lowest expected average latency among the {len(within)} candidate(s) whose proxy accuracy "
                      f"is within {100 * max_drop:g} pp of the original's")
    best = max(ok, key=lambda r: (r["proxy_accuracy"], -r["avg_ms"]))
    return best, f"no candidate's proxy accuracy is within {100 * max_drop:g} pp of the original's: the most accurate"


def search_branch(m: onnx.ModelProto, ds, o, log=None) -> dict:
    """Try every stage candidate (see the module docstring); returns {'branch', 'reason', 'rows',
    'original_accuracy', 'samples'}. `o` is a DynamicOptions (k, threshold, budget, head_grid, ...)."""
    import torch

    from graphprune.dynamic.gated import fit_linear
    from graphprune.dynamic.graph import head_pool, split_model
    from graphprune.dynamic.probe import probe_paths
    names = stage_candidates(m)
    if not names:
        raise GraphpruneError("found no tensor where a branch can attach (a 4-D map that cuts the graph, with "
                              "convs before it and a gateable conv after it); name one with --branch-at")
    sub = ds.subsample(min(o.samples or len(ds), MAX_SEARCH_SAMPLES), o.seed)
    n_fit = len(sub) - max(1, int(round(JUDGED_FRACTION * len(sub))))
    if n_fit < 1:
        raise GraphpruneError(f"the branch search needs at least 2 labelled samples, got {len(sub)}")
    split0 = split_model(m, names[0], o.budget)
    sub = sub.take(np.random.default_rng(o.seed).permutation(len(sub)))   # fit / judged: no order effects
    chunks, out = _features(m, names, split0.output, sub.x)
    orig_pred = out.argmax(1)
    y = sub.y.astype(np.int64)
    rows = []
    for name, ch in zip(names, chunks):
        row = {"tensor": name, "shape": list(ch[0].shape[1:])}
        try:
            pool = head_pool(m, name, o.head_grid)
            s = split_model(m, name, o.budget)
        except GraphpruneError as exc:
            rows.append({**row, "skipped": str(exc)})
            continue
        f = _pooled(ch, pool)
        head = fit_linear(f[:n_fit], torch.from_numpy(y[:n_fit]), s.classes, o.head_steps, seed=o.seed)
        with torch.no_grad():
            z = head(f[n_fit:]).numpy()
        row.update(judge(z, y[n_fit:], orig_pred[n_fit:], o.k, o.threshold))
        row.update(probe_paths(m, s, o.k, pool, o.latency_repeats, o.threads, o))
        row["gated_convs"] = len(s.gates)
        row["avg_ms"] = row["exit"] * row["exit_ms"] + (1 - row["exit"]) * row["gated_ms"]
        rows.append(row)
        if log:
            log(f"branch candidate {name}: exits {row['exit']:.1%}, proxy accuracy {row['proxy_accuracy']:.4f}, "
                f"exit {row['exit_ms']:.3f} ms, gated {row['gated_ms']:.3f} ms, expected {row['avg_ms']:.3f} ms")
    orig_acc = float((orig_pred[n_fit:] == y[n_fit:]).mean())
    best, reason = pick(rows, orig_acc, o.branch_max_drop)
    from graphprune.dynamic.probe import original_ms
    return {"branch": best["tensor"], "reason": reason, "rows": rows, "original_accuracy": orig_acc,
            "original_ms": original_ms(m, o.latency_repeats, o.threads),
            "samples": {"fit": n_fit, "judged": len(sub) - n_fit}, "budget": o.budget, "threshold": o.threshold}


def table(search: dict) -> str:
    """The candidates as a plain-text table (the CLI prints it)."""
    lines = [f"branch search ({search['samples']['fit']} samples fitted, {search['samples']['judged']} judged; "
             f"original accuracy {100 * search['original_accuracy']:.2f} % on those, latency "
             f"{search['original_ms']:.3f} ms; budget {search['budget']:g}, threshold {search['threshold']:g}):",
             f"  {'tensor':<48} {'exit %':>7} {'exit ok %':>9} {'top-k %':>8} {'proxy acc %':>11} "
             f"{'exit ms':>8} {'gated ms':>8} {'avg ms':>8}"]
    for r in search["rows"]:
        mark = "*" if r["tensor"] == search["branch"] else " "
        if "skipped" in r:
            lines.append(f"{mark} {r['tensor']:<48} skipped: {r['skipped']}")
            continue
        ok = "-" if r["exit_correct"] is None else f"{100 * r['exit_correct']:.1f}"
        lines.append(f"{mark} {r['tensor']:<48} {100 * r['exit']:7.1f} {ok:>9} {100 * r['topk_recall']:8.1f} "
                     f"{100 * r['proxy_accuracy']:11.2f} {r['exit_ms']:8.3f} {r['gated_ms']:8.3f} {r['avg_ms']:8.3f}")
    lines.append(f"  picked {search['branch']}: {search['reason']}")
    return "\n".join(lines)
