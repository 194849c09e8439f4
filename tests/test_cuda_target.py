"""`--target cuda` without a GPU and without the CUDA toolkit: compile writes a host library carrying
the CUDA C source of dlight-scheduled kernels; bench, which would have to run them, refuses in one line.

The pip apache-tvm wheel is built without CUDA, so its CUDA codegen keeps the kernels as source and
never calls nvcc or NVRTC; with nvcc hidden (PATH without it, CUDA_PATH unset) nothing changes.
"""
from __future__ import annotations

import os
import shutil

import onnx

import graphprune.cli as cli
from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)

EM_X86_64 = 62


def _no_toolkit(tmp_path, monkeypatch) -> None:
    """PATH with the host compiler and linker only (no nvcc), CUDA_PATH unset."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cc", "gcc", "g++", "c++", "ld", "as", "which"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    assert shutil.which("nvcc") is None


def test_cuda_compiles_to_dlight_scheduled_source_without_the_toolkit(tmp_path, monkeypatch, capsys):
    _no_toolkit(tmp_path, monkeypatch)
    model, so = tmp_path / "tiny.onnx", tmp_path / "tiny_cuda.so"
    onnx.save(tiny_cnn(), model)
    assert cli.main(["compile", str(model), "--target", "cuda", "-o", str(so)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {so} (target cuda, untuned; input shape x=1x3x16x16)")
    data = so.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == EM_X86_64   # the host side
    kernels = data.count(b'extern "C" __global__ void')
    assert kernels >= 3, kernels                       # two convs and a matmul at least, each a kernel
    assert b"threadIdx.x" in data and b"blockIdx.x" in data   # thread-bound by dlight's rules
    # running it needs a GPU and a CUDA-enabled runtime: bench says so in one line
    assert cli.main(["bench", str(model), "--target", "cuda", "--backend", "tvm"]) == 2
    err = capsys.readouterr().err
    assert err == ("graphprune: error: target 'cuda' cannot run on this host; measure it on a device with "
                   "--rpc-tracker HOST:PORT --rpc-key cuda\n"), err
