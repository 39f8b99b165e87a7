"""The demo: everything timecycle does, on embedded synthetic video, on a CPU, in minutes.

1. Generate unlabeled training videos and a separate labelled DAVIS-format evaluation set
   (textured objects that move, rotate, scale and occlude each other; exact masks).
2. Train the `small` preset (ResNet-18, reduced resolution) briefly on the training videos.
3. Propagate the evaluation set's first-frame masks with the trained encoder, the package's
   built-in weights (`--weights builtin`, where this install has them), the same architecture
   randomly initialised, the `pixel` colour baseline and `identity`.
4. Score each with the DAVIS J&F and write a report folder (index.html).

With `video` and `mask`, the same runs on a user's clip (a video file or a frame folder, and
a first-frame mask): it is trained on (self-supervised, unless `weights` is given),
propagated and shown; nothing is scored, as there are no later ground-truth masks.

Before the work starts the demo prints an estimate of its duration on this machine: one
training step is timed on random clips (`probe_step_seconds`) and the other stages are
counted in such steps (`STAGE_STEPS`). Each stage then shows a progress bar with the time left.
A failed demo removes what it wrote (`output_folder`).

The package: `config` (DemoConfig and the training config it implies), `clip` (a user's clip
laid out as a one-sequence DAVIS root), `estimate` (the duration estimate), `run` (the stages),
`report` (the index page).
"""

from timecycle.demo.config import DemoConfig
from timecycle.demo.run import run_demo

__all__ = ["DemoConfig", "run_demo"]
