"""Per-layer precision in ONNX Runtime: 4-bit weight-only, static int8 QDQ, dynamic int8 and fp32 in one model."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QDQQuantizer,
    QuantizationMode,
    QuantType,
    TensorsData,
    calibrate,
    create_calibrator,
    load_tensors_data,
    onnx_quantizer,
    qdq_quantizer,
)
from onnxruntime.quantization.base_quantizer import QuantizationParams
from onnxruntime.quantization.calibrate import save_tensors_data
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.quant_utils import (
    TENSOR_NAME_QUANT_SUFFIX,
    add_infer_metadata,
    find_by_name,
    normalize_axis,
    update_opset_version,
)

from tuner.build.export import WEIGHTED_OPS
from tuner.build.shapes import has_subgraphs, infer_shapes, is_float_weight, skeleton
from tuner.precision import (
    FP32,
    INT4,
    INT8,
    INT8_DYNAMIC,
    INT8_DYNAMIC_PER_CHANNEL,
    INT8_DYNAMIC_PER_CHANNEL_7BIT,
    KINDS,
    parse,
)

# extra_options of every dynamic int8 build
DYNAMIC_OPTIONS = {"DefaultTensorType": TensorProto.FLOAT}


class _BatchReader(CalibrationDataReader):
    def __init__(self, input_names: Sequence[str], batches: Iterable[Sequence[np.ndarray]]):
        self._input_names = input_names
        self._batches = batches
        self._feeds = None  # read only when calibration runs (not when its ranges are cached)

    def get_next(self):
        if self._feeds is None:
            self._feeds = iter([dict(zip(self._input_names, batch)) for batch in self._batches])
        return next(self._feeds, None)


@dataclass(frozen=True)
class BuildContext:
    """What a precision builder may need beside the nodes it rewrites."""

    input_names: tuple[str, ...]
    calibration: Sequence[Sequence[np.ndarray]]
    node_precision: Mapping[str, str]  # every node's choice: builders must leave other kinds' nodes alone
    calibration_cache: Path | None = None  # folder of activation ranges, one file per calibrated model
    ranges: TensorsData | None = None  # static int8's, calibrated on the model apply_precisions was given

    def float_nodes(self) -> list[str]:
        """Nodes whose own op reads float activations (fp32 and dynamic int8)."""
        return [n for n, c in self.node_precision.items() if parse(c)[0].computes_in_float]


# (model, nodes of this choice, block size or None, context) -> the rewritten model
PrecisionBuilder = Callable[[onnx.ModelProto, list[str], "int | None", BuildContext], onnx.ModelProto]
_BUILDERS: dict[str, PrecisionBuilder] = {}


def register_precision_builder(kind: str) -> Callable[[PrecisionBuilder], PrecisionBuilder]:
    """Register the function that builds precision ``kind`` (a name in :data:`tuner.precision.KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"no precision kind {kind!r} in tuner.precision.KINDS; add its PrecisionKind first.")

    def register(builder: PrecisionBuilder) -> PrecisionBuilder:
        _BUILDERS[kind] = builder
        return builder
    return register


def apply_precisions(
    src: str | Path,
    dst: str | Path,
    node_precision: Mapping[str, str],
    calibration: Sequence[Sequence[np.ndarray]],
    calibration_cache: str | Path | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Give every listed node its precision (see :mod:`tuner.precision`); unlisted nodes stay fp32.

    ``metadata``: the model properties ``dst`` gets (replacing any it had), set before its one save.

    ``calibration_cache``: a folder where static int8 keeps the activation ranges it calibrated, one file per
    model it calibrated on; a later build calibrating the same model (same bytes, so same ranges) reads them
    instead of running the calibration data again. It must be kept per calibration set.

    Static int8 is calibrated on ``src`` as given (the pruned fp32 export), before any kind rewrites it, so one
    calibration serves every mix built from that export, whichever of its layers are 4-bit.

    Kinds are built in their ``build_order``: 4-bit weight-only first (it only rewrites float MatMuls with
    constant weights), then static QDQ, then dynamic int8 (per-tensor, then per-channel weight scales).
    """
    by_choice: dict[str, list[str]] = {}
    for node, choice in node_precision.items():
        by_choice.setdefault(choice, []).append(node)
    model = onnx.load(str(src))
    context = BuildContext(tuple(i.name for i in model.graph.input), calibration, dict(node_precision),
                           Path(calibration_cache) if calibration_cache else None)
    with _quiet_root_logger():
        if any(parse(choice)[0].name == INT8 for choice in by_choice):
            context = replace(context, ranges=static_ranges(model, context, source=Path(src)))
        for choice in sorted(by_choice, key=lambda c: (parse(c)[0].build_order, c)):
            kind, block = parse(choice)
            model = _BUILDERS[kind.name](model, by_choice[choice], block, context)
    if metadata is not None:
        onnx.helper.set_model_props(model, dict(metadata))
    onnx.save(model, str(dst))


@register_precision_builder(FP32)
def _fp32(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext) -> onnx.ModelProto:
    return model


@register_precision_builder(INT4)
def _int4(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext) -> onnx.ModelProto:
    # nodes_to_include only *adds* to the op types it quantizes: exclude everything else instead.
    chosen = set(nodes)
    others = [n.name for n in model.graph.node if n.name not in chosen]
    quantizer = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=others)
    quantizer.process()
    return quantizer.model.model


@register_precision_builder(INT8)
def _int8_static(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext
                 ) -> onnx.ModelProto:
    ranges = context.ranges if context.ranges is not None else static_ranges(model, context)
    model = _int8_static_from_ranges(model, nodes, ranges)
    # Layers that must stay float are cut off from upstream DequantizeLinear (see `keep_float_inputs`).
    keep_float_inputs(model, context.float_nodes())
    return model


def static_ranges(model: onnx.ModelProto, context: BuildContext, source: Path | None = None) -> TensorsData:
    """The activation ranges of ``model`` on the calibration data: from ``context.calibration_cache`` when they
    were calibrated before, else calibrated as `quantize_static` calibrates (ORT's MinMax calibrator, on every
    input and output of the WEIGHTED_OPS nodes, whichever of them a mix quantizes: the ranges depend only on the
    model) and kept there. ``source``: the file ``model`` was loaded from, unchanged since (its cache key is then
    remembered per file)."""
    cache = _calibration_file(model, context.calibration_cache, source)
    if cache is not None and cache.is_file():
        return load_tensors_data(cache)
    with tempfile.TemporaryDirectory() as tmp, _calibrator_loads_in_memory(model):
        calibrator = create_calibrator(Path(tmp, "unwritten.onnx"), list(WEIGHTED_OPS),  # (the load is swapped)
                                       augmented_model_path=f"{tmp}/augmented_model.onnx",
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(_BatchReader(context.input_names, context.calibration))
        ranges = calibrator.compute_data()
        del calibrator
    if cache is not None:  # written whole, then published (workers share the folder)
        cache.parent.mkdir(parents=True, exist_ok=True)
        scratch = cache.parent / f".{cache.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.json"
        try:
            save_tensors_data(ranges, scratch)
            os.replace(scratch, cache)
        finally:
            scratch.unlink(missing_ok=True)
    return ranges


@contextmanager
def _calibrator_loads_in_memory(model: onnx.ModelProto):
    """ORT's calibrator takes a file and loads it with shape inference, file to file (the model saved for it, then
    inferred, written and read again: about 3 s of a BERT-base calibration); it gets a copy of ``model`` inferred
    in memory instead, what that load returns. It reads the function from its module's namespace: it is swapped
    for the call."""
    def load(path: Path) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the calibrator adds its ReduceMin/ReduceMax outputs to the model it loaded
        inferred = infer_shapes(copy)
        add_infer_metadata(inferred)
        return inferred

    original = calibrate.load_model_with_shape_infer
    calibrate.load_model_with_shape_infer = load
    try:
        yield
    finally:
        calibrate.load_model_with_shape_infer = original


def _int8_static_from_ranges(model: onnx.ModelProto, nodes: list[str], ranges: TensorsData) -> onnx.ModelProto:
    """What `quantize_static` runs once it has its ranges (shape inference, opset update, `QDQQuantizer`,
    topological sort), on the model in memory, with the arguments of `quantize_static(..., quant_format=QDQ,
    activation_type=QUInt8, weight_type=QInt8, per_channel=True, nodes_to_quantize=nodes,
    op_types_to_quantize=WEIGHTED_OPS)`; `tests/test_transformer.py` checks both give the same model."""
    model = infer_shapes(model)  # quantize_static infers on the file it is given, weights inline
    add_infer_metadata(model)
    model = update_opset_version(model, QuantType.QInt8, QuantType.QUInt8)
    quantizer = _ReusingQDQQuantizer(model, True, False, QuantType.QInt8, QuantType.QUInt8, ranges, nodes, [],
                                     list(WEIGHTED_OPS), {})
    quantizer.quantize_model()
    quantizer.model.topological_sort()
    return quantizer.model.model


def _calibration_file(model: onnx.ModelProto, folder: Path | None, source: Path | None) -> Path | None:
    """The cached ranges of ``model`` (loaded from ``source``), named by :func:`_model_digest`."""
    return None if folder is None else folder / f"{_model_digest(model, source)[:32]}.json"


_MODEL_DIGESTS: OrderedDict[tuple, str] = OrderedDict()  # a source file's identity -> its model's digest


def _model_digest(model: onnx.ModelProto, source: Path | None) -> str:
    """A hash of ``model``'s graph and of every weight's bytes, hashed as they are (serializing the whole model
    for the hash took 0.9 s on BERT-base); remembered per ``source`` file (path, inode, size, modification time),
    so a worker building many mixes from one export hashes it once."""
    identity = None
    if source is not None:
        stat = os.stat(source)
        identity = (str(Path(source).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if identity in _MODEL_DIGESTS:
            _MODEL_DIGESTS.move_to_end(identity)
            return _MODEL_DIGESTS[identity]
    digest = hashlib.sha256()
    if has_subgraphs(model.graph):
        digest.update(model.SerializeToString())
    else:
        digest.update(skeleton(model).SerializeToString())
        for tensor in model.graph.initializer:
            if is_float_weight(tensor):
                digest.update(tensor.name.encode())
                digest.update(tensor.raw_data)
    if identity is not None:
        _MODEL_DIGESTS[identity] = digest.hexdigest()
        while len(_MODEL_DIGESTS) > 64:
            _MODEL_DIGESTS.popitem(last=False)
    return digest.hexdigest()


def _int8_dynamic(kind: str, per_channel: bool, reduce_range: bool = False) -> PrecisionBuilder:
    """ORT's dynamic quantizer; ``reduce_range``: 7-bit weights. (ORT writes LSTM weights per channel whatever it
    is asked: LSTM is offered by the per-channel kind only.)

    It runs what `quantize_dynamic` runs (opset update, `ONNXQuantizer`, topological sort) on the model in
    memory. `quantize_dynamic` takes a file: the model was saved for it, shape-inferred file to file, loaded, and
    its output saved and loaded again, per kind (`experiments/bert_base/quantize_time.py`: a BERT-base mix of
    every int8 kind builds in 0.49x the time). `tests/test_transformer.py` checks that the result is, byte for
    byte, the model `quantize_dynamic` writes."""
    def build(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext
              ) -> onnx.ModelProto:
        # No shape inference first: for a dynamic build ONNXQuantizer infers shapes itself (after rewriting Gemm
        # to MatMul) and reads only its own; the metadata says the model went through it, as quantize_dynamic's does.
        add_infer_metadata(model)
        model = update_opset_version(model, QuantType.QInt8)
        # DefaultTensorType: ORT's contrib ops (SkipLayerNormalization, ...) carry no type inference.
        with _ort_reload_in_memory():
            quantizer = _ReusingQuantizer(model, per_channel, reduce_range, QuantizationMode.IntegerOps, False,
                                          QuantType.QInt8, QuantType.QUInt8, None, nodes, None,
                                          list(KINDS[kind].op_types), {**DYNAMIC_OPTIONS, "MatMulConstBOnly": True})
        quantizer.quantize_model()
        quantizer.model.topological_sort()
        return quantizer.model.model
    return build


class QuantizedWeights:
    """Per-channel int8 weights this process has quantized, by the float weight's bytes and how it was quantized
    (dynamic here; static in :class:`_ReusingQDQQuantizer`).

    ORT's dynamic quantizer computes a per-channel weight's scales channel by channel in a Python loop (about
    9 s of the 12.6 s a uniform per-channel BERT-base build takes here: `experiments/bert_base/quantize_time.py`),
    and a study quantizes the same unpruned weights again in every trial that gives their layer a per-channel kind.
    What is kept is what that loop adds to the model (the int8 weight, its scales and zero points), so a later
    build adds the same tensors: the model is the same, byte for byte (`tests/test_transformer.py`). Least
    recently used entries go once ``max_bytes`` is passed."""

    def __init__(self, max_bytes: int = 1 << 29):
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple, tuple[onnx.TensorProto, ...]] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple) -> tuple[onnx.TensorProto, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, tensors: tuple[onnx.TensorProto, ...]) -> None:
        size = sum(t.ByteSize() for t in tensors)
        if size > self.max_bytes:
            return
        self._entries[key] = tensors
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= sum(t.ByteSize() for t in dropped)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = self.hits = self.misses = 0


QUANTIZED_WEIGHTS = QuantizedWeights()


class _ReusingQuantizer(ONNXQuantizer):
    """ORT's dynamic quantizer, its per-channel weights looked up in :data:`QUANTIZED_WEIGHTS` first."""

    def quantize_weight_per_channel_impl(self, weight_name, weight_qType, channel_axis, reduce_range=True,  # noqa: N803
                                         keep_float_weight=False):
        initializer = find_by_name(weight_name, self.model.initializer())
        if initializer is None or keep_float_weight or self.tensor_quant_overrides.overrides:
            return super().quantize_weight_per_channel_impl(weight_name, weight_qType, channel_axis, reduce_range,
                                                            keep_float_weight)
        weight = numpy_helper.to_array(initializer)
        # everything ORT's loop reads: the values, the axis, the type, and its settings for this weight
        key = (_digest(weight), weight.shape, str(weight.dtype), initializer.data_type, weight_qType, channel_axis,
               bool(self.reduce_range and reduce_range), self.is_weight_symmetric(weight_qType), self.min_real_range)
        # the names ORT gives them, in the order it adds them: scale, zero point, then the weight
        names = (weight_name + TENSOR_NAME_QUANT_SUFFIX, weight_name + "_zero_point", weight_name + "_scale")
        order = (names[2], names[1], names[0])
        cached = QUANTIZED_WEIGHTS.get(key)
        if cached is None:
            made = super().quantize_weight_per_channel_impl(weight_name, weight_qType, channel_axis, reduce_range,
                                                            keep_float_weight)
            tensors = tuple(find_by_name(n, self.model.initializer()) for n in order)
            if tuple(made) == names and all(t is not None for t in tensors):  # else: an ORT that names them otherwise
                QUANTIZED_WEIGHTS.put(key, tuple(_renamed(t, "") for t in tensors))
            return made
        self.model.initializer_extend([_renamed(t, n) for t, n in zip(cached, order)])
        return names


@contextmanager
def _ort_reload_in_memory():
    """ONNXQuantizer's constructor saves the model, infers its shapes on the file and loads it back, to read the
    inferred types (0.35 s per dynamic kind on BERT-base); the same model comes from :func:`infer_shapes` without
    the file. The constructor reads the function from its module's namespace: it is swapped for the call."""
    original = onnx_quantizer.save_and_reload_model_with_shape_infer
    onnx_quantizer.save_and_reload_model_with_shape_infer = lambda model: infer_shapes(model, like_ort_reload=True)
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = original


class _ReusingQDQQuantizer(QDQQuantizer):
    """ORT's static (QDQ) quantizer, its per-channel weights looked up in :data:`QUANTIZED_WEIGHTS` first.

    ORT computes a static layer's per-channel weight scales channel by channel in Python, then quantizes the
    weight channel by channel, in every build (1.7 s and 0.9 s of a 6.4 s BERT-base mix profiled here). Both
    depend only on the weight's values and the quantizer's settings: what a later build with the same weight
    gets is what the first one computed, so the model is the same, byte for byte (`tests/test_transformer.py`).
    Anything else (overrides, blocks, per-tensor weights) goes to ORT's own code."""

    def _calc_initializer_quant_params(self) -> dict[str, QuantizationParams]:
        if self.tensor_quant_overrides.overrides or getattr(self, "block_size", 0):
            return super()._calc_initializer_quant_params()
        every = self.tensors_to_quantize
        keys: dict[str, tuple] = {}
        cached: dict[str, QuantizationParams] = {}
        for name, info in every.items():
            initializer = find_by_name(name, self.model.initializer())
            if initializer is None or info.tensor_type is not qdq_quantizer.QDQQuantTensorType.WEIGHT \
                    or info.axis is None:
                continue
            valid, axis = normalize_axis(info.axis, len(initializer.dims))
            if not valid:
                continue
            # everything ORT's per-channel loop reads: the values, the axis, the type and its settings
            keys[name] = ("qdq-scales", self._digest(initializer), tuple(initializer.dims), initializer.data_type, axis,
                          self.weight_qType, self.reduce_range, self.min_real_range)
            hit = QUANTIZED_WEIGHTS.get(keys[name])
            if hit is not None:
                cached[name] = QuantizationParams(zero_point=numpy_helper.to_array(hit[1]),
                                                  scale=numpy_helper.to_array(hit[0]), quant_type=self.weight_qType,
                                                  axis=axis)
        self.tensors_to_quantize = {name: info for name, info in every.items() if name not in cached}
        try:
            computed = super()._calc_initializer_quant_params()
        finally:
            self.tensors_to_quantize = every
        for name, params in computed.items():
            if name in keys and params.get("axis") is not None:
                QUANTIZED_WEIGHTS.put(keys[name], (numpy_helper.from_array(params["scale"], ""),
                                                   numpy_helper.from_array(params["zero_point"], "")))
        # ORT's order (the order it adds scale and zero-point initializers in)
        return {name: cached[name] if name in cached else computed[name] for name in every
                if name in cached or name in computed}

    def quantize_model(self):
        # `_add_qdq_nodes_for_initializer` reads the function from its module's namespace: swapped for the call
        original = qdq_quantizer.quantize_onnx_initializer

        def quantize_initializer(weight, quant_type, zero_point, scale, axis=None, quant_weight_name=None, **rest):
            if axis is None or rest.get("block_size"):  # per-tensor or block-wise: ORT's own code
                return original(weight, quant_type, zero_point, scale, axis, quant_weight_name, **rest)
            key = ("qdq-weight", self._digest(weight), tuple(weight.dims), weight.data_type, quant_type, axis,
                   zero_point.dtype.str, zero_point.tobytes(), scale.dtype.str, scale.tobytes())
            name = quant_weight_name or f"{weight.name}{TENSOR_NAME_QUANT_SUFFIX}"
            hit = QUANTIZED_WEIGHTS.get(key)
            if hit is not None:
                return _renamed(hit[0], name)
            made = original(weight, quant_type, zero_point, scale, axis, quant_weight_name, **rest)
            if made.name == name:  # else: an ORT that names it otherwise
                QUANTIZED_WEIGHTS.put(key, (_renamed(made, ""),))
            return made

        qdq_quantizer.quantize_onnx_initializer = quantize_initializer
        try:
            return super().quantize_model()
        finally:
            qdq_quantizer.quantize_onnx_initializer = original

    def _digest(self, initializer: onnx.TensorProto) -> bytes:
        """The weight's digest, computed once per build (its scales and its int8 values are both looked up)."""
        digests = self.__dict__.setdefault("_digests", {})
        if initializer.name not in digests:
            digests[initializer.name] = _digest(numpy_helper.to_array(initializer))
        return digests[initializer.name]


def _digest(values: np.ndarray) -> bytes:
    # SHA-256 of the array's buffer, not of a copy: 2.7x faster than BLAKE2b on this CPU (SHA instructions)
    return hashlib.sha256(np.ascontiguousarray(values)).digest()


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


register_precision_builder(INT8_DYNAMIC)(_int8_dynamic(INT8_DYNAMIC, per_channel=False))
register_precision_builder(INT8_DYNAMIC_PER_CHANNEL)(_int8_dynamic(INT8_DYNAMIC_PER_CHANNEL, per_channel=True))
register_precision_builder(INT8_DYNAMIC_PER_CHANNEL_7BIT)(
    _int8_dynamic(INT8_DYNAMIC_PER_CHANNEL_7BIT, per_channel=True, reduce_range=True))


@contextmanager
def _quiet_root_logger():
    """ORT's quantizers log advice and per-node INFO lines through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def keep_float_inputs(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> None:
    """Make float Conv/Gemm/MatMul nodes read their activation through Cast/Sub/Mul instead of DequantizeLinear.

    ORT's WeightBiasQuantization transformer (optimization level >= basic) quantizes the float weights of
    any Conv/Gemm whose input comes straight from a DequantizeLinear, so a layer left float would silently
    run in int8. The arithmetic here is the same as DequantizeLinear's, so results do not change; only
    the pattern ORT rewrites is gone, in every session that loads the file.
    """
    fp32_nodes = set(fp32_nodes)
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name: init for init in model.graph.initializer}
    new_nodes = []
    for node in model.graph.node:
        dq = producer.get(node.input[0]) if node.name in fp32_nodes and node.input else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            # Names must not collide with what later quantizers derive from the input name
            # (quantize_dynamic adds "<input>_scale" and "<input>_zero_point").
            base = f"{node.name}/tuner_float"
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            zero_point = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else 0
            model.graph.initializer.extend([
                numpy_helper.from_array(np.asarray(scale, np.float32), f"{base}/dq_scale"),
                numpy_helper.from_array(np.asarray(zero_point, np.float32), f"{base}/dq_zero_point"),
            ])
            new_nodes += [
                helper.make_node("Cast", [dq.input[0]], [f"{base}/cast"], name=f"{base}/cast", to=TensorProto.FLOAT),
                helper.make_node("Sub", [f"{base}/cast", f"{base}/dq_zero_point"], [f"{base}/centered"],
                                 name=f"{base}/sub"),
                helper.make_node("Mul", [f"{base}/centered", f"{base}/dq_scale"], [f"{base}/input"],
                                 name=f"{base}/mul"),
            ]
            node.input[0] = f"{base}/input"
        new_nodes.append(node)
    # Drop DequantizeLinear nodes nobody reads any more.
    consumed = {i for n in new_nodes for i in n.input} | {o.name for o in model.graph.output}
    new_nodes = [n for n in new_nodes if n.op_type != "DequantizeLinear" or n.output[0] in consumed]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
