"""Errors in what a user gave: reported as one short line, not a traceback."""

from __future__ import annotations

from typing import Any


class InputError(Exception):
    """Something the user can fix: a config value, a data file, a store address."""


class ConfigValueError(InputError, ValueError):
    """A config value outside what is allowed; the message names the key, value and range."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class DataError(InputError):
    """A data file that is missing, unreadable, malformed or not the expected content."""


class TrackingUnavailable(InputError):
    """The tracking server stayed unreachable past `tracking.outage_limit_seconds`."""


class RecorderGone(InputError):
    """The recorder process of a single run ended while the run was open (killed, or out of
    memory): the run stays open, and `resume=` finishes it from its last checkpoint."""


class DiskFull(InputError):
    """A disk the run writes to (its folder, the store, the temporary folder) is full; the
    message says where, what was kept and how to go on."""


def is_duplicate_key(text: str) -> bool:
    """Whether an error's text is a database's unique-key violation, as SQLite, PostgreSQL,
    MySQL and SQL Server word it, or as the team server's gate names it
    (digitcnn.team.gate.DUPLICATE_KEY)."""
    text = text.lower()
    return "unique constraint" in text or "duplicate" in text
