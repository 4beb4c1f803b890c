"""What a job's metadata tells the agent about its call, and the keys that carry it.

The control plane writes it (the worker's supervisor when it re-dispatches a call whose agent
died; ``voicestack call`` when it dispatches the agent into an outbound call's room); the
agent's job reads it. Unknown or malformed metadata means an ordinary inbound call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["OUTBOUND_METADATA_KEY", "RECOVERY_METADATA_KEY", "OutboundContext", "job_metadata"]

RECOVERY_METADATA_KEY = "voicestack_recovery"
"""Set in the metadata of a job the worker re-dispatched after the call's job process died."""
OUTBOUND_METADATA_KEY = "voicestack_outbound"
"""The outbound call's context (an :class:`OutboundContext` as a JSON object)."""


@dataclass(frozen=True)
class OutboundContext:
    """Why the agent calls someone, from ``voicestack call``."""

    number: str
    purpose: str = ""
    customer: str = ""
    flow: str | None = None
    dtmf: str = ""
    caller_id: str = ""
    """The number the call presents (the outbound trunk's): its line speaks unless ``flow``."""

    def to_metadata(self) -> str:
        """The job metadata that carries this context."""
        return json.dumps({OUTBOUND_METADATA_KEY: self.__dict__})

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> OutboundContext | None:
        raw = data.get(OUTBOUND_METADATA_KEY)
        if not isinstance(raw, dict) or not isinstance(raw.get("number"), str):
            return None

        def text(key: str) -> str:
            value = raw.get(key)
            return value if isinstance(value, str) else ""

        return cls(
            number=raw["number"],
            purpose=text("purpose"),
            customer=text("customer"),
            flow=text("flow") or None,
            dtmf=text("dtmf"),
            caller_id=text("caller_id"),
        )

    def greeting(self, template: str) -> str:
        """The flow's outbound greeting for this call."""
        return template.format(
            customer=self.customer or "there", purpose=self.purpose or "your recent request"
        )

    def instructions(self) -> str:
        """What the model is told about this call, after the flow's instructions."""
        who = self.customer or "the person you called"
        why = self.purpose or "their recent request"
        return f"You placed this call to {who}. The reason for the call: {why}."


def job_metadata(raw: str) -> dict[str, Any]:
    """The job's metadata as a JSON object ({} when empty or not an object)."""
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
