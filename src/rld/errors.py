"""The one exception type for mistakes a user can make.

Library code raises :class:`UserError` (or a subclass) with a message that says what is wrong and
how to fix it; the ``rld`` command prints that message on one line and exits with status 2.
It subclasses :class:`ValueError` so that plain-Python callers can catch it the usual way.
"""


class UserError(ValueError):
    """A mistake in the input (arguments, configuration, files) rather than a bug in rld."""
