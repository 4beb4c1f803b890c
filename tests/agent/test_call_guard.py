"""The call guard with a scripted session, announcer and server probe: a fault plays the hold
message at once, a recovered server lets the call go on (the unanswered question is answered),
a server that stays down ends the call with the goodbye message, too many faults end it too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from livekit.agents import ChatMessage

from worker.agent.call_guard import CallGuard, GuardState
from worker.config.agent import FallbackConfig


class FakeSession:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self.history = SimpleNamespace(items=[])
        self.replies = 0
        self.interrupts = 0
        self.agent_state = "listening"

    def on(self, event: str, handler: Callable[[Any], None]) -> None:
        self.handlers[event] = handler

    def off(self, event: str, handler: Callable[[Any], None]) -> None:
        self.handlers.pop(event, None)

    def interrupt(self, *, force: bool = False) -> None:
        self.interrupts += 1

    def generate_reply(self) -> None:
        self.replies += 1
        self.agent_state = "speaking"  # the answer starts at once in this fake

    def fail(self) -> None:
        err = SimpleNamespace(error=RuntimeError("server gone"))
        self.handlers["error"](SimpleNamespace(error=err, source=object()))


class FakeAnnouncer:
    def __init__(self) -> None:
        self.played: list[str] = []

    async def play(self, name: str) -> None:
        if name != "hold_music":  # the music between messages: not recorded
            self.played.append(name)
        await asyncio.sleep(0.01)

    async def wait_idle(self) -> None:
        pass


def _guard(
    probe_results: list[bool], **cfg: Any
) -> tuple[CallGuard, FakeSession, FakeAnnouncer, list[str]]:
    session, announcer, ended = FakeSession(), FakeAnnouncer(), []

    async def probe(url: str) -> bool:
        return probe_results.pop(0) if probe_results else probe_results_default

    probe_results_default = probe_results[-1] if probe_results else True

    async def end_call(reason: str) -> None:
        ended.append(reason)

    config = FallbackConfig(**{"recovery_timeout_s": 1.0, "hold_repeat_s": 5.0, **cfg})
    guard = CallGuard(
        session,  # type: ignore[arg-type]
        announcer,  # type: ignore[arg-type]
        config,
        inference_url="http://x",
        end_call=end_call,
        probe=probe,
    )
    return guard, session, announcer, ended


async def _settle(guard: CallGuard) -> None:
    for _ in range(200):
        if guard._task is not None and guard._task.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the recovery did not finish")


async def test_fault_then_recovery_answers_the_waiting_caller() -> None:
    guard, session, announcer, ended = _guard([True, True])
    session.history.items.append(ChatMessage(role="user", content=["what are your hours"]))
    session.fail()
    assert guard.state is GuardState.HOLDING
    await _settle(guard)
    assert announcer.played == ["hold"]
    assert session.interrupts >= 1 and session.replies == 1
    assert guard.state is GuardState.NORMAL and not ended


async def test_fault_then_recovery_asks_to_repeat_when_nothing_waits() -> None:
    guard, session, announcer, _ = _guard([True, True])
    session.history.items.append(ChatMessage(role="assistant", content=["Hello"]))
    session.fail()
    await _settle(guard)
    assert announcer.played == ["hold", "resume"] and session.replies == 0


async def test_a_server_that_stays_down_ends_the_call_with_goodbye() -> None:
    guard, session, announcer, ended = _guard([False], hold_repeat_s=0.2)
    session.fail()
    await _settle(guard)
    assert announcer.played[0] == "hold" and "still_holding" in announcer.played
    assert announcer.played[-1] == "goodbye"
    assert ended and "not back within" in ended[0]
    assert guard.state is GuardState.ENDING


async def test_a_configured_transfer_target_hears_the_transfer_message() -> None:
    guard, session, announcer, ended = _guard([False], transfer_to="sip:queue@pbx")
    session.fail()
    await _settle(guard)
    assert announcer.played[-1] == "transfer" and ended


async def test_errors_during_a_recovery_are_not_acted_on_twice() -> None:
    guard, session, announcer, _ = _guard([True, True])
    session.fail()
    session.fail()
    await _settle(guard)
    assert guard.faults == 1 and announcer.played.count("hold") == 1


async def test_too_many_faults_end_the_call() -> None:
    guard, session, announcer, ended = _guard([True, True] * 5, max_faults_per_call=1)
    session.fail()
    await _settle(guard)
    session.fail()
    await _settle(guard)
    assert ended and "2 faults" in ended[0]
    assert announcer.played[-1] == "goodbye"
