"""voicestack: a self-hosted, fully local voice-agent stack for call centers.

Subpackages follow the data path of a call:

- ``worker.config``: typed configuration, loaded once and validated.
- ``worker.stack``: the local control plane (redis, livekit-server, livekit-sip) and its supervisor.
- ``worker.telephony``: SIP trunks and dispatch rules, provisioned through the LiveKit API.
- ``worker.agent``: the per-call agent session (VAD, turns, barge-in, call control).
- ``worker.inference``: the inference server: protocol, scheduler and model engines.
- ``worker.models``: where model files come from (bundled packages or ``models/``).
- ``worker.caller``: the scripted SIP caller and voice-to-voice latency analysis (demo).
"""

__version__ = "0.1.0"
