"""Everything kept of one call, in one place for the job: its record
(:class:`~worker.agent.call_record.CallRecorder`), its live view
(:class:`~worker.records.live.LivePublisher`), its recording
(:class:`~worker.agent.call_recording.CallAudio`) and, at the end, the spool.

The job (:mod:`worker.agent.session`) makes one per call and calls :meth:`CallArchive.keep`
last, whatever way the call ended. Nothing here may cost the call: a records problem is logged,
the call goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from livekit.agents import AgentSession

from worker.agent.call_control import CallControl, observe_call_events
from worker.agent.call_record import CallRecorder, follow_session, supervisor_commands
from worker.agent.call_recording import CallAudio
from worker.config.records import FlowRecords, RecordsConfig
from worker.records.live import LivePublisher
from worker.records.record import Direction
from worker.records.spool import Spool

__all__ = ["CallArchive"]

logger = logging.getLogger("voicestack.agent.records")


class CallArchive:
    """One call's record, live view and recording (used on the job's event loop only)."""

    def __init__(
        self,
        call_id: str,
        userdata: dict[str, Any],
        *,
        direction: Direction,
        inference_url: str,
    ) -> None:
        """``userdata``: the job process's (``prewarm`` put the config, spool and caller-key
        secret there)."""
        self._cfg: RecordsConfig = userdata["records"]
        self._spool: Spool | None = userdata.get("spool")
        self._url = inference_url
        self.call_id = call_id
        self.live = LivePublisher(self._cfg.live_url) if self._cfg.enabled else None
        self.recorder = CallRecorder(
            call_id,
            self._cfg,
            secret=userdata.get("caller_secret", b""),
            direction=direction,
            live=self.live,
        )
        self._audio: CallAudio | None = None
        observe_call_events(call_id, self.recorder.event)

    def line(
        self, flow: str, overrides: FlowRecords | None, *, called: str | None, caller: str | None
    ) -> RecordsConfig:
        """The call's line is known: its settings (returned) apply from now on."""
        cfg = self._cfg.for_flow(overrides)
        self.recorder.line(cfg, flow=flow, called=called, caller=caller)
        return cfg

    def follow(self, session: AgentSession, control: CallControl) -> None:
        """Feed the live view from the session; take the console's commands for this call."""
        follow_session(session, self.recorder)
        if self.live is not None:
            self.live.on_command(self.call_id, supervisor_commands(self.recorder, control))

    async def record_audio(self, session: AgentSession, cfg: RecordsConfig) -> None:
        """Start the call's recording when its line records (once the session runs)."""
        if not (cfg.enabled and cfg.recording):
            return
        audio = CallAudio(session, self.call_id, Path(cfg.recordings_dir), cfg.recording_format)
        try:
            await audio.start()
        except Exception:  # a recording problem never costs the call
            logger.exception("call %s: cannot record", self.call_id)
            return
        self._audio = audio

    async def keep(self) -> None:
        """The recording redacted, the record to the spool, the live view closed: the last
        thing a call does (idempotent)."""
        observe_call_events(self.call_id, None)
        recorder = self.recorder
        recording = None
        if self._audio is not None:
            audio, self._audio = self._audio, None
            recording = await audio.finish(
                started_at=recorder.started_at,
                windows=recorder.pii_windows(),
                silence_words=recorder.silence_words,
                inference_url=self._url,
            )
        if self._spool is not None:
            await recorder.save(self._spool, recording)
        if self.live is not None:
            await self.live.aclose()
