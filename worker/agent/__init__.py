"""The voice agent worker: livekit-agents plugins for the inference server, the per-call
session, the load report and ``voicestack agent start``."""
