"""Ending a call without its agent: delete its LiveKit room (livekit-sip then hangs up).

The console's last resort when no agent answers an "end" command (its job process is gone or
stuck): LiveKit's RoomService removes every participant, the SIP one included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

__all__ = ["ROOM_DELETE_TIMEOUT_S", "delete_room", "http_url"]

logger = logging.getLogger(__name__)

ROOM_DELETE_TIMEOUT_S = 5.0


def http_url(url: str) -> str:
    """LiveKit's API URL for a ``ws://``/``wss://`` (or already ``http(s)://``) one."""
    if url.startswith("ws://"):
        return "http://" + url.removeprefix("ws://")
    if url.startswith("wss://"):
        return "https://" + url.removeprefix("wss://")
    return url


async def delete_room(room: str, env: Mapping[str, str]) -> tuple[bool, str]:
    """Delete ``room`` with ``LIVEKIT_URL``/``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET`` from
    ``env``; ``(ok, what happened)`` in words for the operator."""
    url = env.get("LIVEKIT_URL")
    key, secret = env.get("LIVEKIT_API_KEY"), env.get("LIVEKIT_API_SECRET")
    if not (url and key and secret):
        return False, "the room could not be deleted (LIVEKIT_URL/API key not configured)"
    # Imported here: livekit-api pulls in protobuf, which the rest of the console does not need.
    from livekit import api

    try:
        async with asyncio.timeout(ROOM_DELETE_TIMEOUT_S):
            lk = api.LiveKitAPI(url=http_url(url), api_key=key, api_secret=secret)
            try:
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
            finally:
                await lk.aclose()
    except TimeoutError:
        return False, "LiveKit did not answer the room deletion in time"
    except Exception as err:  # TwirpError, aiohttp errors: all mean "not deleted"
        logger.warning("console: deleting room %s failed: %s", room, err)
        return False, f"deleting the room failed: {err}"
    return True, "the room was deleted (the call is hung up)"
