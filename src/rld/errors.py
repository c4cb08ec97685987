"""The exceptions the ``rld`` command turns into an exit status.

Library code raises :class:`UserError` (or a subclass) with a message that says what is wrong and
how to fix it; the ``rld`` command prints that message on one line and exits with status 2.
It subclasses :class:`ValueError` so that plain-Python callers can catch it the usual way.

Two ends of a run are not mistakes in the input, and have statuses of their own:
:class:`DivergedError` (status 3) and :class:`Interrupted` (128 + the signal's number: 143 for
SIGTERM, 130 for SIGINT).
"""


class UserError(ValueError):
    """A mistake in the input (arguments, configuration, files) rather than a bug in rld."""


class RunFolderLocked(UserError):
    """Another process trains the run in this folder (it holds the folder's lock); exit status 2.

    ``holder``: what the lock file says of it (``pid … on host …, since …``). A launcher that
    spreads runs over machines can take it to mean "being trained elsewhere" and skip the run.
    """

    def __init__(self, message: str, *, holder: str):
        super().__init__(message)
        self.holder = holder


class DivergedError(RuntimeError):
    """Training stopped because its loss (or the weights) became non-finite (``train.stop_on_nonfinite``).

    The run folder keeps its last finite checkpoint; ``metrics.csv`` records the failing epoch.
    ``epoch``: the epoch that diverged; ``parts``: what went non-finite (``train_loss``, ``loss_ce``,
    …, ``weights``). The ``rld`` command exits with status 3.
    """

    exit_status = 3

    def __init__(self, message: str, *, epoch: int, parts: list[str]):
        super().__init__(message)
        self.epoch, self.parts = epoch, list(parts)


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGTERM or SIGINT at a step boundary, after saving its exact position.

    A :class:`KeyboardInterrupt` (code that handles Ctrl-C handles it too). ``signum``: the signal;
    the ``rld`` command exits with status ``128 + signum`` (143 for SIGTERM, 130 for SIGINT), as a
    process killed by that signal would report.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def first_line(err: BaseException, limit: int = 160) -> str:
    """Why ``err`` was raised, in one line for a message: the first line of its text (at most ``limit``
    characters), or the name of its type when it has no text (``SyntaxError()`` reads "None", which is
    no reason)."""
    text = str(err).strip() if err.args else ""
    return text.splitlines()[0][:limit] if text else type(err).__name__
