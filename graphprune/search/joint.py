"""`optimize --quantize`: the hooks the pipeline's stages call (each a no-op with --quantize off).

validate  -> `objectives` (energy means energy_uj), `check_target` (backend and target int8 support)
load      -> `prepare`: the calibration sample and the joint search space
executor  -> `wrap_initializer`, `attach`: every process builds candidates as deployed
recovery  -> `recover`: fine-tune the pruned fp32 model, then quantize it as chosen
outputs   -> `add_summary`, `report_section`, `console_lines`, `plot_note`

Everything that can be wrong (mode, backend, target, calibration data, an already
quantized model) fails in validate/load, before OUTDIR is touched.
"""
from __future__ import annotations


from graphprune.errors import GraphpruneError
from graphprune.search import precision as prec

ENERGY_MODEL = ("Horowitz ISSCC 2014 45 nm energies per MAC by precision plus DRAM weight and SRAM "
                "activation traffic (graphprune.cost.energy; docs/quantization.md)")


def enabled(o) -> bool:
    return getattr(o, "quantize", "off") != "off"


def objectives(o, names: list[str]) -> list[str]:
    """With --quantize, `energy` is energy per inference at precision (energy_uj: RAPL or the
    documented estimate), not latency x stated power; --prefer follows."""
    prec.check_mode(getattr(o, "quantize", "off"))
    from graphprune.quant.calibration import parse_calibration
    calibrated = enabled(o) and o.quantize != "fp16"
    if getattr(o, "quantize_exclude", ()) and not enabled(o):
        raise GraphpruneError("--quantize-exclude needs --quantize int8 or mixed")
    if getattr(o, "calibration", "minmax") != "minmax" and not calibrated:
        raise GraphpruneError("--calibration needs --quantize int8 or mixed (fp16 is not calibrated)")
    if not enabled(o):
        return names
    parse_calibration(o.calibration, "--calibration")
    if not (isinstance(o.calibration_samples, int) and not isinstance(o.calibration_samples, bool)
            and o.calibration_samples >= 1):
        raise GraphpruneError(f"--calibration-samples must be an integer >= 1, got {o.calibration_samples!r}")
    if o.backend == "tvm" and o.quantize != "fp16":
        raise GraphpruneError("--quantize with --backend tvm: TVM 0.27 Relax computes QDQ graphs in float32 "
                              "(dequantize -> float conv), so int8 latencies would be wrong; use --backend ort "
                              "(on a board: --rpc-tracker with graphprune device-server)")
    o.prefer = {("energy_uj" if k == "energy_mj" else k): v for k, v in o.prefer.items()}
    return ["energy_uj" if n == "energy_mj" else n for n in names]


def check_target(st) -> None:
    """The target, and a stand-in measured for it, must declare the mode's precision (int8, or
    fp16 for --quantize fp16) among their `precisions` (targets/builtin.json): an int8 or fp16
    model searched for a target that computes it in float32 is searched for the wrong latencies."""
    if not enabled(st.o):
        return
    from graphprune.targets import get_target
    need = prec.LOW[st.o.quantize]
    extra = [st.o.targets_file] if st.o.targets_file else None
    for name in dict.fromkeys([st.spec.target, st.spec.measured_target]):
        tgt = get_target(name, extra)
        have = tgt.precisions
        if not have or need not in have:
            raise GraphpruneError(f"--quantize {st.o.quantize}: target {tgt.name!r} does not declare {need} support "
                                  f"(its precisions: {', '.join(have) if have else 'not stated'}); add \"precisions\": "
                                  f"[\"fp32\", \"{need}\"] to its targets file if its runtime has {need} kernels")


def prepare(st) -> None:
    """The calibration sample (fixed seed) and the joint space; after load_inputs built st.space."""
    st.joint = None
    if not enabled(st.o):
        return
    from graphprune.data.dataset import Dataset
    from graphprune.quant.calibration import calibration_feeds, calibration_text, parse_calibration
    from graphprune.quant.precision import check_float_model, check_node
    o = st.o
    check_float_model(st.model)
    train, source = st.train, "the training data (--train-data)" if o.train_data else None
    if train is None and o.train_data:
        from graphprune.search.stages import _load
        train = _load(o, st.model, o.train_data, "--train-data")
    if train is not None and source is None:
        source = "the part of --data held out for fine-tuning"
    if train is None:
        train, source = Dataset(st.x, None), "--data (no --train-data: the samples the quality is judged on)"
    seed = o.seed + prec._CALIB_SEED
    sample = train.subsample(o.calibration_samples, seed)   # Dataset.subsample: what tools can reproduce
    try:
        calib = calibration_feeds(st.model, sample.x)
    except GraphpruneError as exc:
        raise GraphpruneError(f"--quantize: no usable calibration data: {exc}") from None
    exclude = list(dict.fromkeys(getattr(o, "quantize_exclude", ()) or ()))
    names = {n.name for n in st.model.graph.node if n.name}
    for node in exclude:
        check_node(node, names)
    method = calibration_text(*parse_calibration(o.calibration))
    text = (f"{len(sample)} samples of {source}, fixed seed {seed}; {method}, per-channel symmetric int8 weights, "
            "uint8 activations (onnxruntime quantize_static, QDQ)" if o.quantize != "fp16" else
            "none (fp16: onnxruntime's float16 converter, fp32 inputs and outputs)")
    text += f"; {len(exclude)} node(s) kept fp32 (--quantize-exclude)" if exclude else ""
    st.space = prec.joint_space(st.space, st.model, o.quantize, text, exclude)
    st.user_space = st.space
    st.joint = {"mode": o.quantize, "layers": st.space.layers, "calib": calib, "calibration": text,
                "exclude": exclude, "method": o.calibration}


