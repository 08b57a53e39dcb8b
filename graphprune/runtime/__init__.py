"""Running models in onnxruntime: sessions (imported lazily, quiet), inputs, validation
and latency."""
