"""Errors a user can cause. The CLI prints them on one line and exits with status 2."""
from __future__ import annotations


class EdgequantError(Exception):
    """Base class for every error caused by the user's input, not by a bug in edgequant."""


class InputError(EdgequantError):
    """A missing, unreadable or corrupt file or directory."""


class UnsupportedArchitectureError(EdgequantError):
    """A checkpoint whose architecture has no adapter."""


class SchemeError(EdgequantError):
    """A quantization scheme that cannot be applied (bits=5, a group size that does not divide a width)."""


class CalibrationError(EdgequantError):
    """Calibration data that cannot give what was asked for (too little text, an empty file)."""


class RecipeError(EdgequantError):
    """A recipe with an unknown key, a pattern that matches nothing, or an impossible scheme."""


class TargetError(EdgequantError):
    """An unknown target, or a scheme the target's runtime cannot represent."""


class OutputExistsError(EdgequantError):
    """The output path exists already and would be overwritten."""


class MissingDependencyError(EdgequantError):
    """An optional backend that is not installed; the message names the extra to install."""
