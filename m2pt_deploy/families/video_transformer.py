"""VideoMAE V2's fine-tuning ViT as a torch module, with VideoMAE V2's state-dict keys: the Conv3d
tubelet embedding, attention with a bias-free ``qkv`` plus ``q_bias`` / ``v_bias`` (read through
``qkv.weight`` at forward time, so a parametrize pathway applies), a sinusoidal position table
rebuilt from the input size (a non-persistent buffer), mean pooling, ``fc_norm`` and ``head``.
The ``videomae`` family (:mod:`m2pt_deploy.families.videomae`) infers its settings and builds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

__all__ = ["Attention", "Block", "PatchEmbed", "VideoMAEClassifier", "sinusoid_table"]

_LN_EPS = 1e-6


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """The fixed position table, shape ``[1, num_positions, dim]``.

    Angle ``pos / 10000^(2⌊j/2⌋/dim)``; even columns take its sine, odd ones its cosine. Computed
    in float64 and only then cast to float32, as the reference (numpy) does, so that the table is
    the one the checkpoint was trained with, not one rounded differently.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


class PatchEmbed(nn.Module):
    """Tubelets of ``tubelet × patch × patch`` voxels → tokens, flattened in (T′, H′, W′) order."""

    def __init__(self, *, in_chans: int, embed_dim: int, tubelet_size: int, patch_size: int,
                 input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.input_shape = input_shape
        self.num_patches = (input_shape[0] // tubelet_size) * (input_shape[1] // patch_size) * (
            input_shape[2] // patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.input_shape:
            # NOTE the position table is built for one T × H × W; another size would either fail
            # to broadcast or, with the same token count, silently meet the wrong positions.
            raise ValueError(f"input frames x height x width {tuple(x.shape[2:])} vs the model's {self.input_shape}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free ``qkv`` and separate ``q_bias`` / ``v_bias``."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        # NOTE read .weight here, not self.qkv(x): a parametrize pathway lives behind .weight.
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block; ``gamma_1`` / ``gamma_2`` layer scale when ``init_values > 0``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, qkv_bias: bool, init_values: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden)
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values)) if init_values > 0 else None
        self.gamma_2 = nn.Parameter(torch.full((dim,), init_values)) if init_values > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.gamma_1 is None or self.gamma_2 is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class VideoMAEClassifier(nn.Module):
    """VideoMAE V2's fine-tuning ``VisionTransformer`` (no cls token), in eval-only form.

    Input ``(B, in_chans, num_frames, H, W)``. Dropout and drop-path are left out: deployment only
    runs eval mode, where they are identities. ``use_mean_pooling=False`` is the reference's
    ``--use_cls`` variant: a final ``norm`` on the first token, no ``fc_norm``.
    """

    def __init__(
        self,
        *,
        img_size: Sequence[int] | int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_frames: int = 16,
        tubelet_size: int = 2,
        init_values: float = 0.0,
        use_mean_pooling: bool = True,
    ) -> None:
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        self.num_classes, self.num_features, self.embed_dim = num_classes, embed_dim, embed_dim
        self.patch_embed = PatchEmbed(in_chans=in_chans, embed_dim=embed_dim, tubelet_size=tubelet_size,
                                      patch_size=patch_size, input_shape=(num_frames, h, w))
        self.register_buffer("pos_embed", sinusoid_table(self.patch_embed.num_patches, embed_dim), persistent=False)
        # round(): the giant's ratio 48/11 does not survive int(dim * ratio) once inferred as hidden / dim.
        hidden = round(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, hidden, qkv_bias=qkv_bias, init_values=init_values) for _ in range(depth)
        )
        self.norm: nn.Module = nn.Identity() if use_mean_pooling else nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=_LN_EPS) if use_mean_pooling else None
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        if self.fc_norm is not None:
            return self.fc_norm(x.mean(1))
        return self.norm(x[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
