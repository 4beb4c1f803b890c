"""What keeps every voicestack process off the network besides loopback.

Libraries we embed phone home unless told not to: the Hugging Face hub looks models up online,
and onnxruntime (Silero VAD in the agent, Piper in the inference server) ships a Microsoft 1DS
telemetry client that resolves ``mobile.events.data.microsoft.com`` during a call (found by
``tests/security/test_zero_egress.py``). ``OFFLINE_ENV`` turns both off; the console script sets
it before any command imports them, the process specs and the container images set it too, so a
process started any of these ways inherits it."""

from __future__ import annotations

import os

__all__ = ["OFFLINE_ENV", "apply_offline_env"]

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "ORT_DISABLE_TELEMETRY": "1",
}


def apply_offline_env() -> None:
    """Set ``OFFLINE_ENV`` in this process (an operator's explicit value wins); call it before
    onnxruntime or huggingface_hub are imported, which read it once."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
