"""Ending a process that has used livekit.rtc in-process without a native abort at exit.

livekit.rtc runs its WebRTC client in a Rust library whose tokio threads call back into Python
(room events, captured logs). CPython 3.11 ends any foreign thread that asks for the GIL while
the interpreter is finalizing with ``pthread_exit``; that forced unwind crosses Rust's
``extern "C"`` callback frame, which Rust answers with "panic in a function that cannot unwind"
and ``abort()`` (exit status 134), after the real work has finished and reported success. The
CI run of 2026-12-05 ended that way after 528 passing tests.

The fix is to never finalize with the runtime live: close it while the interpreter is whole
(``livekit_ffi_dispose`` closes rooms and stops further callbacks), flush, and leave with
``os._exit``, which does not run finalization at all. Processes that never loaded livekit.rtc
exit normally.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

__all__ = ["exit_process", "rtc_runtime_live"]


def rtc_runtime_live() -> bool:
    """True when this process started livekit.rtc's native runtime."""
    module = sys.modules.get("livekit.rtc._ffi_client")
    if module is None:
        return False
    client = getattr(module, "FfiClient", None)
    instance = getattr(client, "_instance", None)
    return instance is not None and getattr(instance, "_pid", None) == os.getpid()


def exit_process(status: int) -> NoReturn:
    """Exit with ``status``; when livekit.rtc is live, close it first and skip finalization."""
    if not rtc_runtime_live():
        sys.exit(status)
    from livekit.rtc._ffi_client import FfiClient

    try:
        instance = FfiClient._instance
        if instance is not None:
            instance._dispose()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed pipe: nothing left to say to it
        os._exit(status)
