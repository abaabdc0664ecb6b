"""Errors of the hardware model: each names the field or parameter that was wrong."""

from __future__ import annotations


class HwError(ValueError):
    """Base class for leanml.hw errors."""


class SchemaError(HwError):
    """A device/system description is invalid; ``path`` names the field, e.g. ``devices.h200.memory[1]``."""

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        self.path, self.message, self.source = path, message, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}")


class UnknownDeviceError(HwError):
    """No device or system of that name in the catalog."""
