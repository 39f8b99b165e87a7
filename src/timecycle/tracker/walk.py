"""The contrastive random walk (SPEC 9; Jabri, Owens, Efros, NeurIPS 2020; ajabri/videowalk
code/model.py `CRW`), the second objective trained by the same engine.

Nodes are patches encoded on their own: encoder phi (the same `ResNetEncoder` that propagation
uses), spatial mean, a linear head to 128 (`selfsim_fc`, --head-depth 0), L2 normalisation.
Between consecutive frames, A_t = x_t^T x_{t+1}; a transition is a row softmax of A_t / tau,
the way back a row softmax of A_t^T / tau. A palindrome of length k walks k steps forward and
k back; its loss is the cross-entropy of arriving where it started.

What propagation keeps is `encoder` alone (its dense stride-8 map, layer3); the head only
shapes training. videowalk trains through layer4 too (train-time --remove-layers is empty;
resnet.py `modify` sets layer3's and layer4's strides to 1) and tests on layer3: layer4 is then
part of the head, and layer3 is never asked to be the walk's embedding itself (the features
before a dropped head keep more than the loss needs, as SimCLR's projection head found).
`layer4=True` does that (preset `crw`); without it layer3 feeds the linear head directly, a
~3.5x cheaper CPU step (preset `crw-small`, and every run made before the option).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timecycle.encoder import build_encoder
from timecycle.encoder.blocks import ResNetTrunk
from timecycle.encoder.resnet import set_padding_mode
from timecycle.losses.walk import walk_cross_entropy

# model.py EPS: log(A + EPS) keeps the cross-entropy finite where a walk put no mass.
EPS = 1e-20
# model.py stoch_mat: a dropped edge's affinity (its softmax weight underflows to 0).
DROPPED = -1e20


class ContrastiveWalk(nn.Module):
    """Encoder phi, the node head and the palindrome walks of a batch of clips.

    Args:
        encoder: (N, 3, P, P) -> (N, C, P/8, P/8), e.g. `ResNetEncoder("resnet18")`. Kept as
            the attribute `encoder` so its state-dict keys start with "encoder." (the
            checkpoint loader relies on it).
        embed_dim: node embedding size (model.py make_head: 128).
        temperature: tau of the transitions (README command: --temp 0.05).
        edge_dropout: probability of dropping each affinity entry (README: --dropout 0.1).
        layer4: optional (N, C, h, w) -> (N, C4, h, w) module between the encoder and the
            head, trained and dropped at test (videowalk's stride-1 layer4); see `build`.
    """

    def __init__(self, encoder: nn.Module, embed_dim: int = 128, temperature: float = 0.05,
                 edge_dropout: float = 0.1, layer4: nn.Module | None = None):
        super().__init__()
        if temperature <= 0 or not 0 <= edge_dropout < 1:
            raise ValueError(f"need temperature > 0 and 0 <= edge_dropout < 1, got "
                             f"{temperature}, {edge_dropout}")
        self.encoder = encoder
        self.layer4 = layer4
        channels = encoder.out_channels
        if layer4 is not None:  # a block's last BatchNorm (bn2 / bn3) has its output channels
            channels = [m for m in layer4.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        self.walk_head = nn.Linear(channels, embed_dim)
        self.temperature, self.edge_dropout = temperature, edge_dropout

    @classmethod
    def build(cls, arch: str = "resnet18", seed: int = 0, padding: str = "reflect",
              layer4: bool = False, **kwargs) -> ContrastiveWalk:
        """A randomly initialised walker; `padding` "reflect" as videowalk's scratch ResNet.

        With `layer4`, the trunk's own layer4 (the one the encoder drops: the same seed draws
        the same network, as videowalk's one ResNet) at stride 1 with the same padding.
        """
        encoder = build_encoder(arch, head=False, seed=seed)
        encoder.set_padding_mode(padding)
        extra = None
        if layer4:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                extra = ResNetTrunk(arch).layer4
            for m in extra.modules():
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
            set_padding_mode(extra, padding)
        return cls(encoder, layer4=extra, **kwargs)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze the encoder's parameters (the engine's warm-up)."""
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, T, N, 3, P, P) -> (B, T, N, D) node embeddings, unit over D (pixels_to_nodes)."""
        b, t, n = patches.shape[:3]
        maps = self.encoder(patches.flatten(0, 2))  # one call: BatchNorm pools all patches
        if self.layer4 is not None:
            maps = self.layer4(maps)
        feats = self.walk_head(maps.mean(dim=(-2, -1)))
        return F.normalize(feats, dim=-1).view(b, t, n, -1)

    def transitions(self, nodes: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(B, T, N, D) -> forward [(B, N, N)] * (T-1) and backward [(B, N, N)] * (T-1).

        forward[t][b, i, j]: probability of stepping from node i of frame t to node j of frame
        t+1; backward[t] from frame t+1 back to frame t. In training, edge dropout sets entries
        to -1e20 before the softmax (model.py stoch_mat). model.py drops in place on a view of
        the affinity, so the way back also loses the edges the way forward lost, then its own:
        kept here, as it makes a dropped edge unusable in both directions.
        """
        aff = torch.einsum("btnc,btmc->btnm", nodes[:, :-1], nodes[:, 1:]) / self.temperature
        forward, backward = [], []
        for t in range(aff.shape[1]):
            a = aff[:, t]
            if self.training and self.edge_dropout > 0:
                a = a.masked_fill(torch.rand_like(a) < self.edge_dropout, DROPPED)
            forward.append(F.softmax(a, dim=-1))
            back = a.transpose(-1, -2)
            if self.training and self.edge_dropout > 0:
                back = back.masked_fill(torch.rand_like(back) < self.edge_dropout, DROPPED)
            backward.append(F.softmax(back, dim=-1))
        return forward, backward

    def walks(self, forward: list[torch.Tensor], backward: list[torch.Tensor]
              ) -> list[torch.Tensor]:
        """Palindromes of length k = 2..T-1: A_1 ... A_k B_k ... B_1, each (B, N, N).

        model.py: `for i in range(1, len(A12s))`, g = A12s[:i+1] + A21s[:i+1][::-1], multiplied
        left to right (the "r" walks; --flip is off in the README command).
        """
        out = []
        for k in range(2, len(forward) + 1):
            steps = forward[:k] + backward[:k][::-1]
            walk = steps[0]
            for step in steps[1:]:
                walk = walk @ step
            out.append(walk)
        return out

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """patches (B, T, N, 3, P, P) -> {"xent": (T-2,), "acc": (T-2,)}: per palindrome
        length 2..T-1, the cross-entropy of returning to the start node (mean over clips and
        nodes) and the share of nodes whose most likely end is their start (detached). The
        loss is the mean of "xent" over the lengths (model.py: sum(xents) / len)."""
        if patches.shape[1] < 3:
            raise ValueError(f"need >= 3 frames per clip, got patches {tuple(patches.shape)}")
        forward, backward = self.transitions(self.embed(patches))
        terms = [walk_cross_entropy(w, EPS) for w in self.walks(forward, backward)]
        return {"xent": torch.stack([x for x, _ in terms]),
                "acc": torch.stack([a for _, a in terms]).detach()}
