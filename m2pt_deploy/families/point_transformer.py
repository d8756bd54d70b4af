"""Point-MAE's ``PointTransformer`` classifier as a torch module (the ``pointmae`` family builds it).

The model takes raw points (B, N, 3) and groups them itself: farthest point sampling picks
``num_group`` centres, each centre's ``group_size`` nearest points (minus the centre) go
through a mini-PointNet, and the tokens plus a cls token run through a ViT whose position
embedding (an MLP on the centres) is added before every block. The grouping is written
with plain tensor ops (ArgMax, Min, Gather, TopK) so that an ONNX export takes raw points.

The state-dict keys are Point-MAE's (``encoder.first_conv.0.weight``,
``blocks.blocks.0.attn.qkv.weight``, ``cls_head_finetune.8.bias``, ...).
"""

from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import Tensor, nn

__all__ = ["PointTransformer", "farthest_point_sample", "group_points", "knn_indices"]

# pointnet2_ops' kernel starts its running distances at 1e10 and never picks a point this
# close to the origin (squared norm) after the first centre.
_FPS_INIT = 1e10
_FPS_MIN_SQUARED_NORM = 1e-3
_HEAD_HIDDEN = 256
_POS_HIDDEN = 128


def farthest_point_sample(xyz: Tensor, num_group: int) -> Tensor:
    """Indices (B, num_group) of farthest point sampling, as pointnet2_ops' CUDA kernel picks them.

    The first centre is point 0; each next one is the argmax of every point's squared
    distance to its nearest centre so far. Like the kernel, points with squared norm
    <= 1e-3 are never picked after the first. The loop runs ``num_group - 1`` times in
    Python, so tracing unrolls it into that many ArgMax / Gather / Min steps.

    Ties: ``torch.argmax`` and ONNX ArgMax both take the lowest index among equal maxima;
    the CUDA kernel does the same within a thread but not always across its threads, so
    clouds with exactly tied distances may get other (equally far) centres there.
    """
    eligible = (xyz * xyz).sum(-1) > _FPS_MIN_SQUARED_NORM  # (B, N)
    nearest = torch.full_like(xyz[..., 0], _FPS_INIT)
    index = torch.zeros_like(xyz[:, :1, 0], dtype=torch.long)  # (B, 1): the first centre is point 0
    chosen = [index]
    for _ in range(num_group - 1):
        centre = torch.gather(xyz, 1, index.unsqueeze(-1).expand(-1, -1, 3))  # (B, 1, 3)
        nearest = torch.minimum(nearest, ((xyz - centre) ** 2).sum(-1))
        index = torch.where(eligible, nearest, -1.0).argmax(dim=1, keepdim=True)
        chosen.append(index)
    return torch.cat(chosen, dim=1)


def knn_indices(xyz: Tensor, centres: Tensor, k: int) -> Tensor:
    """Indices (B, G, k) of each centre's ``k`` nearest points by squared distance (TopK, smallest).

    The distance is the sum of squared coordinate differences (no ``|a|² - 2ab + |b|²``
    shortcut, whose cancellation would reorder near neighbours). Ties at the k-th distance
    are broken by torch's and ONNX Runtime's TopK (the lower index first in ORT); the
    encoder max-pools over the group, so the order within a group does not matter.
    """
    dist = ((centres.unsqueeze(2) - xyz.unsqueeze(1)) ** 2).sum(-1)  # (B, G, N)
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices


def group_points(xyz: Tensor, num_group: int, group_size: int) -> tuple[Tensor, Tensor]:
    """``(neighbourhoods (B, G, K, 3) relative to their centres, centres (B, G, 3))``."""
    batch = xyz.shape[0]
    centre_idx = farthest_point_sample(xyz, num_group)
    centres = torch.gather(xyz, 1, centre_idx.unsqueeze(-1).expand(-1, -1, 3))
    idx = knn_indices(xyz, centres, group_size).reshape(batch, num_group * group_size, 1)
    neighbours = torch.gather(xyz, 1, idx.expand(-1, -1, 3)).reshape(batch, num_group, group_size, 3)
    return neighbours - centres.unsqueeze(2), centres


class _Encoder(nn.Module):
    """Point-MAE's mini-PointNet: one token of ``width`` features per group."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, width, 1))

    def forward(self, groups: Tensor) -> Tensor:
        batch, num_group, size, _ = groups.shape
        x = self.first_conv(groups.reshape(batch * num_group, size, 3).transpose(1, 2))  # (BG, 256, K)
        pooled = x.max(dim=2, keepdim=True).values
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, size), x], dim=1))
        return x.max(dim=2).values.reshape(batch, num_group, self.width)


class _Attention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (width // num_heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, width))


class _Block(nn.Module):
    def __init__(self, width: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = _Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Blocks(nn.Module):
    """Point-MAE's ``TransformerEncoder``: the position is added before every block."""

    def __init__(self, width: int, depth: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(width, num_heads, hidden) for _ in range(depth))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x


class PointTransformer(nn.Module):
    """Point-MAE's fine-tuning classifier with its exact state-dict keys (no drop path: eval only).

    Args:
        embed_dim: token width (``trans_dim``; the encoder's output, ``encoder_dims``, is the same).
        depth: number of transformer blocks.
        num_heads: attention heads (6 in every Point-MAE config).
        mlp_ratio: MLP hidden width over ``embed_dim``.
        num_classes: classifier outputs (``cls_dim``).
        num_group: centres picked by farthest point sampling.
        group_size: nearest points per centre.
    """

    def __init__(self, *, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 num_classes: int = 40, num_group: int = 64, group_size: int = 32) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide embed_dim {embed_dim}")
        self.num_group, self.group_size = num_group, group_size
        self.encoder = _Encoder(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        self.pos_embed = nn.Sequential(nn.Linear(3, _POS_HIDDEN), nn.GELU(), nn.Linear(_POS_HIDDEN, embed_dim))
        self.blocks = _Blocks(embed_dim, depth, num_heads, round(embed_dim * mlp_ratio))
        self.norm = nn.LayerNorm(embed_dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(2 * embed_dim, _HEAD_HIDDEN), nn.BatchNorm1d(_HEAD_HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(_HEAD_HIDDEN, _HEAD_HIDDEN), nn.BatchNorm1d(_HEAD_HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(_HEAD_HIDDEN, num_classes),
        )

    def forward(self, points: Tensor) -> Tensor:
        neighbourhoods, centres = group_points(points, self.num_group, self.group_size)
        tokens = self.encoder(neighbourhoods)
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centres)], dim=1)
        x = self.norm(self.blocks(x, pos))
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1))
