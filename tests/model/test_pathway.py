from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.model.pathway import (
    add_pathways,
    effective_weight,
    is_pathway,
    pathway_layers,
    pathway_parameters,
    pathway_state_dict,
)


class Block(nn.Module):
    def __init__(self, width: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Stack(nn.Module):
    """A minimal transformer-shaped model with blocks under a configurable path."""

    def __init__(self, width: int = 8, hidden: int = 16, depth: int = 2, bias: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, hidden, bias) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def test_layer_stays_linear_and_weight_reads_effective_weight() -> None:
    target, aux = Stack(), Stack()
    add_pathways(target, aux, layers=("fc1", "fc2"))
    layer = target.blocks[0].fc1
    assert isinstance(layer, nn.Linear)
    assert is_pathway(target) and is_pathway(layer)
    lam = pathway_layers(target)["blocks.0.fc1"].scales[0]
    lam.data.fill_(0.25)
    expected = layer.parametrizations["weight"].original + 0.25 * aux.blocks[0].fc1.weight
    assert torch.equal(layer.weight, expected)


def test_lambda_starts_at_zero_so_output_is_unchanged() -> None:
    target, aux = Stack(), Stack()
    x = torch.randn(3, 8)
    before = target(x)
    add_pathways(target, aux, layers=("fc1", "fc2"))
    assert torch.equal(target(x), before)


def test_aux_frozen_by_default_and_trainable_on_request() -> None:
    frozen = add_pathways(Stack(), Stack(), layers=("fc1",))
    trainable = add_pathways(Stack(), Stack(), layers=("fc1",), train_aux=True)
    assert not any(p.requires_grad for pw in pathway_layers(frozen).values() for p in pw.aux_weights)
    assert all(p.requires_grad for pw in pathway_layers(trainable).values() for p in pw.aux_weights)
    assert all(p.requires_grad for p in pathway_parameters(frozen))


def test_gradient_reaches_lambda_and_target_weight() -> None:
    target = add_pathways(Stack(), Stack(), layers=("fc1", "fc2"))
    target(torch.randn(4, 8)).sum().backward()
    assert all(p.grad is not None for p in pathway_parameters(target))
    assert target.blocks[0].fc1.parametrizations["weight"].original.grad is not None


def test_channel_lambda_has_one_value_per_output() -> None:
    target = add_pathways(Stack(hidden=16), Stack(hidden=16), layers=("fc1",), lambda_kind="channel")
    assert pathway_layers(target)["blocks.0.fc1"].scales[0].shape == (16,)


def test_nested_block_path_and_separate_aux_path() -> None:
    target = nn.Module()
    target.blocks = Stack()
    aux_sd = Stack().state_dict()
    add_pathways(target, aux_sd, layers=("fc2",), block_path="blocks.blocks", aux_block_path="blocks")
    assert list(pathway_layers(target)) == ["blocks.blocks.0.fc2", "blocks.blocks.1.fc2"]


def test_depth_mismatch_names_both_depths() -> None:
    with pytest.raises(M2ptError, match="target has 2 blocks, aux #0 has 3"):
        add_pathways(Stack(depth=2), Stack(depth=3), layers=("fc1",))


def test_shape_mismatch_names_block_layer_and_both_shapes() -> None:
    with pytest.raises(M2ptError, match=r"blocks\.0\.fc1: target weight \(16, 8\) vs aux #1 weight \(32, 8\)"):
        add_pathways(Stack(), [Stack(), Stack(hidden=32)], layers=("fc1",))


def test_missing_layer_and_non_linear_are_errors() -> None:
    with pytest.raises(M2ptError, match="no layer blocks.0.nope"):
        add_pathways(Stack(), Stack(), layers=("nope",))
    target = Stack()
    target.blocks[0].fc1 = nn.Identity()  # type: ignore[assignment]
    with pytest.raises(M2ptError, match="Identity, not an nn.Linear"):
        add_pathways(target, Stack(), layers=("fc1",))


def test_adding_twice_is_refused() -> None:
    target = add_pathways(Stack(), Stack(), layers=("fc1",))
    with pytest.raises(M2ptError, match="already has a pathway"):
        add_pathways(target, Stack(), layers=("fc1",))


def test_state_dict_layout_has_reference_names_with_an_index() -> None:
    target = add_pathways(Stack(depth=1, bias=False), [Stack(depth=1), Stack(depth=1)], layers=("fc1",))
    keys = set(pathway_state_dict(target))
    assert {"blocks.0.fc1.weight", "blocks.0.fc1.aux_weight.0", "blocks.0.fc1.aux_weight.1",
            "blocks.0.fc1.cross_modal_scale.0", "blocks.0.fc1.cross_modal_scale.1"} <= keys
    assert not any("parametrizations" in k for k in keys)


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 24),
    hidden=st.integers(1, 24),
    n_aux=st.integers(1, 3),
    lam=st.floats(-10, 10, allow_nan=False, width=32),
)
def test_effective_weight_is_the_sum(width: int, hidden: int, n_aux: int, lam: float) -> None:
    w = torch.randn(hidden, width)
    auxes = [torch.randn(hidden, width) for _ in range(n_aux)]
    scales = [torch.tensor([lam]) for _ in range(n_aux)]
    expected = w
    for a in auxes:
        expected = expected + lam * a
    assert torch.equal(effective_weight(w, auxes, scales), expected)
