"""The names of the masking strategies: the one list every layer (Python, CLI, proto, handler) uses."""

__all__ = ["DEFAULT_MASKING", "MASKING_STRATEGIES"]

MASKING_STRATEGIES: tuple[str, ...] = ("layer", "grey", "black", "blur")
DEFAULT_MASKING = "layer"
