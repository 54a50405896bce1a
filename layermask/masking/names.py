"""The names of the masking strategies: the one list every layer (Python, CLI, proto, handler) uses."""

MASKING_STRATEGIES: tuple[str, ...] = ("layer", "grey", "black", "blur")
DEFAULT_MASKING = "layer"
