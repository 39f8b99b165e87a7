"""Assertions and small set-ups that several test files share."""

from __future__ import annotations


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A user error: exit status 2, one `timecycle: error:` line holding every needle, no
    traceback."""
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("timecycle: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`timecycle ARGV` in this process: (exit status, stdout, stderr)."""
    from timecycle.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny(data, out, **overrides):
    """The engine tests' training config: the `small` preset at a tiny resolution (64 crop,
    56 patch: 8 x 8 search and 7 x 7 query features), batch 2, 4 deterministic steps."""
    from timecycle.engine.config import make_config

    base = dict(data=[str(data)], out=str(out), short_side=64, crop=64, patch=56, batch_size=2,
                steps=4, workers=0, log_every=1, fps=None, progress=False, tensorboard=False,
                deterministic=True)
    return make_config("small", **{**base, **overrides})


def params(run_dir):
    """The model state of a run's last.pt."""
    from timecycle.engine.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "last.pt")["model"]


def cli_config(data, tmp_path, *flags, preset: str = "small"):
    """The config `timecycle train --preset PRESET FLAGS` resolves to."""
    from timecycle.cli import build_parser
    from timecycle.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--data", str(data), "--out",
                                      str(tmp_path / "run"), "--preset", preset, *flags])
    return config_from_args(args)
