"""Native CPU kernels called from XLA through its FFI (see onednn.py)."""
