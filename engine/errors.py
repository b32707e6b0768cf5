"""Exceptions raised for bad models and bad input; each message names the offending thing."""


class BertrtError(Exception):
    """Base class of bertrt's own errors."""


class ModelLoadError(BertrtError, ValueError):
    """A checkpoint directory cannot be loaded: missing file, unsupported architecture, bad weight."""


class InputError(BertrtError, ValueError):
    """User input that cannot be run: wrong type, too long with truncation="error", etc."""
