"""`timecycle demo`."""


def register(sub) -> None:
    pass
