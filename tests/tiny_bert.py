"""A 2-layer BERT encoder built in the test (random weights, seeded): the transformer family, small and fast."""

import numpy as np
import torch

from tuner.tasks.encoder import embedding_task

VOCAB = 500


def make_encoder(seed: int = 0, layers: int = 2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


def tokens(n: int, seq: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 4, seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, VOCAB, size=(n, seq)) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((n, seq), np.int64)}


def make_task(seed: int = 0):
    return embedding_task(make_encoder(seed), tokens(96), n_eval=64, calibration_batches=4,
                          calibration_batch_size=8)
