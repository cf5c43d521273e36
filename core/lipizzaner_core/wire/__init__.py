"""The gRPC wire contract: generated stubs and channel helpers (torch-free)."""
