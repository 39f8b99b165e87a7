"""`timecycle train`."""


def register(sub) -> None:
    pass
