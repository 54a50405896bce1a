"""The torch.fx layer-masking transform: ``layer_mask(model)`` and the model it returns.

Conversion: :mod:`._converter` walks the traced model and converts each node that touches a spatial
activation with the emitter :mod:`._dispatch` finds for it (by module type, function or tensor
method); :mod:`._rules` classifies the operations, and the emitters are grouped by op family in
:mod:`._emit_conv`, :mod:`._emit_pool` and :mod:`._emit_elementwise`. :mod:`._mask_plan` emits
each mask computation once. Graph passes then drop fill iterations whose results are discarded
(:mod:`._fill_pruning`), fuse activations into convolutions (:mod:`._conv_fusion`) and run ops in
place (:mod:`._in_place`).

Runtime: the converted graph calls the tensor functions of :mod:`._fill_ops` (neighbour fill),
:mod:`._conv_ops`, :mod:`._window_ops` (pooling and window masks), :mod:`._pad_ops` and
:mod:`._elementwise_ops`; :mod:`._onednn` holds oneDNN's fused convolution, and
:mod:`._kernel_choice` the one switch between eager CPU kernels and the forms the ONNX exporter traces.
"""

from layermask.transform._converter import layer_mask
from layermask.transform.model import LayerMaskedModel

__all__ = ["LayerMaskedModel", "layer_mask"]
