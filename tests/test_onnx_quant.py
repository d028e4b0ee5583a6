"""ONNX initializers in typed fields and quantized ONNX ops, built with onnx.helper: every weight listed once by
its logical shape, scales and zero points no layers, `--stats` equal to what onnx's own
`onnx.reference.ReferenceEvaluator` computes for the dequantized weight (a graph of the same
DequantizeLinear nodes), typed-field values equal to `onnx.numpy_helper.to_array`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import run

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

rng = np.random.default_rng(0)


def _rows(path) -> dict[str, dict]:
    result = run("inspect", path, "--all", "--stats", "--format", "json")
    assert result.code == 0, result.err
    return {row["param"]: row for row in json.loads(result.out)["layers"]}


def _save(tmp_path, nodes, initializers, inputs, outputs, name="model.onnx", opset=21):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path, model


def _reference(initializers, dq_nodes, opset=21) -> dict[str, np.ndarray]:
    """What onnx's ReferenceEvaluator computes for each DequantizeLinear's output."""
    outputs = [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None) for node in dq_nodes]
    graph = helper.make_graph(dq_nodes, "dq", [], outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    values = ReferenceEvaluator(model).run(None, {})
    return {node.output[0]: value.astype(np.float64) for node, value in zip(dq_nodes, values)}


def _same_stats(row, values):
    assert row["observed"]["count"] == values.size
    assert row["observed"]["mean"] == pytest.approx(values.mean(), rel=1e-6, abs=1e-9)
    assert row["observed"]["std"] == pytest.approx(values.std(ddof=1), rel=1e-6)


def test_typed_fields_are_read_as_onnx_reads_them(tmp_path):
    """float_data, double_data, int32_data holding FLOAT16 bits: the values `numpy_helper.to_array` gives."""
    weights = {"fc.weight": rng.standard_normal((6, 4)).astype(np.float32),
               "fc2.weight": rng.standard_normal((3, 6)).astype(np.float64),
               "fc3.weight": rng.standard_normal((2, 3)).astype(np.float16)}
    inits = [helper.make_tensor("fc.weight", TensorProto.FLOAT, (6, 4), weights["fc.weight"].ravel().tolist()),
             helper.make_tensor("fc2.weight", TensorProto.DOUBLE, (3, 6), weights["fc2.weight"].ravel().tolist()),
             helper.make_tensor("fc3.weight", TensorProto.FLOAT16, (2, 3), weights["fc3.weight"].ravel().tolist())]
    assert not any(init.raw_data for init in inits)
    nodes = [helper.make_node("Gemm", ["x", "fc.weight"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "fc2.weight"], ["h2"], transB=1),
             helper.make_node("Gemm", ["h2", "fc3.weight"], ["y"], transB=1)]
    path, _ = _save(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 2))])
    rows = _rows(path)
    for init in inits:
        values = numpy_helper.to_array(init).astype(np.float64)
        assert rows[init.name]["shape"] == list(values.shape)
        _same_stats(rows[init.name], values)


def test_a_truncated_typed_field_is_one_line(tmp_path):
    init = helper.make_tensor("fc.weight", TensorProto.FLOAT, (6, 4), [0.5] * 24)
    del init.float_data[10:]
    path, _ = _save(tmp_path, [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1)], [init],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 6))])
    result = run("inspect", path)
    assert result.code == 2 and result.err.count("\n") == 1 and "float_data" in result.err, result.err


def test_qdq_weights_are_listed_once_and_dequantized_as_onnx_does(tmp_path):
    """DequantizeLinear feeding Conv (per output channel, axis 0), MatMul (blocked along the input axis) and Gemm
    (per tensor, transB=1): each quantized weight one row of its logical shape, no row for a scale or zero
    point, `--stats` of the dequantized values."""
    conv_q = rng.integers(-128, 127, (8, 3, 3, 3)).astype(np.int8)
    mm_q = rng.integers(0, 255, (8, 5)).astype(np.uint8)
    gemm_q = rng.integers(-128, 127, (4, 5)).astype(np.int8)
    inits = [
        numpy_helper.from_array(conv_q, "conv.weight_quantized"),
        numpy_helper.from_array(rng.uniform(0.01, 0.1, 8).astype(np.float32), "conv.weight_scale"),
        numpy_helper.from_array(rng.integers(-3, 3, 8).astype(np.int8), "conv.weight_zero_point"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv.bias"),
        numpy_helper.from_array(mm_q, "mm.weight_quantized"),
        numpy_helper.from_array(rng.uniform(0.01, 0.1, (2, 5)).astype(np.float32), "mm.weight_scale"),
        numpy_helper.from_array(rng.integers(120, 130, (2, 5)).astype(np.uint8), "mm.weight_zero_point"),
        numpy_helper.from_array(gemm_q, "fc.weight_quantized"),
        numpy_helper.from_array(np.array(0.05, np.float32), "fc.weight_scale"),
        numpy_helper.from_array(np.array(2, np.int8), "fc.weight_zero_point"),
        numpy_helper.from_array(np.array(0.1, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero_point"),
    ]
    dq = [helper.make_node("DequantizeLinear", ["conv.weight_quantized", "conv.weight_scale",
                                                "conv.weight_zero_point"], ["conv.w"], axis=0),
          helper.make_node("DequantizeLinear", ["mm.weight_quantized", "mm.weight_scale", "mm.weight_zero_point"],
                           ["mm.w"], axis=0, block_size=4),
          helper.make_node("DequantizeLinear", ["fc.weight_quantized", "fc.weight_scale", "fc.weight_zero_point"],
                           ["fc.w"])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero_point"], ["xd"]), *dq,
             helper.make_node("Conv", ["xd", "conv.w", "conv.bias"], ["c"], name="/conv/Conv"),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("MatMul", ["f", "mm.w"], ["m"], name="/mm/MatMul"),
             helper.make_node("Gemm", ["m", "fc.w"], ["y"], transB=1, name="/fc/Gemm")]
    path, _ = _save(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 3, 3))],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4))])
    rows = _rows(path)
    assert sorted(rows) == ["conv.bias", "conv.weight_quantized", "fc.weight_quantized", "mm.weight_quantized"]
    reference = _reference(inits, dq)
    for name, output, kind in (("conv.weight_quantized", "conv.w", "conv2d"),
                               ("mm.weight_quantized", "mm.w", "linear"), ("fc.weight_quantized", "fc.w", "linear")):
        row = rows[name]
        assert row["kind"] == kind
        assert row["shape"] == list(reference[output].shape)
        _same_stats(row, reference[output])
    assert (rows["conv.weight_quantized"]["fan_in"], rows["conv.weight_quantized"]["fan_out"]) == (27, 72)
    assert (rows["mm.weight_quantized"]["effective_fan_in"], rows["fc.weight_quantized"]["fan_in"]) == (8, 5)


def test_qlinear_ops_and_matmulinteger(tmp_path):
    """QLinearConv's weight (input 3, its scale and zero point 4 and 5, per output channel), QLinearMatMul's b
    (input 3, per column) and MatMulInteger's B (input 1, its zero point 3): one row each, its values those a
    DequantizeLinear of the same scale and zero point gives (MatMulInteger: x − zero point)."""
    w = rng.integers(-100, 100, (4, 2, 3, 3)).astype(np.int8)
    b = rng.integers(0, 255, (36, 6)).astype(np.uint8)
    b2 = rng.integers(-100, 100, (6, 3)).astype(np.int8)
    scalar = {name: numpy_helper.from_array(np.array(value, dtype), name) for name, value, dtype in (
        ("x_s", 0.1, np.float32), ("x_z", 0, np.uint8), ("y_s", 0.2, np.float32), ("y_z", 0, np.uint8),
        ("m_s", 0.3, np.float32), ("m_z", 0, np.uint8), ("a_z", 0, np.uint8))}
    inits = [numpy_helper.from_array(w, "conv.w"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, 4).astype(np.float32), "conv.w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "conv.w_zero"),
             numpy_helper.from_array(b, "mm.b"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, 6).astype(np.float32), "mm.b_scale"),
             numpy_helper.from_array(rng.integers(100, 150, 6).astype(np.uint8), "mm.b_zero"),
             numpy_helper.from_array(b2, "mi.b"),
             numpy_helper.from_array(rng.integers(-5, 5, 3).astype(np.int8), "mi.b_zero"), *scalar.values()]
    nodes = [helper.make_node("QLinearConv", ["x", "x_s", "x_z", "conv.w", "conv.w_scale", "conv.w_zero", "y_s",
                                              "y_z"], ["c"]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("QLinearMatMul", ["f", "y_s", "y_z", "mm.b", "mm.b_scale", "mm.b_zero", "m_s", "m_z"],
                              ["m"]),
             helper.make_node("MatMulInteger", ["m", "mi.b", "a_z", "mi.b_zero"], ["y"])]
    path, _ = _save(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.UINT8, (1, 2, 5, 5))],
                    [helper.make_tensor_value_info("y", TensorProto.INT32, (1, 3))])
    rows = _rows(path)
    assert sorted(rows) == ["conv.w", "mi.b", "mm.b"]
    dq = [helper.make_node("DequantizeLinear", ["conv.w", "conv.w_scale", "conv.w_zero"], ["conv"], axis=0),
          helper.make_node("DequantizeLinear", ["mm.b", "mm.b_scale", "mm.b_zero"], ["mm"], axis=1),
          helper.make_node("DequantizeLinear", ["mi.b", "one", "mi.b_zero"], ["mi"], axis=1)]
    reference = _reference([*inits, numpy_helper.from_array(np.ones(3, np.float32), "one")], dq)
    for name, output in (("conv.w", "conv"), ("mm.b", "mm"), ("mi.b", "mi")):
        assert rows[name]["shape"] == list(reference[output].shape)
        _same_stats(rows[name], reference[output])
    assert rows["conv.w"]["kind"] == "conv2d" and (rows["conv.w"]["fan_in"], rows["conv.w"]["fan_out"]) == (18, 36)
    assert rows["mm.b"]["kind"] == "linear" and rows["mm.b"].get("effective_fan_in") == 36  # [in, out]