def wrap_initializer(st, init, args):
    """The executor's initializer, followed by the joint configuration in each worker."""
    if st.joint is None:
        return init, args
    return prec.init_worker, (init, args, st.joint["layers"], st.joint["calib"], st.spec.input_shapes,
                              st.joint["exclude"], st.joint["mode"], st.joint["method"])


def attach(st) -> None:
    """This process builds candidates as deployed; the evaluator runs the joint job; energy is
    measured with RAPL after each latency where readable."""
    if st.joint is None:
        prec.configure(None)
        return
    from graphprune.cost.rapl import rapl_unavailable
    prec.configure(st.joint["layers"], st.joint["calib"], st.spec.input_shapes, st.joint["exclude"],
                   st.joint["mode"], st.joint["method"])
    st.ev.job = prec.evaluate_job
    rapl = prec.rapl_measure(st.spec, st.x)
    st.joint["rapl"] = rapl is not None
    # energy_mj (latency x stated power) is not this run's energy: null, so nothing reads it as one
    st.ev.after_measure = lambda model: {"energy_mj": None, **(rapl(model) if rapl else {})}
    why = rapl_unavailable()
    st.joint["energy_text"] = ("measured with RAPL (whole package, 200 runs of one sample)"
                               if rapl else
                               f"ESTIMATED, not measured ({ENERGY_MODEL}); RAPL: "
                               f"{why or 'not used for this backend/target'}")
    st.log(f"--quantize {st.o.quantize}: every candidate quantized as it is searched; calibration: "
           f"{st.joint['calibration']}; energy {st.joint['energy_text']}")


def suggest(st) -> None:
    """The optimizer's first asks: every layer int8 at full width (quantize only) and the uniform
    baselines (uniform pruning, every layer int8; already measured, so answered from the
    journal). Why: in mixed mode a random start has half the layers fp32, and each fp32
    island costs a dequantize/quantize pair and a float kernel; a budget of tens of
    candidates then never reaches the all-int8 region the quantize-only point shows is good.
    Deterministic, so --resume replays it."""
    if st.joint is None:
        return
    space = st.space
    full_int8 = {a.gid: (a.units if a.gid >= 0 else a.choices[0]) for a in space.axes}
    for cfg in [full_int8] + [{int(k): v for k, v in r["config"].items()} for r in st.u_recs]:
        st.search.opt.suggest(space.encode(cfg))


def counts(st, cfg: dict) -> dict:
    """The search's exact counts (screening) with precision projected (no quantizing)."""
    out = prec.exact_counts(cfg)
    if st.joint["rapl"]:   # measured energies cannot be predicted from the estimate
        out.pop("energy_uj")
    return out


def recover(st, record):
    """(model, recovery report): the pruned fp32 part fine-tuned as without --quantize, then
    quantized with the record's precision; the accuracies are the deployed model's."""
    from graphprune.search.finetune import recover as finetune
    from graphprune.search.recovery import recovery_options
    o = st.o
    cfg = {int(k): v for k, v in record["config"].items()}
    prune_cfg, _ = prec.split(cfg)
    full = all(prune_cfg[a.gid] == a.units for a in st.space.axes if a.gid >= 0)
    if o.epochs <= 0 or full:
        if o.epochs > 0:
            st.log("recovery skipped: the chosen configuration prunes nothing")
        return prec.build(cfg), None
    pmap = prec.precision_map(cfg, st.joint["layers"])
    tuned, rcv = finetune(st.model, st.an, prune_cfg, o.criterion, st.train, st.x, st.y, epochs=o.epochs,
                          steps=o.finetune_steps, lr=o.lr, batch_size=o.batch_size, seed=o.seed, log=st.log,
                          **recovery_options(st), before=prec._pruned(cfg))
    q = prec.quantize(tuned, pmap)
    error_of = getattr(st, "error_of", None)
    if error_of is None:
        from graphprune.search.objectives import error_rate
        error_of = lambda m: error_rate(m, st.x, st.y)  # noqa: E731
    from graphprune.search import objectives as obj
    rcv.update(fp32_accuracy_before=rcv["accuracy_before"], fp32_accuracy_after=rcv["accuracy_after"],
               accuracy_before=1 - record["error"], accuracy_after=1 - error_of(q))
    rcv.update(obj.measure(q, st.spec))
    rcv["text"] = (f"the pruned fp32 model fine-tuned ({rcv['steps']} step(s), {rcv['final_epochs']:.2f} final "
                   f"epoch(s) on {rcv['train_samples']} samples: {100 * rcv['fp32_accuracy_before']:.2f} % -> "
                   f"{100 * rcv['fp32_accuracy_after']:.2f} % in fp32), then quantized as searched "
                   f"({sum(p != 'fp32' for p in pmap.values())}/{len(pmap)} layers {prec.LOW[o.quantize]}): {st.metric.name} "
                   f"{100 * rcv['accuracy_before']:.2f} % before recovery -> {100 * rcv['accuracy_after']:.2f} % "
                   f"after, original {100 * (1 - st.base['error']):.2f} %; latency {rcv['latency_ms']:.3f} ms")
    return q, rcv


