"""Errors that reach users: each carries a message meant to be printed as is."""

from __future__ import annotations


class FacewatchError(Exception):
    """Base class of every error facewatch reports to a user without a traceback."""


class ModelFileError(FacewatchError):
    """A model file is missing, incomplete, corrupted or not the expected network."""


class ImageError(FacewatchError):
    """An input image cannot be decoded or is not usable for face analysis."""


class ImageTooLarge(ImageError):
    """An image over the pixel budget (``images.max_pixels``), refused from its header before decoding."""


class ConfigError(FacewatchError):
    """The configuration is invalid; the message names the offending key."""


class WatchlistError(FacewatchError):
    """The watchlist store, its index or an export file cannot do what was asked."""


class UnknownIdentityError(WatchlistError):
    """No identity with the given id is on the watchlist."""


class VideoError(ImageError):
    """A video file or live stream cannot be opened or decoded."""
