"""Causal language-model tasks for decoder LLMs: the model as a generate loop runs it (token ids and the KV cache
in, logits and the grown cache out), scored by perplexity on held-out text, timed as one decode step.

One exported artifact serves both phases of generation: prefill (the prompt's N tokens with an empty cache) and
decode (one token with a cache of L tokens), as ONNX Runtime's own generate loop runs a decoder (past key/values
as inputs, present key/values as outputs). The study's latency is the decode step at batch 1, what a chat user
waits for per generated token; `tuner.measure.generation` times both phases of any artifact.

The metric is perplexity on the held-out text (minimized); next-token agreement with the fp32 model (the share of
positions where the candidate's top token is fp32's) is recorded beside it.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from tuner.task import Evaluation, Task

# Linear layers that write to the residual stream (attention output, MLP down-projection) and the output head:
# channel pruning keeps their width. It keeps the attention projections whole too: grouped-query heads share key/value
# heads, which channel pruning cannot keep aligned; they are pruned in whole key/value groups instead
# (`tuner.build.kv_groups`). Channel pruning shrinks each MLP's hidden units (gate/up with down's input).
KEPT_WIDTH = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj",
              "lm_head")


class CachedDecoder(nn.Module):
    """A Hugging Face causal LM behind a flat signature: ``forward(input_ids, *past)`` with ``past`` the key and
    value of each layer in turn (batch x key/value heads x cached tokens x head dim), returning the logits and the
    grown key/values in the same order.

    A head tied to the input embeddings is given its own copy of the matrix: in the exported graph it is then a
    MatMul of its own, which precision choices can reach (the embedding stays a Gather).
    """

    searchable_tables = True  # the embedding table, a decoder's largest tensor, is a layer (tuner.build.layers)

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        head, embeddings = lm.get_output_embeddings(), lm.get_input_embeddings()
        if head is not None and head.weight is embeddings.weight:
            head.weight = nn.Parameter(embeddings.weight.detach().clone())
            lm.config.tie_word_embeddings = False
        self.lm = lm
        config = lm.config
        self.layers = config.num_hidden_layers
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns in every process that uses it)
        self._cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

    def layer_kv_heads(self) -> list[int]:
        """Key/value heads of each layer as the model is now (fewer where whole key/value groups were pruned)."""
        heads = [m.k_proj.out_features // self.head_dim for m in self.lm.modules()
                 if isinstance(getattr(m, "k_proj", None), nn.Linear) and hasattr(m, "num_key_value_groups")]
        return heads or [self.kv_heads] * self.layers

    def fit_inputs(self, inputs: tuple) -> tuple:
        """The task's inputs (built for the model as trained) as this copy takes them: each layer's past keys and
        values cut to the key/value heads it keeps (``tuner.task.FIT_INPUTS``). The task feeds empty caches to
        score and calibrate and noise to time, so which heads are kept does not matter: the leading ones."""
        ids, *past = inputs
        heads = [h for h in self.layer_kv_heads() for _ in range(2)]
        return (ids, *(p[:, :h] for p, h in zip(past, heads)))

    def empty_cache(self, batch: int, length: int = 0, seed: int | None = None) -> tuple[torch.Tensor, ...]:
        """Key/values for ``length`` cached tokens (zeros, or seeded noise for timing: values do not change the
        work), one tensor per layer and kind, shaped as this model's layers are."""
        shapes = [(batch, heads, length, self.head_dim) for heads in self.layer_kv_heads() for _ in range(2)]
        if seed is None:
            return tuple(torch.zeros(shape) for shape in shapes)
        generator = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(shape, generator=generator) for shape in shapes)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.lm(input_ids=input_ids, use_cache=True, **{self._cache_arg: cache})
        grown = out.cache if self._cache_arg == "cache" else out.past_key_values
        present = [t for layer in grown.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def token_windows(token_ids: np.ndarray, length: int) -> np.ndarray:
    """A token stream cut into rows of ``length`` tokens (the tail that does not fill a row is dropped)."""
    rows = len(token_ids) // length
    return np.ascontiguousarray(token_ids[: rows * length].reshape(rows, length), dtype=np.int64)


def next_token_scores(logits: np.ndarray, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    """`Evaluation.reduce` for language models: per position, the log-probability of the token that follows and
    the model's top token (batch x tokens-1 x 2), instead of the whole vocabulary's logits."""
    ids = inputs[0]
    logits = logits[:, :-1].astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    target = np.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    return np.stack([target, logits.argmax(axis=-1).astype(np.float64)], axis=-1)


def perplexity(scores: np.ndarray) -> float:
    return float(np.exp(-scores[..., 0].mean()))


def next_token_agreement(reference: np.ndarray):
    """The share of positions where a candidate's top token is the reference model's."""
    def metric(scores: np.ndarray) -> float:
        return float(np.mean(scores[..., 1] == reference[..., 1]))

    return metric


def causal_lm_task(lm: nn.Module, windows: np.ndarray, n_eval: int, calibration_batches: int = 4,
                   calibration_batch_size: int = 4, cache_length: int = 128, eval_batch_size: int = 4,
                   prompt_tokens: int = 64) -> Task:
    """A Task over rows of tokens (:func:`token_windows`): the first ``n_eval`` rows are scored, the following ones
    calibrate. Latency: one decode step at batch 1 with ``cache_length`` cached tokens, what the study optimizes;
    beside it, every artifact's prefill of a ``prompt_tokens`` prompt at batch 1 with an empty cache (time to first
    token; ``Task.latency_phases``, recorded as ``latency_prefill_ms``).

    ``lm`` is a Hugging Face causal LM that takes a ``DynamicCache`` (Llama, Mistral, Qwen2, SmolLM, Phi and most
    other decoder families); a head tied to its embeddings is untied in place (see :class:`CachedDecoder`).
    """
    n_cal = calibration_batches * calibration_batch_size
    if not 1 <= prompt_tokens <= windows.shape[1]:
        raise ValueError(f"prompt_tokens must be in [1, {windows.shape[1]}] (the rows' length), got {prompt_tokens}.")
    if len(windows) < n_eval + n_cal:
        raise ValueError(f"need {n_eval + n_cal} rows of tokens ({n_eval} to score, {n_cal} to calibrate), "
                         f"got {len(windows)}.")
    model = CachedDecoder(lm.eval()).eval()
    eval_ids = windows[:n_eval]
    empty = tuple(t.numpy() for t in model.empty_cache(n_eval))
    with torch.no_grad():
        reference = np.concatenate([
            next_token_scores(model(torch.from_numpy(eval_ids[i:i + eval_batch_size]))[0].numpy(),
                              (eval_ids[i:i + eval_batch_size],))
            for i in range(0, n_eval, eval_batch_size)])
    evaluation = Evaluation(
        inputs=(eval_ids, *empty), metric=perplexity, metric_name="perplexity", direction="minimize",
        batch_size=eval_batch_size, reduce=next_token_scores,
        extra_metrics={"next_token_agreement": next_token_agreement(reference)},
    )
    calibration = [
        (torch.from_numpy(windows[start:start + calibration_batch_size]),
         *model.empty_cache(calibration_batch_size))
        for start in range(n_eval, n_eval + n_cal, calibration_batch_size)
    ]
    decode_step = (torch.from_numpy(windows[:1, :1]), *model.empty_cache(1, cache_length, seed=0))
    prefill = (torch.from_numpy(windows[:1, :prompt_tokens]), *model.empty_cache(1))
    kept = tuple(name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.endswith(KEPT_WIDTH))
    return Task(model=model, example_inputs=decode_step, calibration_inputs=calibration, evaluation=evaluation,
                output_layers=kept,
                dynamic_axes=({1: "sequence"},) + tuple({2: "past_sequence"} for _ in decode_step[1:]),
                latency_phases={"prefill": prefill})