def add_summary(st, s: dict) -> None:
    """pareto.json's `quantize` entry; the delivered model records its per-layer precision."""
    if st.joint is None:
        return
    from graphprune.quant import graph_precision
    from graphprune.quant.precision import precision_of, record_precision
    d = st.delivery
    delivered = None
    if d is not None and d.model is not None:
        if not precision_of(d.model):   # the original (every layer fp32) records it too, on a copy
            import onnx
            copy = onnx.ModelProto()
            copy.CopyFrom(d.model)
            record_precision(copy, graph_precision(copy), format="fp32")
            d.model = copy
        delivered = graph_precision(d.model)
    s["energy_note"] = f"energy_uj per inference: {st.joint['energy_text']}"
    s["quantize"] = {"mode": st.joint["mode"], "calibration": st.joint["calibration"],
                     "energy": st.joint["energy_text"], "energy_label": "measured" if st.joint["rapl"]
                     else "estimated", "axes": {str(g): v for g, v in st.joint["layers"].items()},
                     "excluded": st.joint["exclude"],
                     "delivered_precision": delivered}


def report_section(s: dict) -> str:
    """report.md's section on precision, size and energy (empty without --quantize)."""
    q = s.get("quantize")
    if not q:
        return ""
    base, lab = s["baseline"], q["energy_label"]
    L = ["", "## Quantization (joint search)", "", f"- `--quantize {q['mode']}`; calibration: {q['calibration']}",
         f"- energy: {q['energy']}", "- size: bytes of the deployed model's tensors at their precision "
         "(graphprune.cost.size)", "", f"| configuration | error | latency ms | size bytes | energy uJ ({lab}) | "
         "int8 / fp16 layers |", "|---|---|---|---|---|---|",
         _qrow(dict(base, key="original (fp32)"), lab)]
    L += [_qrow(r, lab) for r in s["front"]]
    if q.get("delivered_precision"):
        L += ["", "Delivered model, per-layer precision (also in its metadata, `graphprune.precision`):", ""]
        L += [f"- `{n}`: {p}" for n, p in q["delivered_precision"].items()]
    return "\n".join(L) + "\n"


def _qrow(r: dict, lab: str) -> str:
    e = r.get("energy_uj")
    lat = r.get("latency_ms")
    return (f"| {r['key']} | {r['error']:.4f} | {f'{lat:.3f}' if lat is not None else '-'} | "
            f"{r.get('size_bytes', '-'):,} | {f'{e:.1f}' if e is not None else '-'} ({lab}) | "
            f"{r.get('int8_layers', 0)} / {r.get('fp16_layers', 0)} |")


def console_lines(s: dict) -> list[str]:
    q = s.get("quantize")
    if not q:
        return []
    ch, b = s.get("chosen") or {}, s["baseline"]
    lines = [f"quantize {q['mode']}: energy {q['energy']}"]
    if ch.get("size_bytes") and b.get("size_bytes"):
        e = (f", energy {ch['energy_uj']:.1f} uJ ({q['energy_label']}) vs {b['energy_uj']:.1f} uJ"
             if ch.get("energy_uj") and b.get("energy_uj") else "")
        lines.append(f"chosen: {ch.get('int8_layers', 0)} int8 / {ch.get('fp16_layers', 0)} fp16 layer(s), size "
                     f"{ch['size_bytes']:,} bytes vs "
                     f"{b['size_bytes']:,} ({b['size_bytes'] / ch['size_bytes']:.2f}x smaller){e}")
    return lines


def plot_note(st) -> str:
    if st.joint is None:
        return ""
    return f" [--quantize {st.joint['mode']}; energy {'measured' if st.joint['rapl'] else 'estimated'}]"
