"""The scheduling section of the inference server's configuration, loaded once and validated.

Example (YAML)::

    mode: deadline            # or: serial (the baseline, one request at a time per engine)
    deadlines: {stt_final_ms: 40, llm_first_clause_ms: 150, tts_first_ms: 60}
    admission: {max_calls: 100, max_load: 0.85}
    stt: {max_batch: 8}
    llm: {max_batch: 8, max_active: 16}
    tts: {max_batch: 4}

Load it with :func:`worker.config.loader.load_model` (unknown keys are errors).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .admission import AdmissionConfig
from .base import SchedulerConfig
from .deadlines import DeadlineConfig
from .request import Engine
from .serial import Mode

__all__ = ["SchedulingConfig"]


class SchedulingConfig(BaseModel):
    """Policy, deadlines, admission limits and per-engine scheduler settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "deadline"
    deadlines: DeadlineConfig = Field(default_factory=DeadlineConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    stt: SchedulerConfig = Field(default_factory=SchedulerConfig)
    llm: SchedulerConfig = Field(default_factory=SchedulerConfig)
    tts: SchedulerConfig = Field(default_factory=SchedulerConfig)

    def for_engine(self, engine: Engine) -> SchedulerConfig:
        """The scheduler settings of ``engine``."""
        return {Engine.STT: self.stt, Engine.LLM: self.llm, Engine.TTS: self.tts}[engine]
