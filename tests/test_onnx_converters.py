"""graphprune's Clip/Max/Min converters for TVM's ONNX import (targets/onnx_converters.py).

TVM 0.27 converts Clip into an opaque TOPI call: the tuned pipeline's NHWC layout conversion
wrapped each one in two transposes (60 % of MobileNetV2's tuned time), and its Max/Min stack
their inputs into a rank-5 tensor that the layout conversion crashes on. These tests build the
models here and check the layout conversion and the numerics against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from graphprune.targets import compile_model
from graphprune.targets.measure_local import run_tvm_local
from graphprune.targets.onnx_converters import layout_friendly_converters
from graphprune.targets.prepare import import_relax
from graphprune.targets.tuning.pipeline import convert_layout

from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)

RNG = np.random.default_rng(3)


def _model(middle, consts, opset=13):
    """conv -> `middle` nodes (reading "c", writing "y") -> conv, 1x4x10x10; `consts` {name: array}."""
    w1 = numpy_helper.from_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(RNG.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), *middle,
             helper.make_node("Conv", ["y", "w2"], ["z"], pads=[1, 1, 1, 1])]
    inits = [w1, w2] + [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4, 10, 10])],
                          [helper.make_tensor_value_info("z", 1, [1, 4, 10, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _relu6(**kw):
    return _model([helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], {"lo": 0.0, "hi": 6.0}, **kw)


def _tensor_permutes(text: str) -> int:
    """permute_dims applied to computed tensors (not to weight constants, which FoldConstant folds)."""
    return sum(1 for ln in text.splitlines() if "R.permute_dims(" in ln and 'metadata["' not in ln)


def _check_ort(m, atol=1e-4):
    x = RNG.standard_normal((1, 4, 10, 10)).astype(np.float32) * 3
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = run_tvm_local(compile_model(m, "x86"), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("make", [
    _relu6,
    lambda: _model([helper.make_node("Clip", ["c", "lo"], ["y"])], {"lo": 0.5}),                 # min only
    lambda: _model([helper.make_node("Clip", ["c"], ["y"], min=-1.0, max=2.0)], {}, opset=6),    # attributes
    lambda: _model([helper.make_node("Max", ["c", "lo"], ["m"]), helper.make_node("Min", ["m", "hi"], ["y"])],
                   {"lo": [0.0], "hi": 6.0}),
])
def test_clip_max_min_stay_in_nhwc_and_match_onnxruntime(make):
    m = make()
    text = convert_layout(import_relax(m)[0]).script()
    assert "call_tir" not in text and ("R.maximum" in text or "R.minimum" in text)
    assert _tensor_permutes(text) == 2          # the model's input and output only
    _check_ort(m)


def test_tvm_own_converters_are_what_this_replaces():
    """Without the replacement (TVM's converter table as shipped), Clip is an opaque call wrapped
    in transposes: the test above is not trivially true."""
    import tvm.relax.frontend.onnx.onnx_frontend as fe
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPHPRUNE_TVM_FRONTEND", "tvm")
        text = convert_layout(import_relax(_relu6())[0]).script()
    assert "call_tir" in text and _tensor_permutes(text) == 4   # + NHWC->NCHW before it, NCHW->NHWC after
    assert fe._get_convert_map()["Clip"] is fe.Clip   # restored after every import


def test_nan_bound_means_unbounded_through_tvm_own_converter():
    """A NaN bound is 'no bound' in ONNX/onnxruntime: left to TVM's converter, which handles it."""
    m = _model([helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], {"lo": float("nan"), "hi": 1.0})
    assert "call_tir" in import_relax(m)[0].script()
    _check_ort(m)


def test_the_converter_table_is_restored_even_when_the_import_fails():
    import tvm.relax.frontend.onnx.onnx_frontend as fe
    with pytest.raises(RuntimeError):
        with layout_friendly_converters():
            assert fe._get_convert_map()["Clip"] is not fe.Clip
            raise RuntimeError("import failed")
    assert fe._get_convert_map()["Clip"] is fe.Clip
    onnx.checker.check_model(_relu6())


def test_relu6_cross_compiles_for_arm_through_the_prepack_pipeline(tmp_path):
    """The tuned pipeline (empty database: default schedules) with the fused conv + maximum/minimum,
    linked by the cross compiler into an aarch64 library."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    from graphprune.targets import get_target
    from graphprune.targets.compile import compile_relax, export_library, import_onnx
    arm = get_target("arm-a72")
    if shutil.which(arm.cc) is None:
        pytest.skip(f"{arm.cc} not installed")
    c = compile_relax(import_onnx(_relu6()), arm, database=ms.database.MemoryDatabase(), tuning="empty")
    head = export_library(c, tmp_path / "relu6_arm.so").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183   # EM_AARCH64
