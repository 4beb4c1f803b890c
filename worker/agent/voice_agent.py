"""The persona on the call's line: the ``Agent`` the job's session runs.

It greets (or, after a takeover, apologises), lets call control see every final caller turn
before the model answers, and shows the answer as it is spoken to the live view.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from livekit.agents import Agent, ChatContext, ChatMessage, ModelSettings
from livekit.agents.llm import StopResponse

from worker.agent.announcements import Announcer
from worker.agent.call_control import CallControl
from worker.agent.call_record import CallRecorder

__all__ = ["VoiceAgent"]


class VoiceAgent(Agent):
    """The persona on the call's line: its instructions, then its greeting as soon as the
    session starts (outside business hours: the flow's closed message instead) and the
    flow's menu. In a job that took over a call whose agent died it apologises with the
    pre-rendered ``recovered`` message (the caller already heard the greeting). Call control
    sees every final caller turn first."""

    def __init__(
        self,
        instructions: str,
        greeting: str,
        menu_prompt: str | None,
        announcer: Announcer,
        control: CallControl,
        recorder: CallRecorder,
        *,
        recovered: bool,
    ) -> None:
        super().__init__(instructions=instructions)
        self._recorder = recorder
        self._greeting = greeting
        self._menu_prompt = menu_prompt
        self._announcer = announcer
        self._control = control
        self._recovered = recovered

    async def on_enter(self) -> None:
        if self._recovered:
            await self._announcer.play("recovered")
            return
        if not await self._control.open_line():
            return
        # The greeting is not interruptible: line noise at call setup must not cut it off.
        self.session.say(self._greeting, allow_interruptions=False)
        if self._menu_prompt:
            self.session.say(self._menu_prompt)

    async def on_user_turn_completed(self, turn_ctx: ChatContext, new_message: ChatMessage) -> None:
        if self._control.intercept(new_message.text_content or ""):
            raise StopResponse()  # a transfer or a goodbye: the model does not answer

    async def transcription_node(
        self, text: AsyncIterable[Any], model_settings: ModelSettings
    ) -> AsyncIterable[Any]:
        # The answer as it is spoken, for the supervisor's live view.
        said = ""
        async for delta in Agent.default.transcription_node(self, text, model_settings):
            said += str(delta)
            self._recorder.agent_partial(said)
            yield delta
