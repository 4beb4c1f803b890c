"""The lifecycle shared by every engine owner thread.

Both runners (the serial :class:`~worker.inference.runtime.EngineRunner` and the batched
:class:`~worker.inference.scheduled.ScheduledRunner`) own one engine on one thread: the model is
loaded there (a slow load never blocks the event loop), readiness and a load failure are
reported through one event, and the loaded engine is then served until :meth:`stop`. Only the
serving loop differs; subclasses implement :meth:`_serve`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["EngineLoadError", "OwnerThread"]

log = logging.getLogger(__name__)

E = TypeVar("E")  # engine


class EngineLoadError(RuntimeError):
    """Loading the model failed; the message says why."""


class OwnerThread(Generic[E]):
    """One thread that loads an engine with ``load`` and then runs :meth:`_serve` on it.

    ``_cond`` guards the subclass's queues and ``_stopping``; ``_ids`` numbers work items.
    """

    def __init__(self, name: str, load: Callable[[], E]) -> None:
        self.name = name
        self._load = load
        self._cond = threading.Condition()
        self._stopping = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._died: BaseException | None = None
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._main, name=f"engine-{name}", daemon=True)

    def start(self) -> None:
        """Start the owner thread; the model loads there."""
        self._thread.start()

    @property
    def ready(self) -> bool:
        """True once the engine loaded successfully, while its owner thread lives."""
        return (
            self._ready.is_set()
            and self._load_error is None
            and self._died is None
            and self._thread.is_alive()
        )

    @property
    def load_error(self) -> BaseException | None:
        """Why the load failed, or None."""
        return self._load_error

    def problem(self) -> str | None:
        """Why this engine cannot serve the next call now (None when it can): loading, failed
        to load, owner thread dead, or what :meth:`_serving_problem` reports. ``/readyz``
        answers 503 with it, and the supervisor restarts a server that stays that way."""
        if self._load_error is not None:
            return f"failed to load: {self._load_error}"
        if not self._ready.is_set():
            return "loading"
        if self._died is not None or not self._thread.is_alive():
            return f"owner thread died: {self._died or 'exited'}"
        return self._serving_problem()

    def _serving_problem(self) -> str | None:
        """Subclass hook: a loaded, live engine that still cannot serve (stuck, failing)."""
        return None

    async def wait_loaded(self) -> None:
        """Wait until the engine is loaded; raise :class:`EngineLoadError` if the load failed."""
        await asyncio.to_thread(self._ready.wait)
        if self._load_error is not None:
            raise EngineLoadError(f"{self.name} engine failed to load: {self._load_error}")

    def _join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loaded_note(self) -> str:
        """Appended to the "engine loaded" log line (e.g. the scheduler mode)."""
        return ""

    def _main(self) -> None:
        try:
            engine = self._load()
        except BaseException as err:  # reported through readiness; the thread ends
            log.exception("%s engine failed to load", self.name)
            self._load_error = err
            self._ready.set()
            return
        self._ready.set()
        log.info("%s engine loaded%s", self.name, self._loaded_note())
        try:
            self._serve(engine)
        except BaseException as err:  # reported through problem(): /readyz turns red
            log.critical("%s engine owner thread died", self.name, exc_info=True)
            self._died = err

    def _serve(self, engine: E) -> None:
        """Serve work with the loaded engine until stopped (runs on the owner thread)."""
        raise NotImplementedError
