"""One error hierarchy for rnnbench.

Every error that says "you asked for something wrong or impossible" derives from :class:`RnnbenchError`;
the CLI turns exactly those into one line on stderr and exit code 2. Anything else that escapes is a bug
and is shown as one (traceback, exit code 3).

The value/type errors also derive from the built-in ``ValueError``/``TypeError``/``NotImplementedError``,
so ``except ValueError`` in user code keeps working.
"""
from __future__ import annotations


class RnnbenchError(Exception):
    """Base of every error rnnbench raises on purpose."""


class UsageError(RnnbenchError):
    """Bad usage or bad input found by a command (one line on stderr, exit code 2)."""


class RunDirError(UsageError):
    """A run directory that cannot be used as asked (missing, in use, malformed, not ours to write)."""


class InputError(RnnbenchError, ValueError):
    """An argument with a wrong value (its message names the argument and what is allowed)."""


class InputTypeError(RnnbenchError, TypeError):
    """An argument of a wrong type or dtype."""


class BackendError(RnnbenchError, ValueError):
    """An unknown or unusable backend name/device."""


class Unsupported(RnnbenchError, NotImplementedError):
    """A backend lacks what was asked of it (a cell, an algorithm, a device, a hook): recorded as ``skipped``."""
