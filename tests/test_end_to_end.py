"""One real-size case: ViT-B/16, reference-format checkpoint, through the installed CLI."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.model.pathway import add_pathways, pathway_layers
from tests.tiny import reference_state_dict


@pytest.mark.slow
def test_vit_base_reference_checkpoint_exports_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    target = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100).eval()
    aux = timm.create_model("vit_base_patch16_224", pretrained=False).state_dict()  # e.g. an audio ViT
    add_pathways(target, aux)
    for p in pathway_layers(target).values():
        p.scales[0].data.uniform_(-0.3, 0.3)
    ckpt = tmp_path / "m2pt_vitb.pth"
    torch.save({"model": reference_state_dict(target), "epoch": 99}, ckpt)
    out = tmp_path / "vitb.onnx"

    proc = subprocess.run(
        [sys.executable, "-c", "from m2pt_deploy.cli.export import entrypoint; entrypoint()",
         str(ckpt), "-o", str(out), "--no-verify"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = build_unmerged(load_checkpoint(ckpt))(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})[0]
    assert got.shape == (2, 100)
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    ops = collections.Counter(n.op_type for n in onnx.load(out, load_external_data=False).graph.node)
    assert ops["MatMul"] + ops["Gemm"] == 12 * 6 + 1
