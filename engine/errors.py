"""Exceptions raised for bad models and bad input; each message names the offending thing."""


class BertrtError(Exception):
    """Base class of bertrt's own errors."""


class ModelLoadError(BertrtError, ValueError):
    """A checkpoint directory cannot be loaded: missing file, unsupported architecture, bad weight."""


class InputError(BertrtError, ValueError):
    """User input that cannot be run: wrong type, too long with truncation="error", etc."""


def limit_violation(implementation: str, limits: dict[str, int], **dims: int) -> str | None:
    """Why ``implementation`` cannot take these dims (e.g. head_dim=160 over its 128), or None. An
    implementation's limits are its own (what its kernels are built for), beyond the op's contract."""
    for name, value in dims.items():
        if name in limits and not 1 <= value <= limits[name]:
            return f"{name} {value} is outside the {implementation} kernel's range [1, {limits[name]}]"
    return None


def check_limits(implementation: str, limits: dict[str, int], **dims: int) -> None:
    """InputError naming the limit when ``dims`` are outside ``implementation``'s ``limits``."""
    reason = limit_violation(implementation, limits, **dims)
    if reason:
        raise InputError(reason)
