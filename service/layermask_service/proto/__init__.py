"""Generated protobuf and gRPC modules (protos/generate.py)."""
