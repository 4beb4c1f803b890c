"""Inference server: engines owned by threads, streaming WebSocket server, metrics."""
