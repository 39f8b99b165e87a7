"""Vision Transformer encoders as DINO builds them, for label propagation (SPEC 6, `dino`).

DINO's video segmentation (facebookresearch/dino eval_video_segmentation.py `extract_feature`)
propagates the patch tokens of the last block after the final LayerNorm
(`get_intermediate_layers(x, n=1)[0][:, 1:]`), laid out on the patch grid: a (H, W) frame gives
(H // p, W // p) features of the embedding's width. The architecture is DINO's
vision_transformer.py (itself timm's): a p x p stride-p patch convolution, a [CLS] token, learned
positions for a 224 x 224 input resized bicubically to the frame's grid, 12 pre-norm blocks
(LayerNorm eps 1e-6, multi-head attention with biased qkv, a GELU MLP of 4x width) and a final
LayerNorm. Parameter names are DINO's, so its checkpoints load key for key
(`timecycle.encoder.vit_weights`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# name -> (embedding width, heads, patch size): DINO's vit_small / vit_base with --patch_size
# 16 or 8 (vision_transformer.py; the four backbones of its published DAVIS results).
VIT_ARCHS = {
    "vit-s16": (384, 6, 16),
    "vit-s8": (384, 6, 8),
    "vit-b16": (768, 12, 16),
    "vit-b8": (768, 12, 8),
}
DEPTH = 12  # vit_small and vit_base: depth=12
MLP_RATIO = 4  # mlp_ratio=4
LN_EPS = 1e-6  # norm_layer=partial(nn.LayerNorm, eps=1e-6)
PRETRAIN_SIZE = 224  # img_size=[224]: the learned positions cover a 224 x 224 input
# interpolate_pos_encoding adds 0.1 to the target grid "to avoid floating point error in the
# interpolation" (facebookresearch/dino#8): the scale factor, not the output size, drives it.
POS_OFFSET = 0.1
INIT_STD = 0.02  # trunc_normal_(std=.02) for positions, [CLS] and every Linear weight


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)  # qkv_bias=True
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(head width)) v, as DINO writes it out, without materialising the
        # (N x N) map per head: 6,240 tokens of a 480 x 832 frame at p = 8 would need ~1 GB.
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, nn.GELU's default as in DINO
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, C, H // p, W // p): one stride-p convolution (`patch_embed.proj`)."""

    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ViTEncoder(nn.Module):
    """Dense encoder phi from a DINO ViT: normalised frames in, patch-token maps out.

    Args:
        arch: one of VIT_ARCHS.

    forward: (B, 3, H, W) -> (B, C, H // p, W // p); C = 384 (ViT-S) or 768 (ViT-B), p the
    patch size (the output stride). Pixels past the last whole patch are not seen, as in DINO.
    The features are not normalised.
    """

    def __init__(self, arch: str = "vit-s16"):
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(VIT_ARCHS)}")
        dim, heads, patch = VIT_ARCHS[arch]
        self.arch = arch
        self.stride = patch
        self.out_channels = dim
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (PRETRAIN_SIZE // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        """DINO's random initialisation (the floor baseline): truncated normals of std 0.02
        (cut at +-2, absolute) for positions, [CLS] and Linear weights, zero biases, LayerNorms
        at identity; the patch convolution keeps PyTorch's default, as DINO leaves it."""
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def positions(self, height: int, width: int) -> torch.Tensor:
        """(1, 1 + h * w, C) position embeddings for an input of (height, width) pixels.

        DINO's interpolate_pos_encoding: unchanged for a square input with the pretraining grid;
        otherwise the 14 x 14 (p = 16) or 28 x 28 (p = 8) grid is resized bicubically by the
        scale factor (grid + 0.1) / side, which lands on h x w cells.
        """
        side = int(math.sqrt(self.pos_embed.shape[1] - 1))
        h, w = height // self.stride, width // self.stride
        if h * w == side * side and height == width:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, mode="bicubic",
                             scale_factor=((h + POS_OFFSET) / side, (w + POS_OFFSET) / side))
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat((self.pos_embed[:, :1], grid), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        grid = self.patch_embed(x)  # (B, C, h, w)
        h, w = grid.shape[-2:]
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), grid.flatten(2).transpose(1, 2)), 1)
        tokens = tokens + self.positions(height, width)
        for block in self.blocks:
            tokens = block(tokens)
        patches = self.norm(tokens)[:, 1:]  # the [CLS] token is dropped (extract_feature)
        return patches.transpose(1, 2).reshape(b, -1, h, w)
