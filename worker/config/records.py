"""Typed configuration of call records (the ``records:`` section of ``config/agent.yaml``) and
its per-flow overrides (``records:`` of a flow in ``config/flows.yaml``).

The same section is read by the agent workers (which write records), ``voicestack records``
(export, purge, retention) and ``voicestack console`` (which reads them), so all three agree on
the store, the spool and the recordings directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "LIVE_URL_ENV",
    "PII_KINDS",
    "STORE_URL_ENV",
    "FlowRecords",
    "PiiKind",
    "RecordsConfig",
]

PiiKind = Literal["card", "iban", "national_id", "phone", "email", "dtmf"]
PII_KINDS: tuple[PiiKind, ...] = ("card", "iban", "national_id", "phone", "email", "dtmf")
"""Every kind of personal data the redactor knows; all are redacted by default."""


STORE_URL_ENV = "VOICESTACK_RECORDS_URL"
LIVE_URL_ENV = "VOICESTACK_REDIS_URL"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlowRecords(_Strict):
    """A flow's overrides of the ``records:`` defaults (None: the default applies)."""

    recording: bool | None = None
    redact: tuple[PiiKind, ...] | None = None
    mask_caller_id: bool | None = None


class RecordsConfig(_Strict):
    """Where and how call records are kept."""

    enabled: bool = True
    store_url: Annotated[str, Field(min_length=1)] = "sqlite:///.run/records/records.db"
    """SQLAlchemy URL: ``sqlite:///PATH`` (relative to the working directory; embedded) or
    ``postgresql+psycopg://USER@HOST/DB`` when several agent hosts share one store.
    ``VOICESTACK_RECORDS_URL`` in the environment overrides it (a password stays out of files)."""
    spool_dir: Annotated[str, Field(min_length=1)] = ".run/records/spool"
    """Records wait here (one JSON file each) until the store has them: a store that is down or
    full costs no call."""
    spool_max_mb: Annotated[int, Field(ge=1)] = 1024
    recordings_dir: Annotated[str, Field(min_length=1)] = ".run/records/audio"
    recording: bool = False
    """Record both legs (caller left, agent right); off by default, on per flow."""
    recording_format: Literal["ogg", "flac"] = "ogg"
    redact: tuple[PiiKind, ...] = PII_KINDS
    """What is redacted in stored transcripts, events, logs, and silenced in recordings."""
    phone_region: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "US"
    """Region for phone numbers written without a country code."""
    mask_caller_id: bool = True
    """Keep only the last 4 digits of the caller's number (a keyed hash finds a caller's calls
    for ``records purge --caller``)."""
    caller_key_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] = "VOICESTACK_RECORDS_KEY"
    """Environment variable with the secret of that hash; unset: a random key is created once
    in ``<spool_dir>/../caller.key`` (set it, the same on every host, with a shared store)."""
    live_url: Annotated[str, Field(pattern=r"^rediss?://")] = "redis://127.0.0.1:6379/0"
    """The Redis that carries live call events from the agents to the console (the stack's
    own Redis); ``VOICESTACK_REDIS_URL`` in the environment overrides it."""
    retention_days: Annotated[int, Field(ge=1)] = 90
    """Records and recordings of calls that ended longer ago are deleted."""
    retention_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    """How often the agent worker runs the retention job."""
    flush_interval_s: Annotated[float, Field(gt=0)] = 2.0
    """How often the spool is retried while the store is unavailable."""

    @field_validator("store_url")
    @classmethod
    def _supported_store(cls, url: str) -> str:
        # A typo here would otherwise surface as a store outage hours later, in the spool.
        if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError(
                "records.store_url must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            )
        return url

    def resolved(self, env: Mapping[str, str]) -> RecordsConfig:
        """These settings with the environment's overrides (``VOICESTACK_RECORDS_URL``,
        ``VOICESTACK_REDIS_URL``) applied."""
        update = {}
        if env.get(STORE_URL_ENV):
            update["store_url"] = self._supported_store(env[STORE_URL_ENV])
        if env.get(LIVE_URL_ENV):
            update["live_url"] = env[LIVE_URL_ENV]
        return self.model_copy(update=update)

    def for_flow(self, flow: FlowRecords | None) -> RecordsConfig:
        """These settings with a flow's overrides applied."""
        if flow is None:
            return self
        update = {k: v for k, v in flow.model_dump().items() if v is not None}
        return self.model_copy(update=update)
