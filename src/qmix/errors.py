"""User-facing errors: one clear sentence, exit code 2, never a traceback."""


class QmixError(Exception):
    """A mistake the user can fix (bad config, unknown env, missing package, bad checkpoint).

    The CLI prints ``str(error)`` on one line and exits with code 2. Bugs are not QmixErrors.
    """


def missing_package(package: str, extra: str, what: str) -> QmixError:
    """The error for an optional dependency that is not installed."""
    return QmixError(
        f"{what} needs the '{package}' package, which is not installed: "
        f"run `pip install 'qmix[{extra}]'` (or `pip install {package}`)."
    )
