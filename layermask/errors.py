"""Errors raised by layermask's core."""

from __future__ import annotations

__all__ = ["InvalidOptionError", "UnsupportedLayerError"]


class UnsupportedLayerError(TypeError):
    """A model uses an operation on a spatial activation that layer masking cannot carry a mask through.

    Raised by :func:`layermask.layer_mask` at conversion time, never during a forward pass.

    Attributes:
        op: the operation, e.g. ``"torch.nn.Upsample"`` or ``"torch.nn.functional.interpolate"``.
        module_path: dotted path of the module in the original model that contains the node.
        node: name of the ``torch.fx`` graph node.
    """

    def __init__(self, op: str, module_path: str, node: str, reason: str = "") -> None:
        self.op = op
        self.module_path = module_path
        self.node = node
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"layer masking does not support {op} on a spatial activation "
            f"(module path {module_path or '<root>'!r}, graph node {node!r}){detail}. "
            "See layer-masking-spec.md for the supported operations."
        )


class InvalidOptionError(ValueError):
    """An explain option (or the input it applies to) is invalid; the message starts with the option's name.

    Raised while an explanation is checked and planned (:class:`layermask.ExplainOptions`,
    :func:`layermask.explain`), never while it is computed, so a caller can tell bad input from a failure.

    Attributes:
        field: the option, e.g. ``"num_samples"`` or ``"segmentation_params"``.
        reason: what is wrong with it, without the name.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidOptionError], tuple[str, str]]:
        return type(self), (self.field, self.reason)
