"""The worker's load report: the inference server's capacity use, not this machine's CPU.

livekit-agents calls ``load_fnc`` every 0.5 s in an executor thread and stops taking jobs above
``load_threshold``. All calls share one inference server, so the server's ``/v1/capacity`` is
the load that matters: CPU on the worker host says nothing about a saturated GPU.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request

from worker.inference.protocol import auth_headers

__all__ = ["InferenceLoad"]

logger = logging.getLogger(__name__)


class InferenceLoad:
    """Callable ``() -> float`` in 0..1 for ``AgentServer(load_fnc=...)``.

    An unreachable server or one that is not ``accepting`` reports 1.0 (full), so LiveKit
    sends calls to other workers instead of to one that cannot answer them. With ``ceiling``
    the report stays below it: livekit-server dispatches only to workers whose load is under
    its ``agents.target_load`` (1.0 in our livekit-server.yaml), so a capped worker still gets
    the call beyond capacity, and its job plays the busy message (``fallback.on_overload``)
    instead of the caller ringing until the trunk's ringing timeout.
    """

    def __init__(self, base_url: str, *, timeout: float = 0.4, ceiling: float = 1.0) -> None:
        self._url = base_url.rstrip("/") + "/v1/capacity"
        self._timeout = timeout
        self._ceiling = ceiling
        # No proxies: this is loopback or LAN traffic.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._lock = threading.Lock()
        self._last_error = ""

    def __call__(self) -> float:
        return min(self._ceiling, self._measure())

    def _measure(self) -> float:
        request = urllib.request.Request(self._url, headers=auth_headers())
        try:
            with self._opener.open(request, timeout=self._timeout) as resp:
                data = json.loads(resp.read())
            load = float(data["load"])
            accepting = bool(data.get("accepting", True))
        except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError) as err:
            self._note_error(f"inference capacity unavailable at {self._url}: {err}")
            return 1.0
        self._note_error("")
        if not accepting:
            return 1.0
        return min(1.0, max(0.0, load))

    def _note_error(self, message: str) -> None:
        # Log transitions only: this runs twice a second.
        with self._lock:
            if message and message != self._last_error:
                logger.warning("%s; reporting full load", message)
            elif not message and self._last_error:
                logger.info("inference capacity reachable again at %s", self._url)
            self._last_error = message
