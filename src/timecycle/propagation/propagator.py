"""The propagation engine: one video at a time, holding only the context (SPEC 6).

`LabelPropagator` is given frame 0's features and label, then each later frame's features in
order, and returns that frame's soft label. It keeps frame 0 and a ring buffer of the last
`n_context` frames' features and stored labels, so memory does not grow with video length.
Restricted protocols read each context frame only inside its window (see `windows.py`).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import minmax
from timecycle.propagation.windows import (
    DEFAULT_TILE,
    OUTSIDE,
    WindowGeometry,
    make_geometry,
    pad_with_bias,
    slot_index,
    tile_queries,
    to_strips,
    untile,
)

# Transient working set of the unrestricted products, in bytes: large enough for efficient
# matrix products, far below a frame's full affinity to all its context.
CHUNK_BYTES = 96 * 2**20
# exp(x) is taken without subtracting a maximum while x + log(terms summed) stays below this:
# float32 overflows at e^88.7, and the margin leaves the sums far from it.
EXP_SAFE = 80.0
# The first failed capture's message (None: none failed). A failed capture can leave CUDA's
# allocator routing to the dead graph's pool, so the process captures no more graphs after it.
_capture_error: str | None = None


def cuda_graph_error() -> str | None:
    """Why this process propagates without CUDA graphs (a capture failed), or None."""
    return _capture_error


class LabelPropagator:
    """Propagate a label through a video, one frame at a time.

    Args:
        protocol: the preset (SPEC 6).
        feat0: (C, h, w) frame 0's features (normalised here over C).
        label0: (K, h, w) frame 0's label at feature resolution.
        tile: query tile side for restricted windows.
        cuda_graph: on CUDA, replay the restricted windows' step as a CUDA graph (the same
            kernels; False runs it eagerly, as on the CPU).
    """

    def __init__(self, protocol: Protocol, feat0: torch.Tensor, label0: torch.Tensor,
                 tile: int = DEFAULT_TILE, cuda_graph: bool = True):
        self.p = protocol
        c, h, w = feat0.shape
        k = label0.shape[0]
        feat0 = F.normalize(feat0.float(), dim=0)
        label0 = label0.float()
        self.geo: WindowGeometry | None = None
        if protocol.restrict != "none":
            self.geo = make_geometry(h, w, protocol.radius, protocol.restrict, tile, feat0.device)
        # CRW reads frame 0 without restriction (its "long memory"): it is kept apart, flat.
        # Otherwise frame 0 sits in slot 0 and is read like the other context frames.
        self.first_apart = self.geo is not None and not protocol.restrict_first
        self.feat0 = feat0.flatten(1).T.contiguous()  # (hw, C): a row per key, like label0
        self.label0 = label0.flatten(1).T.contiguous()  # (hw, K)
        self.n0 = 0 if self.first_apart else 1
        slots = self.n0 + protocol.n_context
        if self.geo is None:
            # A row per position, as the products and the label gathers read them.
            self.feats = feat0.new_zeros(slots, h * w, c)
            self.labels = label0.new_zeros(slots, h * w, k)
        else:
            g = self.geo
            hp = g.n_ty * g.tile + 2 * g.half
            # Context frames interleaved row by row (see windows.py); empty slots get the
            # OUTSIDE bias so they never enter a top-k before they are filled.
            self.feats = feat0.new_zeros(g.n_tx, hp, slots, g.win, c + 1)
            self.feats[..., c] = OUTSIDE
            self.labels = label0.new_zeros(g.n_tx, hp, slots, g.win, k)
            self.slot_index = slot_index(g, slots)
        self.count = 0  # previous frames stored so far (at most n_context)
        self.next_slot = 0
        # On CUDA the windowed step is replayed as one CUDA graph (see `_replay`).
        self.graph = (cuda_graph and self.geo is not None and feat0.is_cuda
                      and _capture_error is None)
        self._replayed: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None
        # The windowed step's large intermediates (the allowed keys' affinities; with batched
        # products also the products), reused from frame to frame (`reuse`) on the CPU only:
        # CUDA's caching allocator already recycles blocks, and a CUDA graph keeps its own
        # pool, so there nothing is gained and a capture stays as it was measured.
        self.scratch: dict[str, torch.Tensor] | None = None if feat0.is_cuda else {}
        if self.n0:
            self._write(0, feat0, label0)
        if protocol.pad_context:
            # Before n_context frames exist, the missing previous frames are copies of frame 0.
            for _ in range(protocol.n_context):
                self._push(feat0, label0)
            if protocol.self_propagate:
                # TimeCycle's loader puts its 8 copies of frame 0 before the whole video, frame
                # 0 included, so frame 0 is the first target: its own stored soft label
                # replaces the oldest copy, and frames 1..7 read it as their newest previous one.
                with torch.no_grad():
                    self._push(feat0, self._store(self._predict(feat0)))

    def _write(self, slot: int, feat: torch.Tensor, label: torch.Tensor) -> None:
        if self.geo is None:
            self.feats[slot], self.labels[slot] = feat.flatten(1).T, label.flatten(1).T
            return
        self.feats[:, :, slot] = to_strips(pad_with_bias(feat, self.geo), self.geo)
        self.labels[:, :, slot] = to_strips(F.pad(label, self.geo.pad()), self.geo)

    def _push(self, feat: torch.Tensor, label: torch.Tensor) -> None:
        self._write(self.n0 + self.next_slot, feat, label)
        self.next_slot = (self.next_slot + 1) % self.p.n_context
        self.count = min(self.count + 1, self.p.n_context)

    @torch.no_grad()
    def step(self, feat: torch.Tensor) -> torch.Tensor:
        """(C, h, w) features of the next frame -> (K, h, w) soft label (then stored).

        The label returned is the prediction, or with `output_label="stored"` the label stored
        as context (TimeCycle's test_davis.py makes its output from the normalised array).
        """
        feat = F.normalize(feat.float(), dim=0)
        pred = self._predict(feat)
        stored = self._store(pred)
        self._push(feat, stored)
        return stored if self.p.output_label == "stored" else pred

    def _store(self, pred: torch.Tensor) -> torch.Tensor:
        """The context label kept for a prediction (K, h, w); a constant channel (a label lost
        everywhere) becomes 0 under min-max (see `minmax`)."""
        return minmax(pred, constant="zero") if self.p.store == "minmax" else pred

    def _predict(self, feat: torch.Tensor) -> torch.Tensor:
        """(C, h, w) L2-normalised features -> (K, h, w) soft label from the current context."""
        n = self.n0 + self.count
        p = self.p
        if p.weighting == "per_frame_topk":
            return per_frame_topk(feat, self.feats[:n], self.labels[:n], p.topk, p.temperature)
        if self.geo is None:
            return dense_joint_topk(feat, self.feats[:n], self.labels[:n], p.topk, p.temperature)
        return self._replay(feat) if self.graph else self._windowed(feat)

    def _windowed(self, feat: torch.Tensor) -> torch.Tensor:
        first = (self.feat0, self.label0) if self.first_apart else None
        return windowed_joint_topk(feat, self.feats, self.labels, self.geo, self.slot_index,
                                   self.p.topk, self.p.temperature, first, self.scratch)

    def _replay(self, feat: torch.Tensor) -> torch.Tensor:
        """`_windowed` as a CUDA graph, captured on the first call. Why: the windowed step is
        ~12 operators per tile row (~130 a frame at 480p), each launched from Python, which
        took longer than the GPU's work. Its shapes and every tensor it reads are fixed for the
        video: the context is written in place and empty slots are read too (with the OUTSIDE
        bias), so one capture serves every frame, with the same kernels as eager mode.
        """
        global _capture_error
        if self._replayed is None:
            query = feat.clone()
            try:
                self._replayed = (*capture(lambda: self._windowed(query), query.device),
                                 query)
            except RuntimeError as err:  # a CUDA build or driver that cannot capture this
                _capture_error = str(err).splitlines()[0] if str(err) else type(err).__name__
                warnings.warn(f"propagation runs without CUDA graphs from here on: capturing "
                              f"one failed ({_capture_error})", stacklevel=2)
                self.graph = False
                return self._windowed(feat)
        graph, out, query = self._replayed
        query.copy_(feat)
        with torch.cuda.device(query.device):  # replayed on that device's current stream
            graph.replay()
        # The next replay overwrites `out`; the caller may hold the label longer than that.
        return out.clone()


def capture(fn, device: torch.device) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture `fn()` (CUDA work only, no host synchronisation, on `device`) as a CUDA graph:
    returns the graph and its output tensor, which each `graph.replay()` rewrites."""
    with torch.cuda.device(device):  # the streams and the capture are that device's
        caller = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(caller)
        with torch.cuda.stream(side):  # warm-up off the default stream: cuBLAS workspaces
            fn()
        caller.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the writer threads may synchronise on their own copies meanwhile.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = fn()
        finally:
            # When a capture fails, torch.cuda.graph's exit raises in capture_end before it
            # restores the stream: the caller's stream would stay the dead capture's.
            torch.cuda.set_stream(caller)
    return graph, out


def reuse(scratch: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...],
          like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `shape` like `like`, kept in `scratch` under `name` for the
    next call. Why: a fresh CPU buffer of tens of MB is mapped and page-faulted anew by the
    allocator on every call; written in place, the same pages are reused (None: allocate)."""
    buf = None if scratch is None else scratch.get(name)
    if buf is None or buf.shape != shape:
        buf = like.new_empty(shape)
        if scratch is not None:
            scratch[name] = buf
    return buf


def onednn_products(t: torch.Tensor) -> bool:
    """Whether affinity products (the windowed step's, `query_key_dots`) run as oneDNN 1x1
    convolutions (`conv_dots`): on the CPU, when PyTorch has oneDNN. Why: PyTorch's CPU
    matrix products go to MKL, which on this project's AMD machines ran at ~200 GFLOP/s where
    oneDNN's convolutions reached ~450 on the same 2 cores; the step ran 0.53 -> 0.33 s on
    car-shadow's shapes. CUDA keeps cuBLAS (and its CUDA graph)."""
    return t.device.type == "cpu" and torch.backends.mkldnn.is_available()


def conv_dots(image: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(P, C) x (F, C) -> (F, P) dot products as a 1x1 convolution of a P x 1 image with C
    channels (channels last: `image` is read in place, so it must be contiguous) by F filters.
    The result is a view whose memory is (P, F): `.T` of it is contiguous.

    oneDNN reorders the filters on every call, so `filters` should be the smaller operand
    when the product is repeated (the windowed keys are the image, the 36 queries the filters).
    """
    p, c = image.shape
    x = image.view(1, p, 1, c).permute(0, 3, 1, 2)  # (1, C, P, 1), channels last
    return F.conv2d(x, filters.reshape(filters.shape[0], c, 1, 1))[0, :, :, 0]


def query_key_dots(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(Q, C) queries x (N, C) keys -> (Q, N) dot products, contiguous: on the CPU a oneDNN
    convolution with the queries as the image (`onednn_products`), else a matrix product."""
    if onednn_products(queries):
        return conv_dots(queries.contiguous(), keys).T
    return queries @ keys.T


def per_frame_topk(
    q: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, k: int, temperature: float
) -> torch.Tensor:
    """TimeCycle weights: per context frame, a softmax over its positions; each frame's top-k
    raw softmax values weight its labels; the frames' sums are averaged.

    q: (C, h, w) unit over C; feats: (F, h*w, C) unit rows; labels: (F, h*w, K) -> (K, h, w).

    The top-k of a softmax are its top-k exp(affinity) over their frame's sum, so the softmax
    is never written out. With unit features |affinity / T| <= 1 / T, so where N e^(1/T) stays
    far inside float32 (TimeCycle's 1/T = sqrt(512) = 22.6: e^22.6 = 6.5e9) the exponentials
    are taken as they are, in place: no max pass and no subtraction over the F*N*N values
    (logsumexp's), which took a quarter of the step. Otherwise: exp(top-k - logsumexp).
    """
    c, h, w = q.shape
    n, hw, kk = feats.shape[0], h * w, labels.shape[2]
    keys = feats.reshape(n * hw, c)  # a view
    queries = q.reshape(c, hw).T / temperature  # (N, C): the scale once, not on F*N*N values
    direct = 1 / temperature + math.log(hw) < EXP_SAFE
    out = q.new_zeros(hw, kk)
    step = max(1, CHUNK_BYTES // (4 * n * hw))
    frames = torch.arange(n, device=q.device)[None, :, None]
    for s in range(0, hw, step):
        aff = query_key_dots(queries[s : s + step], keys).view(-1, n, hw)  # (q, F, N)
        if direct:
            e = aff.exp_()
            vals, idx = e.topk(k, dim=-1)  # (q, F, k)
            weights = vals / e.sum(dim=-1, keepdim=True)
        else:
            vals, idx = aff.topk(k, dim=-1)
            weights = (vals - aff.logsumexp(dim=-1, keepdim=True)).exp()
        cand = labels[frames, idx]  # (q, F, k, K)
        out[s : s + step] = (cand * weights[..., None]).sum(dim=(1, 2)) / n
    return out.T.reshape(kk, h, w)


def dense_joint_topk(
    q: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, k: int, temperature: float
) -> torch.Tensor:
    """Unrestricted joint top-k over all context positions. Shapes as `per_frame_topk`."""
    c, h, w = q.shape
    n, hw, kk = feats.shape[0], h * w, labels.shape[2]
    keys = feats.reshape(n * hw, c)
    lab = labels.reshape(n * hw, kk)
    qf = q.reshape(c, hw).T
    out = q.new_zeros(hw, kk)
    step = max(1, CHUNK_BYTES // (4 * n * hw))
    for s in range(0, hw, step):
        vals, idx = query_key_dots(qf[s : s + step], keys).topk(k, dim=-1)  # (q, k)
        weights = (vals / temperature).softmax(dim=-1)
        out[s : s + step] = (lab[idx] * weights[..., None]).sum(1)
    return out.T.reshape(kk, h, w)


def windowed_joint_topk(
    q: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    geo: WindowGeometry,
    index: torch.Tensor,
    k: int,
    temperature: float,
    first: tuple[torch.Tensor, torch.Tensor] | None = None,
    scratch: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Joint top-k over the restricted windows of the context frames (and an unrestricted one).

    q: (C, h, w) normalised query; feats: (n_tx, Hp, S, win, C+1) and labels:
    (n_tx, Hp, S, win, K) the S context slots as interleaved strips (windows.py); index:
    (t*t, S*V) `slot_index`; first: optional ((h*w, C), (h*w, K)) frame read without
    restriction (CRW's frame 0); scratch: buffers kept between calls (`reuse`). Returns
    (K, h, w).

    On the CPU (`onednn_products`) each strip's product is one oneDNN convolution whose
    allowed keys are gathered straight from its output; elsewhere a tile row is one batched
    product into a buffer, then one gather.
    """
    c, h, w = q.shape
    n_tx, _, slots, win, c1 = feats.shape
    kk = labels.shape[-1]
    t2 = geo.tile * geo.tile
    qt = tile_queries(torch.cat([q, q.new_ones(1, h, w)]), geo)  # (n_ty, n_tx, t*t, C+1)
    out = q.new_empty(geo.n_ty, n_tx, t2, kk)
    index = index[None].expand(n_tx, *index.shape)
    tx = torch.arange(n_tx, device=q.device)[:, None, None]
    onednn = onednn_products(q)
    allowed = reuse(scratch, "allowed", tuple(index.shape), q)
    if not onednn:
        aff = reuse(scratch, "aff", (n_tx, t2, win * slots * win), q)
        if first is not None:
            f_aff = reuse(scratch, "first", (n_tx, t2, first[0].shape[0]), q)
    for ty in range(geo.n_ty):
        r0 = ty * geo.tile
        # A tile row's keys in every context frame: one contiguous block per strip (a view).
        keys = feats[:, r0 : r0 + win].reshape(n_tx, win * slots * win, c1)
        labs = labels[:, r0 : r0 + win].reshape(n_tx, win * slots * win, kk)
        qrow = qt[ty]  # (n_tx, t*t, C+1)
        if onednn:
            for s in range(n_tx):  # (t*t, win*S*win) products -> allowed keys
                torch.gather(conv_dots(keys[s], qrow[s]), 1, index[s], out=allowed[s])
        else:
            torch.bmm(qrow, keys.transpose(1, 2), out=aff)  # (n_tx, t*t, win*S*win)
            torch.gather(aff, 2, index, out=allowed)
        vals, sel = allowed.topk(k, dim=-1)
        cand = labs[tx, torch.gather(index, 2, sel)]  # (n_tx, t*t, k, K)
        if first is not None:
            if onednn:
                f_aff = query_key_dots(qrow[..., :c].reshape(-1, c), first[0]).view(n_tx, t2, -1)
            else:
                torch.matmul(qrow[..., :c], first[0].T, out=f_aff)
            f_vals, f_idx = f_aff.topk(k, dim=-1)
            vals = torch.cat([f_vals, vals], dim=-1)
            cand = torch.cat([first[1][f_idx], cand], dim=2)
            vals, sel = vals.topk(k, dim=-1)
            cand = torch.gather(cand, 2, sel[..., None].expand(*sel.shape, kk))
        weights = (vals / temperature).softmax(dim=-1)
        out[ty] = (cand * weights[..., None]).sum(2)
    return untile(out, geo)
