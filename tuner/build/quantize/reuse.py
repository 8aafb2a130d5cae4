"""Reuse caches for ORT's quantizers: per-channel int8 weights and their scales, looked up by the float
weight's bytes, so a study's later builds skip what ORT computes in Python (byte-identical models)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    QDQQuantizer,
    qdq_quantizer,
)
from onnxruntime.quantization.base_quantizer import QuantizationParams
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.quant_utils import (
    TENSOR_NAME_QUANT_SUFFIX,
    find_by_name,
    normalize_axis,
)


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
