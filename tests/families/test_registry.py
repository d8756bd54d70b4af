"""A family registered from Python goes through the whole pipeline: load, merge, export, verify."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelFamily, ModelSpec, detect_family, get_family, register_family, unregister_family
from m2pt_deploy.merge import merge_model
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import PathwayInfo, load_checkpoint, save_checkpoint
from m2pt_deploy.model.pathway import add_pathways, pathway_layers, pathway_state_dict
from m2pt_deploy.pipelines.export import export_onnx


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class TokenMLP(nn.Module):
    """A user's transformer-like model that no built-in family knows: (B, 4, 8) tokens."""

    def __init__(self, width: int, depth: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.layers = nn.Sequential(*(Block(width) for _ in range(depth)))
        self.out = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.layers(self.embed(x)).mean(dim=1))


class TokenMLPFamily(ModelFamily):
    name = "token_mlp"
    title = "token MLP"
    block_path = "layers"
    pathway_layers = ("fc1", "fc2")
    head = "out"
    input_axes = ("tokens", "features")
    modality = "tokens"

    def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
        return "embed.weight" in state_dict and "layers.0.fc1.weight" in state_dict

    def infer_spec(self, state_dict: Mapping[str, Tensor], *, arch: str | None = None,
                   input_size: tuple[int, ...] | None = None, args: Mapping[str, Any] | None = None,
                   options: Mapping[str, Any] | None = None, notes: list[str] | None = None) -> ModelSpec:
        self.check_options(options)
        width = state_dict["embed.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("layers."))
        kwargs = {"width": width, "depth": depth, "classes": state_dict["out.weight"].shape[0]}
        return ModelSpec("token_mlp", kwargs, (4, 8), (), (), family=self.name)

    def check_spec(self, spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
        if spec.model_kwargs != self.infer_spec(state_dict).model_kwargs:
            raise M2ptError("the config disagrees with the weights")

    def build(self, spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
        kw = spec.model_kwargs
        return TokenMLP(kw["width"], kw["depth"], kw["classes"]).eval()


@pytest.fixture
def token_family() -> Iterator[ModelFamily]:
    family = register_family(TokenMLPFamily())
    yield family
    unregister_family(family.name)


def _pathway_checkpoint(path: Path, family: ModelFamily) -> Path:
    torch.manual_seed(0)
    spec = family.infer_spec(TokenMLP(16, 2, 3).state_dict())
    target, aux = family.build(spec), family.build(spec)
    add_pathways(target, aux, layers=family.pathway_layers, block_path=family.block_path)
    for p in pathway_layers(target).values():
        p.scales[0].data.fill_(0.3)
    info = PathwayInfo(family.pathway_layers, family.block_path, "scalar", ({"modality": "x", "sha256": None},))
    return save_checkpoint(path, pathway_state_dict(target), spec, pathway=info)


def test_a_registered_family_is_recognised_and_named(token_family: ModelFamily) -> None:
    assert detect_family(TokenMLP(16, 2, 3).state_dict()) is token_family
    assert get_family("token_mlp") is token_family
    with pytest.raises(ValueError, match="already registered"):
        register_family(TokenMLPFamily())


def test_unknown_weights_and_names_are_one_line_errors() -> None:
    with pytest.raises(M2ptError, match="cannot recognise the model family"):
        detect_family(TokenMLP(16, 2, 3).state_dict())
    with pytest.raises(M2ptError, match="unknown model family 'nope'"):
        get_family("nope")


def test_the_pipeline_reaches_a_user_family_through_the_registry(token_family: ModelFamily, tmp_path: Path,
                                                                 capsys) -> None:
    ckpt = load_checkpoint(_pathway_checkpoint(tmp_path / "tok.safetensors", token_family))
    assert ckpt.spec.family == "token_mlp" and ckpt.pathway is not None
    assert ckpt.pathway.block_path == "layers"
    unmerged = build_unmerged(ckpt)
    x = torch.randn(5, 4, 8)
    merged = merge_model(unmerged, ckpt.spec)
    assert torch.equal(merged(x), unmerged(x))
    result = export_onnx(ckpt, tmp_path / "tok.onnx", model=None)
    assert result.passed, str(result.verdict)
    assert "PASSED: 3/3 checks passed" in str(result.verdict)


def test_every_built_in_family_setting_has_a_command_line_flag() -> None:
    """cli.common makes its flags from the families' declared options: they must agree."""
    from m2pt_deploy.cli.common import family_flags
    from m2pt_deploy.families import family_names

    flags = {name for name, _ in family_flags()}
    for name in family_names():
        assert {o.name for o in get_family(name).options} <= flags, name


class Stages(nn.Module):
    """A hierarchical model: two stages of two blocks (Swin's layout), at two widths."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.stages = nn.ModuleList(nn.Module() for _ in range(2))
        for stage, width in zip(self.stages, (16, 32), strict=True):
            stage.blocks = nn.Sequential(Block(width), Block(width))  # type: ignore[assignment]
        self.down = nn.Linear(16, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(self.stages[0].blocks(self.embed(x)))
        return self.out(self.stages[1].blocks(x).mean(dim=1))


class StagesFamily(TokenMLPFamily):
    """Says where its blocks are; nothing else in the pipeline knows the layout."""

    name = "stages"
    block_path = "stages"

    def pathway_blocks(self, names: Iterable[str]) -> list[str]:
        found = set(names)
        return [f"stages.{s}.blocks.{i}" for s in range(2) for i in range(2)
                if any(n.startswith(f"stages.{s}.blocks.{i}.") for n in found)]

    def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
        return "stages.0.blocks.0.fc1.weight" in state_dict

    def infer_spec(self, state_dict: Mapping[str, Tensor], **kwargs: Any) -> ModelSpec:
        return ModelSpec("stages", {}, (4, 8), (), (), family=self.name)

    def check_spec(self, spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
        pass

    def build(self, spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
        return Stages().eval()


def test_a_hierarchical_family_says_where_its_pathway_layers_are(tmp_path: Path) -> None:
    family = register_family(StagesFamily())
    try:
        torch.manual_seed(0)
        spec = family.infer_spec({})
        target, aux = family.build(spec), family.build(spec)
        blocks = family.pathway_blocks(n for n, _ in target.named_modules())
        add_pathways(target, aux, layers=family.pathway_layers, blocks=blocks)
        for p in pathway_layers(target).values():
            p.scales[0].data.fill_(0.3)
        info = PathwayInfo(family.pathway_layers, family.block_path, "scalar", ({"modality": "x", "sha256": None},))
        ckpt = load_checkpoint(save_checkpoint(tmp_path / "s.safetensors", pathway_state_dict(target), spec,
                                               pathway=info))
        assert ckpt.pathway is not None and ckpt.pathway.layers == ("fc1", "fc2")
        assert len(pathway_layers(build_unmerged(ckpt))) == 8  # 2 stages x 2 blocks x 2 layers
        x = torch.randn(5, 4, 8)
        assert torch.equal(merge_model(build_unmerged(ckpt), ckpt.spec)(x), target(x))
    finally:
        unregister_family(family.name)


def test_a_more_specific_family_outranks_a_later_generic_one() -> None:
    """Priority first, then the later registration: a user's family at the default priority does
    not take DeiT's checkpoints, and a higher one takes the ViT's."""
    deit_like = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "pos_embed": torch.zeros(1, 6, 8),
                 "dist_token": torch.zeros(1, 1, 8)}
    assert detect_family(deit_like).name == "deit"

    class Greedy(TokenMLPFamily):
        name = "greedy"

        def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
            return True

    register_family(Greedy())
    try:
        assert detect_family(deit_like).name == "deit"
        assert detect_family({"anything": torch.zeros(1)}).name == "greedy"
    finally:
        unregister_family("greedy")
    register_family(Greedy, priority=20)
    try:
        assert detect_family(deit_like).name == "greedy"
    finally:
        unregister_family("greedy")


def test_the_families_import_without_torch() -> None:
    """The CLI makes its flags from every family's options before torch is needed: a family module
    that imports torch (or timm) at its top would make every --help and refusal pay for it."""
    import subprocess
    import sys

    probe = ("import sys, m2pt_deploy.families as f; "
             "print(sorted(f.family_names()), sorted({'torch', 'timm'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout
    assert out.split("] ")[1].strip() == "[]", out
    assert "'deit'" in out, out
