"""Exceptions whose message is the one line a user sees (the CLI prints it without a traceback)."""


class FusionError(Exception):
    """Base class of every expected failure of the library."""


class InputError(FusionError):
    """An input (file, image, mask, transform, option) is missing or unusable; the message names it."""


class OutputExistsError(FusionError):
    """An output file exists and overwriting was not allowed."""
