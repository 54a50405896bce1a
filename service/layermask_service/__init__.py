"""layermask's gRPC front door: ``layermask.v1.ExplainService`` with Prometheus metrics.

This package translates and delegates; every explanation is computed by the core ``layermask``.
"""
