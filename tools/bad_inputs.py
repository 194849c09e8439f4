"""Replay bad inputs over every subcommand and check the house rules: docs/reliability.md.

Why: issue 10 found that bad input sometimes ends in a traceback, an "internal error", a
replaced input or a half-written output. The rule is: a ONE-line error on stderr, exit 2,
every input byte-for-byte unchanged, and nothing new left behind. Each case runs the real
CLI (`python -m graphprune ...`) as a fresh process in a folder of its own, holding copies
of small models and data built here with onnx.helper (nothing downloaded); the folder is
hashed before and after, so "input unchanged" and "no partial output" cover every file,
temporary and hidden ones included. The latency cache goes to a folder of the case's own
outside it (GRAPHPRUNE_CACHE). Each process runs under a 6 GiB address-space limit, so a
case that should be refused but is not (`--input-shape x=1,1,100000,100000`) fails
instead of taking the machine's memory.

A few cases are controls (expect exit 0): the fixtures themselves are valid, so a failure
elsewhere is the bad input's, and the corrupt latency cache entry is measured again.

Usage: .venv/bin/python tools/bad_inputs.py [--only PATTERN] [--jobs N] [--timeout S] [--list]
  PATTERN: a regular expression searched in the case name (e.g. 'same_output|trailing').
  The table goes to docs/reliability.md when every case ran (no --only); exit 1 if any case fails.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input_fixtures import build_fixtures  # noqa: E402
from _docs import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MD_OUT = ROOT / "docs" / "reliability.md"
MEMORY_LIMIT = 6 << 30

# the fixtures every case folder gets (built by _bad_input_fixtures.build_fixtures)
OPT = ["--budget", "2", "--repeats", "1", "--holdout", "1", "--sensitivity-ratios", "0.5", "--no-progress"]
BAD_FILES = ["missing.onnx", "folder.onnx", "corrupt.onnx", "truncated.onnx", "empty.onnx", "text.onnx",
             "latin1.onnx"]
MODEL_COMMANDS = {  # how each subcommand that reads a model is called on MODEL
    "analyze": ["analyze", "{model}"],
    "prune": ["prune", "{model}", "-o", "out.onnx", "--ratio", "0.3"],
    "importance": ["importance", "{model}", "-o", "out.onnx", "--method", "l1", "--quiet"],
    "compile": ["compile", "{model}", "-o", "out.so"],
    "bench": ["bench", "{model}", "--repeats", "2"],
    "optimize": ["optimize", "{model}", "--data", "data.npz", "-o", "outdir", *OPT],
    "quantize": ["quantize", "{model}", "-o", "out.onnx", "--data", "data.npz"],
}
SAME_OUTPUT = {  # spellings of "the output is the input"
    "same": "model.onnx", "absolute": "{dir}/model.onnx", "dotdot": "nowhere/../model.onnx",
    "symlink": "link.onnx", "hard_link": "hard.onnx",
}


@dataclass
class Case:
    name: str
    argv: list[str]            # after `graphprune`; {dir} is the case folder (the working directory)
    expect: int = 2
    pre: list[list[str]] = field(default_factory=list)   # commands run first, each must exit 0
    after_pre: str | None = None                         # what to do between pre and the case
    note: str = ""


def cases() -> list[Case]:
    out: list[Case] = []
    for cmd, argv in MODEL_COMMANDS.items():
        out.append(Case(f"control/{cmd}", _sub(argv, "model.onnx"), expect=0, note="valid input: must succeed"))
        for bad in BAD_FILES:
            out.append(Case(f"{bad.split('.')[0]}_model/{cmd}", _sub(argv, bad)))
        for bad in ("noconv.onnx", "qlinearconv.onnx"):
            if cmd not in ("compile", "bench") and (cmd, bad) != ("quantize", "noconv.onnx"):  # quantizable
                out.append(Case(f"{bad.split('.')[0]}_model/{cmd}", _sub(argv, bad)))
    out.append(Case("control/targets", ["targets"], expect=0, note="valid input: must succeed"))
    out.append(Case("duplicate_node_names/importance+prune",  # issue 10: one conv scored, then prune failed
                    ["prune", "scored.onnx", "-o", "out.onnx", "--ratio", "0.3", "--criterion", "metadata"],
                    expect=0, pre=[_sub(MODEL_COMMANDS["importance"], "dupnames.onnx")[:2] + ["-o", "scored.onnx"]
                                   + MODEL_COMMANDS["importance"][4:]],
                    note="control: duplicate node names get unique ones, every conv is scored, prune reads them"))
    out += _output_cases()
    out += _option_cases()
    out += _targets_file_cases()
    out += _state_cases()
    return out


def _sub(argv: list[str], model: str) -> list[str]:
    return [model if a == "{model}" else a for a in argv]


def _output_cases() -> list[Case]:
    out = []
    writers = {"prune": ["prune", "model.onnx", "--ratio", "0.3", "-o"],
               "importance": ["importance", "model.onnx", "--method", "l1", "--quiet", "-o"],
               "compile": ["compile", "model.onnx", "-o"],
               "quantize": ["quantize", "model.onnx", "--data", "data.npz", "-o"]}
    for cmd, argv in writers.items():
        for spelling, path in SAME_OUTPUT.items():
            out.append(Case(f"same_output_{spelling}/{cmd}", argv + [path]))
        out.append(Case(f"trailing_slash_output/{cmd}", argv + ["newdir/foo/"]))
        out.append(Case(f"output_is_a_folder/{cmd}", argv + ["folder.onnx"]))
        out.append(Case(f"output_under_a_file/{cmd}", argv + ["data.npz/out.onnx"]))
    opt = ["optimize", "sub/best.onnx", "--data", "data.npz", *OPT, "-o"]
    out.append(Case("same_output_best_onnx/optimize", opt + ["sub"], note="the input is OUTDIR/best.onnx"))
    out.append(Case("outdir_is_a_file/optimize", ["optimize", "model.onnx", "--data", "data.npz", "-o", "notes.txt",
                                                  *OPT]))
    out.append(Case("outdir_under_a_file/optimize", ["optimize", "model.onnx", "--data", "data.npz", "-o",
                                                    "data.npz/outdir", *OPT]))
    return out


def _option_cases() -> list[Case]:
    imp = ["importance", "model.onnx", "-o", "out.onnx", "--quiet", "--samples", "8"]
    opt = ["optimize", "model.onnx", "-o", "outdir", *OPT]
    prune = ["prune", "model.onnx", "-o", "out.onnx"]
    quant = ["quantize", "model.onnx", "-o", "out.onnx"]
    out = []
    for data in ("x_strings", "x_complex", "y_strings", "y_complex", "labels_1e20", "labels_out_of_range"):
        out.append(Case(f"npz_{data}/importance", imp + ["--method", "lrp", "--data", f"{data}.npz"]))
        out.append(Case(f"npz_{data}/optimize", opt + ["--data", f"{data}.npz"]))
        out.append(Case(f"npz_{data}/quantize", quant + ["--data", f"{data}.npz"]))
    options = [
        ("mean_abc", "importance", imp + ["--method", "lrp", "--data", "images", "--mean", "abc"]),
        ("size_100000", "importance", imp + ["--method", "lrp", "--data", "images", "--size", "100000"]),
        ("n_steps_-5", "importance", imp + ["--method", "ig", "--data", "data.npz", "--n-steps", "-5"]),
        ("n_steps_0", "importance", imp + ["--method", "ig", "--data", "data.npz", "--n-steps", "0"]),
        ("seed_-1", "importance", imp + ["--method", "lrp", "--data", "data.npz", "--seed", "-1"]),
        ("seed_-1", "prune", prune + ["--ratio", "0.3", "--criterion", "random", "--seed", "-1"]),
        ("seed_-1", "optimize", opt + ["--data", "data.npz", "--seed", "-1"]),
        ("batch_size_0", "importance", imp + ["--method", "lrp", "--data", "data.npz", "--batch-size", "0"]),
        ("batch_size_0", "optimize", opt + ["--data", "data.npz", "--epochs", "1", "--batch-size", "0"]),
        ("unknown_method", "importance", imp + ["--method", "lpr", "--data", "data.npz"]),
        ("unknown_criterion", "prune", prune + ["--ratio", "0.3", "--criterion", "l3"]),
        ("unknown_criterion", "optimize", opt + ["--data", "data.npz", "--criterion", "l3"]),
        ("ratio_1.5", "prune", prune + ["--ratio", "1.5"]),
        ("ratio_-0.1", "prune", prune + ["--ratio", "-0.1"]),
        ("ratio_nan", "prune", prune + ["--ratio", "nan"]),
        ("sensitivity_ratio_1.5", "optimize", opt + ["--data", "data.npz", "--sensitivity-ratios", "1.5"]),
        ("huge_input_shape_verify", "prune", ["prune", "dynamic.onnx", "-o", "out.onnx", "--ratio", "0.3",
                                              "--input-shape", "x=1,3,100000,100000", "--verify"]),
        ("threads_-2", "bench", ["bench", "model.onnx", "--repeats", "2", "--threads", "-2"]),
        ("threads_100000", "bench", ["bench", "model.onnx", "--repeats", "2", "--threads", "100000"]),
        ("threads_-2", "optimize", opt + ["--data", "data.npz", "--threads", "-2"]),
        ("threads_100000", "optimize", opt + ["--data", "data.npz", "--threads", "100000"]),
        ("channel_step_0", "optimize", opt + ["--data", "data.npz", "--channel-step", "0"]),
        ("lr_-1", "optimize", opt + ["--data", "data.npz", "--epochs", "1", "--lr", "-1"]),
        ("lr_nan", "optimize", opt + ["--data", "data.npz", "--epochs", "1", "--lr", "nan"]),
        ("epochs_inf", "optimize", opt + ["--data", "data.npz", "--epochs", "inf"]),
        ("train_data_wrong_shape", "optimize", opt + ["--data", "data.npz", "--epochs", "1",
                                                      "--train-data", "wrong_shape.npz"]),
        ("repeats_0", "bench", ["bench", "model.onnx", "--repeats", "0"]),
        ("no_data", "quantize", quant),
        ("unknown_precision", "quantize", quant + ["--data", "data.npz", "--precision", "int4"]),
        ("missing_excluded_node", "quantize", quant + ["--data", "data.npz", "--exclude", "conv9"]),
        ("per_channel_fp16", "quantize", quant + ["--data", "data.npz", "--precision", "fp16", "--per-channel"]),
        ("tolerance_nan", "quantize", quant + ["--data", "data.npz", "--tolerance", "nan"]),
        ("samples_0", "quantize", quant + ["--data", "data.npz", "--samples", "0"]),
        ("seed_-1", "quantize", quant + ["--data", "data.npz", "--seed", "-1"]),
        ("data_wrong_shape", "quantize", quant + ["--data", "wrong_shape.npz"]),
    ]
    out += [Case(f"{name}/{cmd}", argv) for name, cmd, argv in options]
    return out


def _targets_file_cases() -> list[Case]:
    out = []
    for tf in ("nan_power", "negative_power", "step_1e999", "not_utf8", "not_json"):
        f = f"targets_{tf}.json"
        out.append(Case(f"targets_file_{tf}/targets", ["targets", "--targets-file", f]))
        out.append(Case(f"targets_file_{tf}/compile", ["compile", "model.onnx", "-o", "out.so", "--target", "bad",
                                                       "--targets-file", f]))
        out.append(Case(f"targets_file_{tf}/bench", ["bench", "model.onnx", "--repeats", "2", "--target", "bad",
                                                     "--targets-file", f]))
        out.append(Case(f"targets_file_{tf}/optimize", ["optimize", "model.onnx", "--data", "data.npz", "-o",
                                                        "outdir", *OPT, "--target", "bad", "--targets-file", f]))
    out.append(Case("mistyped_mcpu/compile", ["compile", "model.onnx", "-o", "out.so", "--target", "typo",
                                              "--targets-file", "targets_mcpu_typo.json"]))
    out.append(Case("mistyped_mcpu/bench", ["bench", "model.onnx", "--repeats", "2", "--backend", "tvm",
                                            "--target", "typo", "--targets-file", "targets_mcpu_typo.json"]))
    out.append(Case("unknown_target/compile", ["compile", "model.onnx", "-o", "out.so", "--target", "x68"]))
    return out


def _state_cases() -> list[Case]:
    bench = ["bench", "model.onnx", "--repeats", "2"]
    return [
        Case("corrupt_cache_entry/bench", bench, expect=0, pre=[bench], after_pre="corrupt_cache",
             note="a damaged cache entry is measured again"),
        Case("cache_entry_not_an_object/bench", bench, expect=0, pre=[bench], after_pre="list_cache",
             note="a cache entry of the wrong shape is measured again"),
        Case("journal_line_not_an_object/optimize", ["optimize", "model.onnx", "--data", "data.npz", "-o",
                                                     "journal_dir", *OPT, "--resume"]),
    ]


# ---------------------------------------------------------------- running one case

@dataclass
class Result:
    case: Case
    code: int | None
    stderr: list[str]
    unchanged: bool
    no_partial: bool | None
    seconds: float

    @property
    def passed(self) -> bool:
        if self.code != self.case.expect or not self.unchanged:
            return False
        if self.case.expect == 0:
            return True
        return len(self.stderr) == 1 and self.stderr[0].startswith("graphprune: error:") and bool(self.no_partial)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below `folder`: files by content hash, links by target, folders as such."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _graphprune(argv: list[str], folder: Path, cache: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRAPHPRUNE_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    env.pop("GRAPHPRUNE_DEBUG", None)
    argv = [a.replace("{dir}", str(folder)) for a in argv]
    return subprocess.run([sys.executable, "-m", "graphprune", *argv], cwd=folder, env=env, capture_output=True,
                          text=True, errors="replace", timeout=timeout, preexec_fn=_limit_memory)


def _damage_cache(cache: Path, how: str) -> None:
    for f in cache.rglob("*.json"):
        f.write_text('{"median_ms": 1.0, "trunc' if how == "corrupt_cache" else "[1, 2, 3]\n")


def run_case(case: Case, fixtures: Path, work: Path, timeout: float) -> Result:
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", case.name)
    folder, cache = work / slug / "case", work / slug / "cache"
    shutil.copytree(fixtures, folder, symlinks=True)
    os.link(folder / "model.onnx", folder / "hard.onnx")  # copytree would copy a hard link as a file
    t0 = time.perf_counter()
    for argv in case.pre:
        r = _graphprune(argv, folder, cache, timeout)
        if r.returncode != 0:
            return Result(case, None, [f"setup failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"],
                          True, None, time.perf_counter() - t0)
    if case.after_pre:
        _damage_cache(cache, case.after_pre)
    before = snapshot(folder)
    try:
        r = _graphprune(case.argv, folder, cache, timeout)
        code, err = r.returncode, [ln for ln in r.stderr.splitlines() if ln.strip()]
    except subprocess.TimeoutExpired:
        code, err = None, [f"timed out after {timeout:.0f} s"]
    after = snapshot(folder)
    unchanged = all(after.get(k) == v for k, v in before.items())
    no_partial = None if case.expect == 0 else not (set(after) - set(before))
    shutil.rmtree(work / slug, ignore_errors=True)
    return Result(case, code, err, unchanged, no_partial, time.perf_counter() - t0)


# ---------------------------------------------------------------- the table

def summary(results: list[Result]) -> list[str]:
    """Per subcommand: cases and how many pass (the README shows this table)."""
    by: dict[str, list[Result]] = {}
    for r in results:
        by.setdefault(r.case.name.rsplit("/", 1)[-1], []).append(r)
    lines = ["| subcommand | cases | pass | fail |", "|---|---|---|---|"]
    for cmd in sorted(by):
        n = sum(r.passed for r in by[cmd])
        lines.append(f"| {cmd} | {len(by[cmd])} | {n} | {len(by[cmd]) - n} |")
    return lines + [""]


def table(results: list[Result]) -> str:
    n_pass = sum(r.passed for r in results)
    lines = [f"{n_pass} of {len(results)} cases pass.\n", *summary(results), "Every case:\n",
             "| case | command | exit (expected) | stderr lines | input unchanged | no partial output | result | "
             "first stderr line |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        first = (r.stderr[0] if r.stderr else "").replace("|", "\\|")
        first = first if len(first) <= 140 else first[:137] + "..."
        cmd = " ".join(r.case.argv).replace("|", "\\|")
        partial = "-" if r.no_partial is None else ("yes" if r.no_partial else "**no**")
        lines.append(f"| {r.case.name} | `graphprune {cmd}` | {r.code} ({r.case.expect}) | {len(r.stderr)} | "
                     f"{'yes' if r.unchanged else '**no**'} | {partial} | {'PASS' if r.passed else '**FAIL**'} | "
                     f"{first} |")
    return "\n".join(lines) + "\n"


def run(pattern: str | None = None, jobs: int = 2, timeout: float = 180.0, progress=print) -> list[Result]:
    selected = [c for c in cases() if pattern is None or re.search(pattern, c.name)]
    with tempfile.TemporaryDirectory(prefix="graphprune-bad-inputs-") as tmp:
        fixtures = Path(tmp) / "fixtures"
        build_fixtures(fixtures)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(run_case, c, fixtures, Path(tmp) / "work", timeout) for c in selected]
            results = []
            for f in futures:
                results.append(f.result())
                r = results[-1]
                if progress:
                    progress(f"{'PASS' if r.passed else 'FAIL'} {r.case.name} (exit {r.code}, {r.seconds:.1f} s)"
                             + ("" if r.passed else f": {r.stderr[:2]}"))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", metavar="PATTERN", help="run the cases whose name matches this regular expression")
    ap.add_argument("--jobs", type=int, default=2, help="cases run in parallel (default 2)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per command (default 180)")
    ap.add_argument("--list", action="store_true", help="list the case names and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(c.name for c in cases()))
        return 0
    t0 = time.perf_counter()
    results = run(args.only, args.jobs, args.timeout)
    md = table(results)
    print(md)
    if args.only is None:
        intro = (f"Generated by `.venv/bin/python tools/bad_inputs.py --jobs {args.jobs}` "
                 f"({len(results)} cases, {time.perf_counter() - t0:.0f} s on this project's 2-core machine). "
                 "Every case runs `python -m graphprune ...` in a folder of its own; a bad-input case passes when "
                 "it exits 2 with exactly one stderr line `graphprune: error: ...`, every file that was there is "
                 "byte-for-byte unchanged, and nothing new is left behind. Controls (expected exit 0) show "
                 "that the fixtures are valid.\n")
        update_section(MD_OUT, "bad-inputs", intro + "\n" + md, title="# Reliability: bad inputs\n")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
