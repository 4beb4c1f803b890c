"""Shared test data: the environment of a production deployment."""

from __future__ import annotations

# A production environment as an operator would write it (private addresses, real-length secret).
PROD_ENV = {
    "LIVEKIT_API_KEY": "APIvoicestack01",
    "LIVEKIT_API_SECRET": "s3cr3t-" + "x" * 40,
    "LIVEKIT_BIND_ADDRESS": "10.0.0.10",
    "LIVEKIT_NODE_IP": "10.0.0.10",
    "LIVEKIT_STUN_SERVER": "10.0.0.10:3478",
    "LIVEKIT_WS_URL": "ws://10.0.0.10:7880",
    "REDIS_ADDRESS": "127.0.0.1:6379",
    "SIP_LISTEN_IP": "10.0.0.10",
    "SIP_NAT_IP": "10.0.0.10",
    "PBX_ADDRESS": "10.0.0.20/32",
    "PBX_NUMBER": "+15550100",
}
