"""The TimeCycle model: encoder phi plus the differentiable tracker, run along cycles (SPEC 2-4).

Per clip, with K past frames I_{t-K..t-1} and the target I_t whose patch is tracked:
- direct steps: the patch localised in every past frame I_{t-i}, i = 1..K (one batched step).
  They feed the similarity terms, and their crops start the skip cycles;
- skip cycles: each direct crop localised back in I_t, compared with theta_gt;
- long cycles, n = 1..K: backward patch -> I_{t-1} -> ... -> I_{t-n}, forward again to
  I_{t-1}, then localised in I_t, compared with theta_gt.
The backward chain is computed once: cycle n's backward half is the first n steps of cycle K's,
and its first step is the direct step into I_{t-1}. The public code recomputes it per cycle.
The forward halves run by frame: every cycle still under way steps into I_{t-i} in one batched
step, and the skip and long cycles end in I_t in one more, so K past frames take 2K - 1
sequential tracker steps after the direct one instead of K (K + 1) / 2 + 2 K - 2 (7 instead of
13 at K = 4). On a GPU these small steps are launch-bound; fewer, larger ones are faster. The
queries of a step are stacked along the height, (B, C, m*h, w), against one search map per
clip, so no search map is copied per query.

Both similarity variants score the direct steps: the paper's L_sim^i compares the patch with
the tracker's localisation of the patch in I_{t-i}, and the public code's inlier count scores
the affinity and theta of that same step (model_simple.py: the patch against every past frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timecycle.encoder import build_encoder
from timecycle.losses.config import LossConfig
from timecycle.losses.similarity import feature_similarity_loss, inlier_count_loss
from timecycle.losses.theta import GRID_SIZE, theta_grid_distance
from timecycle.tracker.affinity import AFFINITY_SCALE, Affinity
from timecycle.tracker.localizer import Localizer
from timecycle.tracker.sampler import Sampler, affine_sample, scale_translation

# SPEC 2: the encoder's output stride (a 240 frame gives 30 x 30 features, an 80 patch 10 x 10).
STRIDE = 8


class TimeCycle(nn.Module):
    """Encoder phi and tracker T = (affinity, localizer g, sampler), trained on cycles.

    Args:
        encoder: (B, 3, S, S) -> (B, C, S/8, S/8) un-normalised (post-ReLU) features, e.g.
            `ResNetEncoder(arch, head=True)`. Kept as the attribute `encoder` so that its
            state-dict keys start with "encoder." (the checkpoint loader relies on it).
        frame_size: S, side of the training frames (SPEC 5: 240).
        patch_size: P, side of the target patch (SPEC 5: 80); theta's scale is P / S.
        affinity_scale: multiplier of the cosine affinities (SPEC 3: sqrt(512)).
        align_corners, translation_factor: sampler convention (see tracker/sampler.py).
        theta_grid: points per side of the theta distance grid (SPEC 4: 20).
        query: "patch" encodes the patch on its own (paper, public code); "crop" samples the
            target frame's features under theta_gt instead (see `query_features`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        frame_size: int = 240,
        patch_size: int = 80,
        affinity_scale: float = AFFINITY_SCALE,
        align_corners: bool = False,
        translation_factor: float = 1.0,
        theta_grid: int = GRID_SIZE,
        query: str = "patch",
    ):
        super().__init__()
        if query not in ("patch", "crop"):
            raise ValueError(f"query must be 'patch' or 'crop', got {query!r}")
        self.query = query
        if frame_size % STRIDE or patch_size % STRIDE:
            raise ValueError(
                f"frame_size {frame_size} and patch_size {patch_size} must be multiples of {STRIDE}"
            )
        self.encoder = encoder
        self.frame_size, self.patch_size, self.theta_grid = frame_size, patch_size, theta_grid
        self.search_size = (frame_size // STRIDE,) * 2
        self.query_size = (patch_size // STRIDE,) * 2
        self.affinity = Affinity(affinity_scale)
        self.localizer = Localizer(self.search_size, self.query_size, scale=patch_size / frame_size)
        self.sampler = Sampler(self.query_size, align_corners, translation_factor)

    @classmethod
    def build(
        cls,
        arch: str,
        config: LossConfig | None = None,
        frame_size: int = 240,
        patch_size: int = 80,
        seed: int = 0,
    ) -> TimeCycle:
        """A randomly initialised model with the TimeCycle head and `config`'s tracker switches."""
        config = config or LossConfig()
        return cls(
            build_encoder(arch, head=True, seed=seed),
            frame_size=frame_size,
            patch_size=patch_size,
            align_corners=config.align_corners,
            translation_factor=config.translation_factor,
            theta_grid=config.theta_grid,
            query=config.query,
        )

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze the encoder's parameters, e.g. for the warm-up of SPEC 4.

        Only requires_grad changes; BatchNorm still updates its running statistics in train
        mode, so the engine may also call `model.encoder.eval()` while frozen.
        """
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)

    def locate(
        self, query: torch.Tensor, search: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Localise a query in a search map.

        (N, C, h, w), (N, C, H, W), both unit over C -> theta (N, 2, 3), affinity (N, H*W, h*w).
        """
        aff = self.affinity(query, search)
        return self.localizer(aff), aff

    def track(
        self, query: torch.Tensor, search: torch.Tensor, search_raw: torch.Tensor
    ) -> torch.Tensor:
        """One tracker step: localise, then crop there.

        The crop samples the un-normalised search features `search_raw` (N, C, H, W) and is
        normalised after sampling (SPEC 2-3): (N, C, h, w), unit over C, the next query.
        """
        theta, _ = self.locate(query, search)
        return self.sampler(search_raw, theta)

    def locate_stack(self, queries: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        """Localise m queries per clip in that clip's search map.

        (B, C, m*h, w) queries stacked along the height, (B, C, H, W), both unit over C ->
        theta (B, m, 2, 3). The affinity's columns are (query j, y, x) row-major, so query j
        owns columns j*h*w .. (j+1)*h*w - 1, each a softmax over the search positions.
        """
        b, m = queries.shape[0], queries.shape[2] // self.query_size[0]
        aff = self.affinity(queries, search)  # (B, H*W, m*h*w)
        aff = aff.unflatten(2, (m, -1)).transpose(1, 2).flatten(0, 1)  # (B*m, H*W, h*w)
        return self.localizer(aff).unflatten(0, (b, m))

    def track_stack(
        self, queries: torch.Tensor, search: torch.Tensor, search_raw: torch.Tensor
    ) -> torch.Tensor:
        """`track` for m stacked queries per clip: (B, C, m*h, w), (B, C, H, W) unit and raw ->
        (B, C, m*h, w), the m next queries, unit over C."""
        return self.sampler.stack(search_raw, self.locate_stack(queries, search))

    def encode(
        self, frames: torch.Tensor, patch: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, 3, S, S), (B, 3, P, P) -> (B, T, C, S/8, S/8), (B, C, P/8, P/8), un-normalised.

        All T frames of every clip go through the encoder in one call, so BatchNorm pools its
        statistics over all frames of the clips (SPEC 2). The patch needs a second call: a
        batch holds images of one size, and padding the patch to S x S would change its
        features (the receptive fields and the BatchNorm statistics would see the padding), so
        they would no longer be the features of the patch. The public code even uses three
        calls (past frames, patch, target frame).
        """
        b, t = frames.shape[:2]
        feats = self.encoder(frames.flatten(0, 1)).unflatten(0, (b, t))
        patch_feats = None if patch is None else self.encoder(patch)
        sizes = (feats.shape[-2:], self.query_size if patch is None else patch_feats.shape[-2:])
        if sizes != (self.search_size, self.query_size):
            raise ValueError(
                f"encoder gave {tuple(sizes[0])} and {tuple(sizes[1])} features; expected "
                f"{self.search_size} and {self.query_size} "
                f"(frame {self.frame_size}, patch {self.patch_size})"
            )
        return feats, patch_feats

    def query_features(
        self, target_raw: torch.Tensor, patch_raw: torch.Tensor | None, theta_gt: torch.Tensor
    ) -> torch.Tensor:
        """The tracked query, (B, C, h, w) unit over C.

        "patch": the separately encoded patch (SPEC 4, the paper and the public code). "crop":
        I_t's raw features (B, C, H, W) sampled under theta_gt, exactly where the patch was cut
        (no translation factor: the patch is cut without one). Why offer it: a patch encoded
        alone sees zero padding where the frame had context, so at initialisation its features
        barely match the frames' at theta_gt (measured on real clips with a random ResNet-18:
        a weak inlier count at theta_gt under 2x the uniform level in I_{t-1}, 3.5x even in
        I_t itself, against 9-11x in I_{t-1} for the crop), g gets little to learn from and
        training from scratch stalls; the crop has the context that test-time features have.
        """
        if self.query == "patch":
            return F.normalize(patch_raw, dim=1)
        return F.normalize(affine_sample(target_raw, theta_gt, self.query_size,
                                         self.sampler.align_corners), dim=1)

    def forward(
        self, frames: torch.Tensor, patch: torch.Tensor | None, theta_gt: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run all cycles of a batch of clips.

        Args:
            frames: (B, K+1, 3, S, S), the K past frames (oldest first), then the target I_t.
            patch: (B, 3, P, P), the patch cut out of I_t with theta_gt (`cut_patch`); not
                encoded when `query` is "crop".
            theta_gt: (B, 2, 3).

        Returns a dict. Loss terms are (K,) tensors, each entry a batch mean, which
        `timecycle.losses.total_loss` weights and sums or averages over the K steps:
            "long": theta distance of the long cycle of length n = 1..K;
            "skip": theta distance of the skip cycle through I_{t-i}, i = 1..K;
            "sim_feature": negative feature similarity (mean over the h*w positions) of the
                patch and its crop where the tracker localised it in I_{t-i};
            "sim_inlier": negative weak inlier count of that same localisation.
        Diagnostics, detached, (B, K, 2, 3): "theta_long" (final theta of each long cycle),
        "theta_skip" and "theta_direct" (the patch localised in I_{t-i}).
        """
        if frames.shape[1] < 2:
            raise ValueError(f"need past frames and a target, got frames {tuple(frames.shape)}")
        feats, patch_raw = self.encode(frames, patch if self.query == "patch" else None)
        return self.cycles(feats, patch_raw, theta_gt)

    def cycles(
        self, feats: torch.Tensor, patch_raw: torch.Tensor | None, theta_gt: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Everything after the encoder: (B, K+1, C, H, W) frame features, (B, C, h, w) patch
        features (None for the "crop" query), theta_gt (B, 2, 3) -> `forward`'s dict.

        Apart so that it can be compiled on its own: its shapes are fixed for a run, and it is
        hundreds of small operators where the encoder is a few large ones.
        """
        b, k = feats.shape[0], feats.shape[1] - 1
        # Per-frame views from one unbind each: its backward is one stack, where indexing the
        # tensor at every step would zero-fill a whole (B, K+1, C, H, W) gradient per use (16%
        # of a CPU step of the small preset).
        raw = feats.unbind(1)
        units = F.normalize(feats, dim=2).unbind(1)
        query = self.query_features(raw[k], patch_raw, theta_gt)
        # Past frames most recent first, so that index i - 1 is I_{t-i}: K maps (B, C, H, W).
        past_raw, past, target = raw[k - 1 :: -1], units[k - 1 :: -1], units[k]

        def per_step(x: torch.Tensor) -> torch.Tensor:
            """Repeat (B, ...) over the K steps -> (B*K, ...), ordered (clip, step)."""
            return x.unsqueeze(1).expand(b, k, *x.shape[1:]).flatten(0, 1)

        # Direct steps, all past frames in one batched step.
        queries = per_step(query)
        theta_direct, aff_direct = self.locate(queries, torch.stack(past, 1).flatten(0, 1))
        crop_direct = self.sampler(torch.stack(past_raw, 1).flatten(0, 1), theta_direct)
        sim_feature = feature_similarity_loss(queries, crop_direct, reduction="none")
        # The inlier mask follows the theta the sampler applies, translation factor included.
        sampled = scale_translation(theta_direct, self.sampler.translation_factor)
        sim_inlier = inlier_count_loss(
            aff_direct,
            sampled,
            self.search_size,
            self.query_size,
            align_corners=self.sampler.align_corners,
            reduction="none",
        )

        # The skip cycles (each direct crop) and the long cycles n = 2..K end in I_t together.
        # Cycle n = 1 (I_t -> I_{t-1} -> I_t) is exactly the skip cycle through I_{t-1}.
        direct = _stack(crop_direct.unflatten(0, (b, k)))  # (B, C, K*h, w)
        ends = direct if k < 2 else torch.cat([direct, self._long_cycles(direct, past, past_raw)],
                                              dim=2)
        theta_back = self.locate_stack(ends, target)  # (B, 2K-1, 2, 3)
        distance = theta_grid_distance(
            theta_back.flatten(0, 1), theta_gt.repeat_interleave(2 * k - 1, dim=0),
            self.theta_grid, "none",
        ).view(b, 2 * k - 1)
        theta_skip = theta_back[:, :k]
        theta_long = torch.cat([theta_back[:, :1], theta_back[:, k:]], dim=1)
        skip = distance[:, :k]
        long = torch.cat([distance[:, :1], distance[:, k:]], dim=1)

        def step_means(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, k).mean(dim=0)

        return {
            "long": step_means(long),
            "skip": step_means(skip),
            "sim_feature": step_means(sim_feature),
            "sim_inlier": step_means(sim_inlier),
            "theta_long": theta_long.detach(),
            "theta_skip": theta_skip.detach(),
            "theta_direct": theta_direct.detach().view(b, k, 2, 3),
        }

    def _long_cycles(
        self,
        direct: torch.Tensor,
        past: tuple[torch.Tensor, ...],
        past_raw: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        """The long cycles n = 2..K up to their return to I_{t-1}, K >= 2 -> (B, C, (K-1)*h, w)
        stacked crops in cycle order n = 2..K, unit over C.

        Args:
            direct: (B, C, K*h, w) the patch's crops in I_{t-i}, i = 1..K, stacked.
            past, past_raw: K maps (B, C, H, W), unit and raw features of I_{t-i}, i = 1..K.
        """
        k, h = len(past), self.query_size[0]
        # Backward chain, once: back[j] is the crop in I_{t-1-j}; its first step is the direct
        # step into I_{t-1}.
        back = [direct[:, :, :h]]
        for i in range(1, k):
            back.append(self.track(back[-1], past[i], past_raw[i]))
        # Forward by frame: into past[i] = I_{t-1-i} step the cycles n >= i + 2, cycle
        # n = i + 2 joining from its backward end back[i + 1]. Joining at the front keeps the
        # stack in cycle order n = 2..K.
        crops = back[k - 1]
        for i in range(k - 2, -1, -1):
            if i < k - 2:
                crops = torch.cat([back[i + 1], crops], dim=2)
            crops = self.track_stack(crops, past[i], past_raw[i])
        return crops


def _stack(x: torch.Tensor) -> torch.Tensor:
    """(B, m, C, h, w) -> (B, C, m*h, w): m maps one above the other (`TimeCycle.locate_stack`)."""
    return x.transpose(1, 2).flatten(2, 3)
