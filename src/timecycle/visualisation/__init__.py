"""Pictures of what the features and the propagation do.

- `overlay`: id masks over frames (VOC colours, contours), image grids, animations (WebP, GIF,
  mp4).
- `report`: an HTML report folder (index.html and its animations, copied as a whole) for a
  propagation results folder (DAVIS; JHMDB and VIP through small adapters).
- `texture`: the texture / correspondence figure (a texture carried by feature affinity).
- `curves`: training loss curves from metrics.jsonl, and the training-run page.

Modules are imported on use: a report needs no torch, the texture figure does.
"""
