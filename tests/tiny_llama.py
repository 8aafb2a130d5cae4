"""A 2-layer Llama-style decoder built in the test (random weights, seeded): grouped-query attention (4 query
heads sharing 2 key/value heads) and an output head tied to the embeddings, as in SmolLM2 and most small LLMs."""

import numpy as np
import torch

from tuner.tasks.decoder import causal_lm_task, token_windows

VOCAB = 256


def make_lm(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def token_stream(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n)


def make_task(seed: int = 0, cache_length: int = 16, prompt_tokens: int = 8):
    windows = token_windows(token_stream(24 * 16), 16)
    return causal_lm_task(make_lm(seed), windows, n_eval=16, calibration_batches=2, calibration_batch_size=4,
                          cache_length=cache_length, prompt_tokens=prompt_tokens)
