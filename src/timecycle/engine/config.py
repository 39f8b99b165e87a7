"""The training configuration: one typed dataclass, named presets, command-line overrides.

Layers (STYLE 4): a preset (`full` = the paper, `small` = a CPU-sized run), then overrides
(`make_config("small", steps=300)` or the `timecycle train` flags). The resolved config is
written to RUN/config.json and stored in every checkpoint as a plain dict.

Epochs: an epoch is `clips_per_video` clips of every usable video (the paper's VLOG epoch is
one clip per clip of the corpus, SPEC 5, and `ClipDataset` draws the videos of each epoch as
one permutation). `steps` overrides `epochs` when set.

Batch: `batch_size` clips per process and micro-batch; a step reads batch_size x accum x
processes clips (the effective batch, SPEC 5: 32). One GPU: `--batch-size 32`, or
`--batch-size 8 --accum 4` when 32 clips do not fit; 8 GPUs: `--batch-size 4`. BatchNorm
normalises over one micro-batch of one process (batch_size x 5 frames), unless `sync_bn`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from timecycle.data.clips import ClipConfig
from timecycle.data.walk import WalkConfig
from timecycle.errors import UserError
from timecycle.losses import PRESETS as LOSS_PRESETS
from timecycle.losses.config import QUERIES
from timecycle.losses import LossConfig, preset

if TYPE_CHECKING:
    import torch

ARCHS = ("resnet50", "resnet18")
PRECISIONS = ("auto", "fp32", "bf16")
# BatchNorm during training: "batch" normalises with the micro-batch's statistics and tracks
# running ones (SPEC 2, the paper); "frozen" keeps every BatchNorm in eval mode, so it applies
# the running statistics it was built with (mean 0, variance 1: an affine map) and training
# starts from exactly the network a random encoder is at test time (see README, Training).
BATCHNORMS = ("batch", "frozen")
# The training objective: TimeCycle's cycles (SPEC 2-5, the project's subject) or the
# contrastive random walk (SPEC 9).
OBJECTIVES = ("timecycle", "crw")
PADDINGS = ("zeros", "reflect")
# torch.compile of the TimeCycle tracker's cycles (TrainConfig.compile_cycles): "auto" resolves
# to "on" or "off" by device and objective (`resolve_compile`); "graphs" is "on" replayed as
# CUDA graphs (torch.compile's mode="reduce-overhead").
COMPILE_MODES = ("auto", "off", "on", "graphs")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the `full` preset (the paper)."""

    data: list[str] = field(default_factory=list)  # --data folders: one index each, concatenated
    out: str = "runs/timecycle"  # the run folder
    preset: str = "full"  # the preset this config was layered on (a record, not a switch)

    # Model and objective.
    objective: str = "timecycle"  # OBJECTIVES: "timecycle" (SPEC 2-5) or "crw" (SPEC 9)
    arch: str = "resnet50"  # SPEC 2: ResNet-50 up to layer3, stride 8, with the TimeCycle head
    padding: str = "zeros"  # convolution padding: torchvision's; CRW's scratch net: "reflect"
    loss: str = "paper"  # timecycle.losses.PRESETS: `paper` or `code` (SPEC 4)
    query: str = "patch"  # LossConfig.query: "patch" (SPEC 4, paper and code) or "crop"

    # Clips (SPEC 5); the rest of the geometry is ClipConfig's paper defaults.
    short_side: int = 256  # SPEC 5: short side resized to 256
    crop: int = 240  # SPEC 5: 240 x 240 crop -> 30 x 30 features
    patch: int = 80  # SPEC 5: 80 x 80 patch -> 10 x 10 features
    fps: float | None = 12.0  # SPEC 5: the paper sampled VLOG at 12 fps; None = native rate

    # The contrastive random walk (SPEC 9, objective "crw"; the `crw` preset sets videowalk's
    # README values). short_side, crop (= its img_size), patch and fps above apply too.
    walk_len: int = 4  # README: --clip-len 4
    walk_stride: int = 32  # augs.py patch_grid: half a patch
    walk_temperature: float = 0.05  # README: --temp 0.05
    walk_dropout: float = 0.1  # README: --dropout 0.1 (edge dropout)
    # videowalk trains through layer4 at stride 1 (train-time --remove-layers is empty; resnet.py
    # modify) and tests on layer3: layer4 is a head dropped at test. False keeps runs made
    # before this option as they were (their layer3 fed the walk head directly).
    walk_layer4: bool = False

    # Optimisation (SPEC 5).
    batch_size: int = 32  # SPEC 5: 32 (paper; the public code used 36), per process and step
    accum: int = 1  # micro-batches per step: the effective batch is batch_size x accum x GPUs
    lr: float = 2e-4  # SPEC 5: Adam, constant learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # SPEC 5
    weight_decay: float = 0.0  # SPEC 5: none
    grad_clip: float = 10.0  # SPEC 5: gradient norm clipped at 10; 0: not clipped (CRW)
    epochs: float = 30.0  # SPEC 5: 30 epochs
    steps: int | None = None  # optimiser iterations; overrides epochs when set
    clips_per_video: int = 1  # clips of each video per epoch (see the module docstring)
    warmup_steps: int = 0  # SPEC 4: optional first steps with the encoder frozen (g trains)
    batchnorm: str = "batch"  # BATCHNORMS: "batch" (SPEC 2) or "frozen" (eval-mode statistics)

    # Engine.
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX: 1.5-2.3x per
    # step here), else fp32 (engine/runtime.py amp_dtype).
    precision: str = "auto"
    # The faster convolution layout on tensor cores, and for oneDNN on the CPU: on this 2-core
    # machine 1.43x per `full` step (bench/train.py, 2 threads); `small` 10-15% at 1 thread,
    # within the noise at 2 (README, Throughput).
    channels_last: bool = True
    # torch.compile the TimeCycle tracker's cycles alone (COMPILE_MODES; fixed shapes): hundreds
    # of small operators that leave a GPU launch-bound, where the encoder is a few large cuDNN
    # ones that stay eager. Measured on an H200 (bench/train.py, `full`, batch 32, bf16; README,
    # GPU figures): a step at 0.59 of the encoder's forward+backward bound eager (0.102 s, 312
    # clips/s), 0.71 with the cycles compiled ("on": 0.086 s, 371 clips/s), 0.83 replayed as
    # CUDA graphs ("graphs": 0.077 s, 417 clips/s); `small` 0.049 -> 0.027 s compiled. "auto":
    # "on" on CUDA for objective "timecycle", else "off": on the CPU compiling costs 35-50 s
    # and gained nothing measured. About a minute of compiling, once more for the no-grad probe.
    compile_cycles: str = "auto"
    workers: int = 8  # DataLoader processes (decoding is the CPU-heavy part)
    threads: int | None = None  # CPU intra-op threads of the training process; None: torch's
    seed: int = 0  # model initialisation and the clip stream (process r seeds seed + r)
    sync_bn: bool = False  # CUDA, several GPUs: BatchNorm statistics over all GPUs' clips
    # How long a collective waits for a rank before failing. The others wait meanwhile while
    # rank 0 alone indexes the videos new to the run folder (a first run over a large corpus),
    # evaluates and saves.
    dist_timeout_minutes: float = 30.0
    deterministic: bool = False  # deterministic kernels: same seed -> same parameters (CPU)
    save_every: int = 1000  # steps between numbered checkpoints (and at the end)
    save_minutes: float = 10.0  # also refresh last.pt when this long since the last save; 0: off
    # Numbered checkpoints kept besides last.pt (and best.pt); 0: all of them, so that every
    # saved step of a run can be scored afterwards (bench/learning.py --runs).
    keep_last: int = 3
    log_every: int = 10  # steps per metrics.jsonl line
    # Steps between the unrelated-frames probes (engine/step.py probe_losses; also at the last
    # step; 0: never). Each costs two no-grad forwards of the step's batch: on every 5-step log
    # line of the small presets that was 11% of the training time (a probe: 0.54 of a crw-small
    # step, 0.59 of a small one: train_step vs probe_losses, 2 CPU threads); every 50th: ~1%.
    probe_every: int = 50
    max_nonfinite: int = 20  # consecutive non-finite losses that stop the run
    progress: bool = True  # tqdm bar
    # Evaluation during training (engine/evaluation.py): a reduced-size DAVIS proxy of the
    # encoder every `eval_every` steps, logged as eval_jf / eval_j / eval_f; the best is kept
    # as RUN/best.pt. Off unless eval_davis is set.
    eval_davis: str | None = None  # a DAVIS root; its val frames must never be trained on
    eval_sequences: list[str] = field(default_factory=list)  # [] = every val sequence
    eval_every: int = 100  # steps between evaluations (and at the end)
    eval_frames: int = 25  # first frames of each sequence
    eval_size: int = 240  # short side of the frames (the crw protocol's radius scales with it)
    tensorboard: bool = True  # RUN/tb event files

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.data = [str(d) for d in self.data]
        if self.arch not in ARCHS:
            raise UserError(f"unknown --arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if self.query not in QUERIES:
            raise UserError(f"unknown --query {self.query!r}; choose from {', '.join(QUERIES)}")
        if self.loss not in LOSS_PRESETS:
            raise UserError(f"unknown --loss {self.loss!r}; choose from {', '.join(LOSS_PRESETS)}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown --objective {self.objective!r}; choose from "
                            f"{', '.join(OBJECTIVES)}")
        if self.padding not in PADDINGS:
            raise UserError(f"unknown padding {self.padding!r}; choose from {PADDINGS}")
        if self.objective == "crw" and (self.walk_len < 3 or self.walk_stride < 1
                                        or self.walk_temperature <= 0
                                        or not 0 <= self.walk_dropout < 1):
            raise UserError("the walk needs walk_len >= 3, walk_stride >= 1, "
                            "walk_temperature > 0 and 0 <= walk_dropout < 1")
        if isinstance(self.compile_cycles, bool):
            # Configs saved before the choice (RUN/config.json, a checkpoint's, read again by
            # --resume) hold the old flag.
            self.compile_cycles = "on" if self.compile_cycles else "off"
        if self.compile_cycles not in COMPILE_MODES:
            raise UserError(f"unknown --compile-cycles {self.compile_cycles!r}; choose from "
                            f"{', '.join(COMPILE_MODES)}")
        if self.compile_cycles == "graphs" and self.accum > 1:
            # CUDA-graph trees hand the first micro-batch's gradients to .grad as graph
            # outputs, which the next micro-batch's replay overwrites (pytorch/pytorch#169545).
            raise UserError(f"--compile-cycles graphs cannot accumulate micro-batches (--accum "
                            f"{self.accum}): the next micro-batch's CUDA-graph replay "
                            "overwrites the gradients of the one before; use --compile-cycles "
                            "on (the default on CUDA), or --accum 1")
        if self.compile_cycles in ("on", "graphs") and self.objective != "timecycle":
            raise UserError("--compile-cycles compiles the TimeCycle tracker; the walk "
                            f"objective {self.objective!r} has no cycles")
        if self.walk_layer4 and self.objective != "crw":
            raise UserError("--walk-layer4 trains the walk through layer4; the objective "
                            f"{self.objective!r} has no walk (use --objective crw)")
        if self.batchnorm not in BATCHNORMS:
            raise UserError(f"unknown --batchnorm {self.batchnorm!r}; choose from "
                            f"{', '.join(BATCHNORMS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")
        self.eval_sequences = [str(n) for n in self.eval_sequences]
        positive = ("batch_size", "accum", "save_every", "log_every", "max_nonfinite",
                    "clips_per_video", "eval_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be >= 1, got {self.steps}")
        # `not (x > 0)` and isfinite: NaN passes every comparison-based check, and an infinite
        # learning rate trains on NaN losses.
        if self.steps is None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise UserError(f"epochs must be > 0, got {self.epochs}")
        for name in ("lr", "dist_timeout_minutes") + (("fps",) if self.fps is not None else ()):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{name} must be a finite number > 0, got {value}")
        for name in ("workers", "warmup_steps", "save_minutes"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be >= 0, got {value}")
        if self.probe_every < 0:
            raise UserError(f"probe_every must be >= 0 (0: never), got {self.probe_every}")
        if self.keep_last < 0:
            raise UserError(f"keep_last must be >= 0 (0: all), got {self.keep_last}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")
        for size in ("crop", "patch"):
            if getattr(self, size) % 8:
                raise UserError(f"{size} ({getattr(self, size)}) must be a multiple of 8 "
                                "(the encoder's output stride)")
        if self.patch < 56 and self.objective == "timecycle":
            raise UserError(f"patch ({self.patch}) must be >= 56: the localizer needs "
                            "7 x 7 feature cells")
        if not self.patch <= self.crop <= self.short_side:
            raise UserError(f"need patch ({self.patch}) <= crop ({self.crop}) "
                            f"<= short_side ({self.short_side})")

    def loss_config(self) -> LossConfig:
        return preset(self.loss, query=self.query)

    def clip_config(self) -> ClipConfig:
        """Clip geometry; the patch is cut with the loss preset's align_corners (sampler.py)."""
        return ClipConfig(short_side=self.short_side, crop=self.crop, patch=self.patch,
                          fps=self.fps, align_corners=self.loss_config().align_corners)

    def walk_config(self) -> WalkConfig:
        """Walk clips (objective "crw"): `crop` is the side of each frame's crop."""
        return WalkConfig(clip_len=self.walk_len, fps=self.fps, short_side=self.short_side,
                          img_size=self.crop, patch=self.patch, stride=self.walk_stride)

    def clips_per_step(self, world_size: int = 1) -> int:
        """The effective batch: batch_size clips x accum micro-batches x world_size processes."""
        return self.batch_size * self.accum * world_size

    def total_steps(self, n_videos: int, world_size: int = 1, done_steps: int = 0,
                    done_clips: int = 0) -> int:
        """`steps`, or the iterations that read `epochs` x n_videos x clips_per_video clips.

        done_steps / done_clips: what a resumed run has done. Its remaining epochs are counted
        in clips at this run's clips per step, which --resume may change (processes, --accum):
        counted in the old run's steps, more processes would end the run early, fewer would
        read epochs it never asked for.
        """
        if self.steps is not None:
            return self.steps
        clips = self.epochs * n_videos * self.clips_per_video - done_clips
        return max(1, done_steps + math.ceil(max(0, clips) / self.clips_per_step(world_size)))

    def to_dict(self) -> dict:
        """Plain JSON-able dict (also what a checkpoint stores)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**d)


PRESETS: dict[str, TrainConfig] = {
    # The paper (SPEC 2-5): about 107K iterations on VLOG's 114K clips at batch 32.
    "full": TrainConfig(preset="full"),
    # A CPU-sized run with the paper's structure: ResNet-18 (SPEC 2: the common small variant)
    # at half the paper's linear resolution. 112 / 8 = 14 x 14 search features and a 56 / 8 =
    # 7 x 7 query, the smallest query the localizer's two 4x4 convolutions accept; the patch is
    # then 1/2 of the crop instead of 1/3, keeping enough search positions around it. About 4x
    # fewer pixels and ~6x fewer encoder FLOPs per clip than `full` with ResNet-50.
    "small": TrainConfig(
        preset="small",
        arch="resnet18",
        short_side=128,
        crop=112,
        patch=56,
        batch_size=8,  # a few clips/s on a CPU; BatchNorm still pools 8 x 5 frames
        steps=300,  # a few minutes on a laptop CPU
        workers=2,
        save_every=100,
        log_every=5,
    ),
    # The contrastive random walk as videowalk's README trains it (SPEC 9): 4 frames at
    # 8 fps, 256 x 256 frame crops cut into 7 x 7 patches of 64 at stride 32, tau 0.05, edge
    # dropout 0.1, Adam at 1e-4 (default betas, no clipping: code/train.py), batch 20,
    # reflect padding (utils make_encoder "scratch"). Its LR milestones at epochs 20/30/40
    # of Kinetics are not reproduced (a constant rate).
    "crw": TrainConfig(
        preset="crw", objective="crw", arch="resnet18", padding="reflect",
        short_side=256, crop=256, patch=64, fps=8.0, walk_layer4=True,
        lr=1e-4, betas=(0.9, 0.999), grad_clip=0.0, batch_size=20, epochs=25.0,
    ),
    # The walk at half the linear size for a CPU: 128 crops, 7 x 7 patches of 32 at stride 16
    # (~4x fewer encoder FLOPs per clip than `crw`).
    "crw-small": TrainConfig(
        preset="crw-small", objective="crw", arch="resnet18", padding="reflect",
        short_side=128, crop=128, patch=32, walk_stride=16, fps=8.0,
        lr=1e-4, betas=(0.9, 0.999), grad_clip=0.0, batch_size=8, steps=1000,
        workers=2, save_every=100, log_every=5,
    ),
}

# The TimeCycle recipe that beat its random network on this project's CPU (README, "Training
# that learns"): `small` with the public code's loss (xiaolonw/TimeCycle model_simple.py:
# 0.02 L_long + L_inlier + 0.1 L_skip) and CRW's reflect padding, which takes away the
# zero-padding cue of where a cell sits, the cue the cycles otherwise close on. 250 steps
# (2,000 clips of 35 videos): +0.108, +0.072 and +0.082 J&F at full size over each seed's
# random network (seeds 0-2); after 1000 steps only +0.046 and +0.013 remained.
PRESETS["small-reflect"] = replace(PRESETS["small"], preset="small-reflect", loss="code",
                                   padding="reflect", steps=250)

# The same recipe for a 4x longer budget: at the public code's 2e-4 (set for batch 32, here at
# batch 8) the gain fades by step 1000 (seed 1: 0.4211 at full size), at a quarter of it it
# holds: step 1000 scored 0.5153, 0.4945 and 0.5095 (seeds 0-2) at full size, +0.112, +0.087
# and +0.136 over their random networks (README, "Training that learns"). Saves every 250 steps.
PRESETS["small-reflect-long"] = replace(PRESETS["small-reflect"], preset="small-reflect-long",
                                        lr=5e-5, steps=1000, save_every=250)

# Fields a resumed run must share with its checkpoint: they define the model or the clip
# stream. Everything else (steps, device, workers, logging, lr ...) may change on --resume.
FIXED_ON_RESUME = ("objective", "arch", "padding", "loss", "query", "batchnorm", "walk_len",
                   "walk_layer4",
                   "walk_stride", "short_side", "crop", "patch", "fps", "batch_size",
                   "seed", "clips_per_video")


def make_config(preset_name: str = "full", **overrides) -> TrainConfig:
    """The named preset with `overrides` applied (None is a value: `fps=None` = native rate)."""
    if preset_name not in PRESETS:
        raise UserError(f"unknown --preset {preset_name!r}; choose from {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[preset_name], **overrides)


def apply_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    """`config` with `overrides`; `epochs` given without `steps` clears `steps`."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown training option(s): {', '.join(unknown)}")
    if "epochs" in overrides and "steps" not in overrides:
        overrides["steps"] = None
    return replace(config, **overrides)


def resolve_compile(config: TrainConfig, device: torch.device) -> str:
    """What `config.compile_cycles` means on `device`: "off", "on" or "graphs".

    "auto" is "on" on CUDA for objective "timecycle" and "off" elsewhere (the CPU: a slow
    compile that gained nothing measured; the walk: no cycles). "graphs" off CUDA is a
    UserError: CUDA graphs exist only there.
    """
    mode = config.compile_cycles
    if mode == "auto":
        return "on" if device.type == "cuda" and config.objective == "timecycle" else "off"
    if mode == "graphs" and device.type != "cuda":
        raise UserError(f"--compile-cycles graphs replays CUDA graphs, which need a CUDA "
                        f"device, not {device}; use --compile-cycles on (or off)")
    return mode


def check_resumable(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """Names of the fields that changed; a UserError if any of them is FIXED_ON_RESUME."""
    changed = [f.name for f in fields(TrainConfig) if getattr(saved, f.name) != getattr(new, f.name)]
    fixed = [name for name in changed if name in FIXED_ON_RESUME]
    if fixed:
        detail = ", ".join(f"{n} {getattr(saved, n)!r} -> {getattr(new, n)!r}" for n in fixed)
        raise UserError(f"cannot resume with a different {detail}: these define the model or "
                        "the clip stream; start a new run (another --out) instead")
    return changed
