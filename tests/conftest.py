"""Shared fixtures: generated DAVIS roots and the real data in ../shared/data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the plain reference implementations

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """$TIMECYCLE_DATA, default ../shared/data beside the repository."""
    return Path(os.environ.get("TIMECYCLE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "DAVIS").is_dir():
        if os.environ.get("TIMECYCLE_REQUIRE_DATA"):
            pytest.fail(f"real data required (TIMECYCLE_REQUIRE_DATA) but not found at {path}")
        pytest.skip(f"real data not found at {path} (set TIMECYCLE_DATA)")
    return path


@pytest.fixture(scope="session")
def synthetic_davis(tmp_path_factory) -> Path:
    """A small generated DAVIS root: 3 sequences with 1-3 objects (read-only for tests)."""
    from timecycle.datasets.synthetic import write_davis_root

    root = tmp_path_factory.mktemp("synthetic_davis")
    write_davis_root(root, 3, seed=0, n_frames=10, height=64, width=96)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the engine tests: their tiny steps gain little from two, and on
    a shared machine two threads that wait on each other slow down many-fold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """Four generated translating-texture training videos (frame folders), shared read-only."""
    from timecycle.datasets.synthetic import write_training_videos

    root = tmp_path_factory.mktemp("videos")
    write_training_videos(root, n_videos=4, seed=0, n_frames=20, height=72, width=88,
                          kind="translating")
    return root
