"""The job metadata the control plane writes and the agent reads."""

from __future__ import annotations

from worker.agent.job_context import (
    RECOVERY_METADATA_KEY,
    OutboundContext,
    job_metadata,
)


def test_outbound_context_round_trips_through_job_metadata() -> None:
    ctx = OutboundContext("+15550150", "your delivery", "Alex", "support", "42#")
    assert OutboundContext.from_metadata(job_metadata(ctx.to_metadata())) == ctx
    assert ctx.greeting("Hello {customer}. I'm calling about {purpose}.") == (
        "Hello Alex. I'm calling about your delivery."
    )
    assert "Alex" in ctx.instructions() and "your delivery" in ctx.instructions()


def test_malformed_metadata_means_an_ordinary_inbound_call() -> None:
    for raw in ("", "not json", "[1, 2]", '{"voicestack_outbound": "x"}',
                '{"voicestack_outbound": {"number": 5}}'):  # fmt: skip
        assert OutboundContext.from_metadata(job_metadata(raw)) is None
    assert RECOVERY_METADATA_KEY in job_metadata('{"voicestack_recovery": "lost"}')
    empty = OutboundContext.from_metadata(
        job_metadata('{"voicestack_outbound": {"number": "+1555", "purpose": 3}}')
    )
    assert empty == OutboundContext("+1555")
    assert empty.greeting("Hi {customer}, about {purpose}.") == (
        "Hi there, about your recent request."
    )
