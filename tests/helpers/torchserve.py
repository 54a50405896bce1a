"""What the TorchServe tests share: the served model and the archive's batching settings."""

from layermask_service.torchserve.archive import ArchiveSettings

MODEL = "efficientnet_lite0"
# 50 ms lets concurrent requests meet in one TorchServe batch; 64 rows hold 8 service batches.
ARCHIVE = ArchiveSettings(batch_size=8, max_batch_delay_ms=50, max_rows_per_forward=64)
