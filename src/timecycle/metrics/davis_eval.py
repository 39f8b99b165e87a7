"""Score a folder of DAVIS-format predictions against a DAVIS root (SPEC 7).

The frames scored are every annotated frame but the first and the last of each sequence; the
objects are the ids of the first frame's annotation. Nothing is cached: every call reads the
predictions again and rewrites the result files, so a result never describes older files.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from timecycle.datasets.davis import DavisRoot, DavisSequence
from timecycle.datasets.io import read_mask
from timecycle.errors import UserError
from timecycle.metrics.davis import count_objects, evaluate_sequence, summarise, write_results
from timecycle.propagation.results import read_provenance, results_folder

# What a scoring writes beside the predictions (the official toolkit's two CSVs, and ours).
RESULT_FILES = ("global_results-val.csv", "per-sequence_results-val.csv", "results-val.json")


def _read_pair(seq: DavisSequence, gt_path: Path, results: Path) -> tuple[np.ndarray, np.ndarray]:
    gt = seq.read_annotation(gt_path)
    pred_path = results / seq.name / gt_path.name
    if not pred_path.is_file():
        raise UserError("prediction missing for an annotated frame", pred_path)
    pred = read_mask(pred_path)
    if pred.shape != gt.shape:
        raise UserError(
            f"prediction is {pred.shape[1]}x{pred.shape[0]}, the annotation {gt_path} "
            f"{gt.shape[1]}x{gt.shape[0]}",
            pred_path,
        )
    return gt, pred


def evaluate_davis(
    root: DavisRoot, results_dir: str | Path, names: list[str], progress: bool = True
) -> tuple[dict, list[dict], dict]:
    """J and F of every sequence in `names`; writes the official CSVs and a JSON record.

    Returns (global row, per-object rows, per-sequence J&F means).
    """
    results = results_folder(results_dir, names, "sequences")
    per_sequence: dict[str, dict[str, np.ndarray]] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name in tqdm(names, desc="evaluate", unit="seq", disable=not progress):
            seq = root.sequence(name)
            annotated = seq.annotated()
            if len(annotated) < 3:
                raise UserError(
                    f"{len(annotated)} annotated frames: at least 3 are needed (the first and "
                    "the last are not scored)",
                    seq.annotation_dir,
                )
            n_objects = count_objects(seq.read_annotation(annotated[0]))
            pairs = list(pool.map(lambda p: _read_pair(seq, p, results), annotated[1:-1]))
            gt = np.stack([g for g, _ in pairs])
            pred = np.stack([p for _, p in pairs])
            try:
                per_sequence[name] = evaluate_sequence(gt, pred, n_objects)
            except UserError as err:
                raise UserError(str(err), results / name) from None
    global_row, rows = summarise(per_sequence)
    provenance = {"davis_root": str(root.root), "year": root.year, "sequences": names}
    recorded = read_provenance(results)
    if recorded is not None:
        provenance["propagation"] = recorded
    write_results(results, global_row, rows, provenance)
    seq_means = {
        n: float((np.nanmean(r["J"], axis=1).mean() + np.nanmean(r["F"], axis=1).mean()) / 2)
        for n, r in per_sequence.items()
    }
    return global_row, rows, seq_means
