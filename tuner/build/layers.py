"""Model introspection: which layers of a torch model `tuner` searches, and what ONNX op each one becomes."""

from __future__ import annotations


def quantizable_layers(model) -> list[str]:
    """Module names of the layers `tuner` searches, in model order: Conv2d and Linear, single-layer
    unidirectional LSTMs (one ONNX LSTM node each; precision only) and, in a model that asks for it with a true
    ``searchable_tables`` attribute (a decoder's :class:`~tuner.tasks.decoder.CachedDecoder`), embeddings (a Gather;
    precision only: 4-bit tables). An encoder's tables are not searched: its position and type tables become
    constants or fused ops in the exported graph."""
    tables = bool(getattr(model, "searchable_tables", False))
    return [name for name, m in model.named_modules() if _searchable(m, tables)]


def _searchable(module, tables: bool = False) -> bool:
    from torch import nn

    from tuner.build.prune import PRUNABLE_TYPES

    return isinstance(module, (*PRUNABLE_TYPES, *((nn.Embedding,) if tables else ()))) or (
        isinstance(module, nn.LSTM) and module.num_layers == 1 and not module.bidirectional)


def untuned_layers(model) -> list[tuple[str, str]]:
    """Layers with weights that `tuner` does not search (GRU, Conv1d, stacked LSTMs, ...; norms and embeddings aside),
    with their type: they stay fp32, and a user should be told so."""
    from torch import nn

    from tuner.build.prune import PRUNABLE_TYPES

    plain = PRUNABLE_TYPES + (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
                              nn.EmbeddingBag)
    return [(name, type(m).__name__) for name, m in model.named_modules()
            if not isinstance(m, plain) and not _searchable(m) and not any(True for _ in m.children())
            and any(True for _ in m.parameters(recurse=False))]


def layer_op_types(model, example_inputs, exporter: str = "dynamo", dynamic_axes=()) -> dict[str, str]:
    """Export ``model`` once and return the ONNX op type each quantizable layer became.

    Layers the exporter dropped (their output is never used) are left out: there is nothing to tune.
    """
    import tempfile

    import onnx

    from tuner.build.export import export_onnx, layer_weights, map_layers

    layers = quantizable_layers(model)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, example_inputs, f"{tmp}/model.onnx", exporter, dynamic_axes)
        nodes = map_layers(onnx.load(f"{tmp}/model.onnx"), layer_weights(model, layers), allow_missing=True)
    return {layer: nodes[layer].op_type for layer in layers if layer in nodes}
