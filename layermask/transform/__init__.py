"""The torch.fx layer-masking transform: ``layer_mask(model)`` and the model it returns."""

from layermask.transform._converter import layer_mask
from layermask.transform.model import LayerMaskedModel

__all__ = ["LayerMaskedModel", "layer_mask"]
