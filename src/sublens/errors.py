"""Errors raised at the edges of sublens: each message says how to fix the problem."""


class SublensError(Exception):
    """Base class: a problem the user can fix (bad spec, config, data or environment)."""


class ModelSpecError(SublensError):
    """A model spec that cannot be resolved or loaded."""


class ConfigError(SublensError):
    """A malformed or inconsistent configuration."""


class ArchitectureError(SublensError):
    """A model whose architecture sublens has no adapter for, or an impossible request."""


class RunLockedError(SublensError):
    """A run directory that another process is writing (it holds the folder's lock)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class DiskFullError(SublensError):
    """A run stopped because its file system is full (the message names the folder and the space)."""
