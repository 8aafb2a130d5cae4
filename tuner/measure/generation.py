"""Prefill and decode latency of a decoder exported with its KV cache (`tuner.tasks.decoder.CachedDecoder`), on
one ORT session: time to the first token, then time per generated token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from tuner.measure.latency import measure_latency

K = TypeVar("K")


@dataclass(frozen=True)
class GenerationLatency:
    """The two numbers a chat user waits for, on one artifact at batch 1."""

    prefill_ms: float  # the whole prompt, empty cache: time to first token
    decode_ms: float  # one token with the cache of a prompt

    def summary(self, prompt_tokens: int) -> str:
        return (f"prefill {prompt_tokens} tokens {self.prefill_ms:.1f} ms ({prompt_tokens / self.prefill_ms * 1e3:.0f} "
                f"tokens/s), decode {self.decode_ms:.2f} ms/token ({1e3 / self.decode_ms:.1f} tokens/s)")


def decode_and_prefill_ms(session, prompt: np.ndarray, repeats: int = 20, warmup: int = 3) -> GenerationLatency:
    """Median prefill time of ``prompt`` (1 x N tokens) and median time of one decode step after it, with the
    cache the prefill returned, on an ORT session of a :class:`CachedDecoder` export."""
    names = [i.name for i in session.get_inputs()]
    # each layer's cache as its input declares it: batch, heads (fewer where key/value groups were pruned), past,
    # head dim
    prefill_feeds = {names[0]: prompt, **{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
                                          for i in session.get_inputs()[1:]}}
    outputs = session.run(None, prefill_feeds)
    next_token = outputs[0][:, -1:].argmax(-1).astype(np.int64)
    decode_feeds = {names[0]: next_token, **dict(zip(names[1:], outputs[1:]))}

    return GenerationLatency(prefill_ms=measure_latency(session, prefill_feeds, warmup, repeats).median_ms,
                             decode_ms=measure_latency(session, decode_feeds, warmup, repeats).median_ms)


def interleaved_generation(sessions: Mapping[K, object], prompt: np.ndarray, rounds: int = 3, repeats: int = 20
                           ) -> dict[K, list[GenerationLatency]]:
    """:func:`decode_and_prefill_ms` of every session once per round, in turn (A, B, C, A, B, C, ...), so that
    what else the machine runs falls on all of them alike; compare them by :func:`median_speedup`."""
    timed: dict[K, list[GenerationLatency]] = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            timed[key].append(decode_and_prefill_ms(session, prompt, repeats=repeats))
    return timed


def median_speedup(timed: Mapping[K, list[GenerationLatency]], reference: K, key: K, phase: str) -> float:
    """The median over rounds of ``reference``'s time over ``key``'s in one round, for ``phase`` (``"prefill_ms"``
    or ``"decode_ms"``): a ratio taken side by side, which the machine's drift between rounds does not move."""
    return float(np.median([getattr(r, phase) / getattr(k, phase) for r, k in zip(timed[reference], timed[key])]))
