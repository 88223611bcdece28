"""Errors that carry a message meant for the user: what is wrong and what to change.

The CLI prints these without a traceback. Messages never contain report text (patient data):
refer to samples by row number or id.
"""


class ConvirtError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(ConvirtError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(ConvirtError):
    """Input data (manifest, image, report) is missing or malformed."""


class ImageDecodeError(DataError):
    """An image file cannot be decoded into a grayscale array."""
