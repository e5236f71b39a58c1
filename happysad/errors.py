"""Errors worded for whoever meets them: settings named as they were set, anything else in one line.

A message names settings between backquotes ("`image_size` must be at least 32"). The library says the
setting's name, as `happysad.train(image_size=...)` takes it; the commands say the flag (--image-size).
"""
import re

NAMED = re.compile(r"`(\w+)`")


class SettingError(ValueError):
    """A wrong setting or a need that a setting can meet, in one line."""

    def __str__(self) -> str:
        return NAMED.sub(r"\1", self.args[0])

    def as_flags(self) -> str:
        return NAMED.sub(lambda match: "--" + match.group(1).replace("_", "-"), self.args[0])


def for_command(error: Exception) -> str:
    """The message a command prints: settings as its flags."""
    return error.as_flags() if isinstance(error, SettingError) else str(error)


def first_line(error: Exception) -> str:
    """An exception as one line: its message's first line, or its type when it has none."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__
