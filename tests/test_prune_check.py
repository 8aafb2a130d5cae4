"""The pre-study pruning check: a few pruned copies for a model of many blocks, one warning per role it leaves out."""

import pytest
import torch
from torch import nn

import tuner.build.prune as prune_module
from tuner.build.prune import (
    broken_groups,
    broken_warnings,
    pruning_groups,
    pruning_role,
)


class Block(nn.Module):
    """``up`` feeds a reshape to a hard-coded width (pruning it breaks the model); ``hidden`` prunes fine."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.hidden, self.out = nn.Linear(16, 24), nn.Linear(24, 16)

    def forward(self, x):
        h = self.up(x)
        x = x + self.down(h.reshape(h.shape[0], 4, 8).flatten(1))
        return x + self.out(torch.relu(self.hidden(x)))


class Blocks(nn.Module):
    def __init__(self, n: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(n))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_a_role_that_breaks_is_found_in_a_few_copies_and_reported_in_one_line(monkeypatch):
    torch.manual_seed(0)
    model, example = Blocks().eval(), (torch.randn(2, 16),)
    kept = tuple(f"blocks.{i}.{name}" for i in range(4) for name in ("down", "out")) + ("head",)
    groups = pruning_groups(model, example, kept)
    assert len(groups) == 8 and pruning_role(groups[0].name).startswith("blocks.{}.")
    ratios = {g.name: 0.5 for g in groups}
    copies = []
    real_prune = prune_module.prune
    monkeypatch.setattr(prune_module, "prune", lambda *a, **k: copies.append(1) or real_prune(*a, **k))

    broken = broken_groups(model, example, ratios, kept)

    assert set(broken) == {g.name for g in groups if ".up" in g.name}  # every block's up, no hidden
    assert len(copies) < len(groups)  # all at once, each role at once, the breaking role's first group alone
    lines = broken_warnings(broken, ratios)
    assert len(lines) == 1
    assert lines[0].startswith("warning: 4 pruning groups blocks.{0..3}.up are left out of the search: pruned by 0.5")
    assert "shape '[2, 4, 8]' is invalid" in lines[0]


@pytest.mark.parametrize("name, role", [("layers.3.mlp.up+layers.3.mlp.gate", "layers.{}.mlp.up+layers.{}.mlp.gate"),
                                        ("conv1", "conv1"), ("stage2.0.conv", "stage2.{}.conv")])
def test_the_role_of_a_group_replaces_its_block_number(name, role):
    assert pruning_role(name) == role
