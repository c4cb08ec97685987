"""rld.errors: the one-line reason of an exception that rld's messages quote."""

from __future__ import annotations

import pytest

from rld.errors import first_line


@pytest.mark.parametrize(
    "err, limit, reason",
    [
        (OSError("  broken data stream\nwhile reading"), 160, "broken data stream"),
        (ValueError("x" * 200), 160, "x" * 160),
        (ValueError("x" * 200), 120, "x" * 120),
        (KeyError(), 160, "KeyError"),
        (OSError("  \n "), 160, "OSError"),
        (SyntaxError(), 160, "SyntaxError"),  # str() of it is "None"
        (SyntaxError("not a PNG file"), 160, "not a PNG file"),
        (RuntimeError("short"), 3, "sho"),
    ],
)
def test_the_reason_is_the_first_line_of_the_text_or_the_type(err, limit, reason):
    assert first_line(err, limit) == reason


def test_the_reason_is_160_characters_at_most_by_default():
    assert first_line(ValueError("y" * 161)) == "y" * 160
