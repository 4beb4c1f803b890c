"""The synthetic caller against a scripted server: stages recorded, refusals and errors
counted (never retried), abandoned streams closed, one STT stream per call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from bench_fake_server import FakeServer, Script

from worker.bench.call import CallSettings, first_clause_ready, run_call
from worker.bench.loadgen import run_point, wait_idle
from worker.bench.results import Outcome, TurnRecord
from worker.bench.timeline import CallPlan, TurnPlan, make_call_plans
from worker.bench.utterances import SAMPLE_RATE, Utterance

UTTERANCES = [
    Utterance(text="one", pcm=b"\x01\x00" * (SAMPLE_RATE // 5)),  # 0.2 s
    Utterance(text="two", pcm=b"\x02\x00" * (SAMPLE_RATE // 4)),  # 0.25 s
]


@pytest.fixture
async def server_factory() -> AsyncIterator[list[FakeServer]]:
    started: list[FakeServer] = []
    yield started
    for s in started:
        await s.stop()


async def start(started: list[FakeServer], script: Script) -> FakeServer:
    server = FakeServer(script)
    await server.start()
    started.append(server)
    return server


def plan(turns: int = 2) -> CallPlan:
    return CallPlan(
        call_index=0,
        start_offset_s=0.0,
        turns=tuple(TurnPlan(utterance=i % 2, pause_after_s=0.0) for i in range(turns)),
    )


async def call(server: FakeServer, turns: int = 2, **settings: float) -> list[TurnRecord]:
    sink: list[TurnRecord] = []
    async with aiohttp.ClientSession() as session:
        now = time.monotonic()
        await run_call(
            session,
            plan(turns),
            UTTERANCES,
            CallSettings(url=server.url, **settings),  # type: ignore[arg-type]
            start_at=now,
            deadline=now + 60,
            sink=sink,
        )
    return sink


async def test_turns_record_every_stage_and_reuse_one_stt_stream(
    server_factory: list[FakeServer],
) -> None:
    server = await start(server_factory, Script())
    t = time.monotonic()
    recs = await call(server, turns=2)
    elapsed = time.monotonic() - t

    assert [r.outcome for r in recs] == [Outcome.OK, Outcome.OK]
    for r in recs:
        assert set(r.stages_ms) == {"stt_final", "llm_ttft", "llm_clause", "tts_ttfb", "compute"}
        assert all(v >= 0 for v in r.stages_ms.values())
        # the critical path contains each of its stages
        assert r.stages_ms["compute"] >= r.stages_ms["stt_final"]
        assert r.stages_ms["compute"] >= r.stages_ms["tts_ttfb"]
        assert r.stages_ms["llm_clause"] >= r.stages_ms["llm_ttft"]
        assert r.transcript == "where is my order"
        assert r.reply == "Sure. Let me check that."
        assert r.answer_audio_s == pytest.approx(len(r.reply) * 0.02)
    # audio is paced in real time and the caller listens to each answer before going on
    assert elapsed >= 0.2 + 0.25 + recs[0].answer_audio_s
    stt = server.ops("stt")
    assert len(stt) == 1, "one STT stream per call, flushed once per turn"
    assert stt[0].verbs == ["flush", "flush"]
    assert stt[0].audio_bytes == len(UTTERANCES[0].pcm) + len(UTTERANCES[1].pcm)
    assert await wait_idle(server.base_url, timeout_s=5.0), "every stream was closed"
    assert stt[0].ended == "client_closed"
    assert len(server.ops("llm")) == 2
    # the first clause ("Sure. Let") opens TTS before the LLM is done; later tokens follow
    tts = server.ops("tts")
    assert len(tts) == 2 and tts[0].verbs[-1] == "end_input"
    assert tts[0].verbs.count("push_text") > 1
    # history: the second turn's prompt carries the first exchange
    msgs = server.ops("llm")[1].start["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]


async def test_tts_refusal_is_counted_not_retried_and_call_goes_on(
    server_factory: list[FakeServer],
) -> None:
    server = await start(server_factory, Script(refuse={"tts": "overloaded"}))
    recs = await call(server, turns=2)
    assert [r.outcome for r in recs] == [Outcome.REFUSED, Outcome.REFUSED]
    assert recs[0].failed_stage == "tts" and recs[0].error_code == "overloaded"
    assert "compute" not in recs[0].stages_ms
    assert len(server.ops("tts")) == 2, "one attempt per turn, no retry"
    assert await wait_idle(server.base_url, timeout_s=5.0), "every stream was closed"


async def test_stt_refusal_reopens_the_stream_next_turn(server_factory: list[FakeServer]) -> None:
    server = await start(server_factory, Script(refuse={"stt": "overloaded"}))
    recs = await call(server, turns=2)
    assert [(r.outcome, r.failed_stage) for r in recs] == [(Outcome.REFUSED, "stt")] * 2
    assert len(server.ops("stt")) == 2
    assert server.ops("llm") == []


async def test_engine_error_is_an_error_not_a_refusal(server_factory: list[FakeServer]) -> None:
    server = await start(server_factory, Script(refuse={"llm": "internal"}))
    recs = await call(server, turns=1)
    assert recs[0].outcome is Outcome.ERROR
    assert (recs[0].failed_stage, recs[0].error_code) == ("llm", "internal")
    assert "stt_final" in recs[0].stages_ms


async def test_timeout_closes_the_stream_so_the_server_can_cancel(
    server_factory: list[FakeServer],
) -> None:
    server = await start(server_factory, Script(llm_hangs=True))
    recs = await call(server, turns=1, turn_timeout_s=0.8)
    assert recs[0].outcome is Outcome.ERROR
    assert (recs[0].failed_stage, recs[0].error_code) == ("llm", "timeout")
    assert server.ops("llm")[0].ended == "client_closed"
    assert await wait_idle(server.base_url, timeout_s=5.0)


async def test_empty_transcript_is_an_error(server_factory: list[FakeServer]) -> None:
    server = await start(server_factory, Script(final_text="  "))
    recs = await call(server, turns=1)
    assert (recs[0].outcome, recs[0].failed_stage) == (Outcome.ERROR, "stt")
    assert recs[0].error_code == "empty_transcript"
    assert server.ops("llm") == []


async def test_dead_server_is_an_error(server_factory: list[FakeServer]) -> None:
    server = await start(server_factory, Script())
    await server.stop()
    recs = await call(server, turns=1)
    assert recs[0].outcome is Outcome.ERROR and recs[0].error_code == "connect"


async def test_no_turn_starts_after_the_deadline(server_factory: list[FakeServer]) -> None:
    server = await start(server_factory, Script())
    sink: list[TurnRecord] = []
    async with aiohttp.ClientSession() as session:
        now = time.monotonic()
        await run_call(
            session, plan(5), UTTERANCES, CallSettings(url=server.url),
            start_at=now, deadline=now + 0.05, sink=sink,
        )  # fmt: skip
    assert len(sink) == 1


async def test_run_point_collects_every_call(server_factory: list[FakeServer]) -> None:
    server = await start(server_factory, Script())
    plans = make_call_plans(3, turns_per_call=2, n_utterances=2, seed=1, stagger_s=0.2)
    point = await run_point(
        mode="deadline",
        plans=plans,
        utterances=UTTERANCES,
        settings=CallSettings(url=server.url),
        max_duration_s=30,
        limit_ms=600,
    )
    assert point.n_calls == 3 and point.completed == 6
    assert (point.refused, point.errors) == (0, 0)
    assert [(t.call_index, t.turn_index) for t in point.turns] == [
        (c, k) for c in range(3) for k in range(2)
    ]
    assert point.stage("compute").count == 6
    assert point.throughput_tps > 0
    assert len({s.start["call_id"] for s in server.ops("stt")}) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sure", None),
        ("Sure.", None),  # a final "." may still be "3." of "3.5": wait for more
        ("Of course. I", "clause"),
        ("Let me check that for you,", None),
        ("Let me check that for you right now, and", "clause"),
        (" ".join(["word"] * 13), "flush"),
        (" ".join(["word"] * 12), None),
    ],
)
def test_first_clause_ready(text: str, expected: str | None) -> None:
    assert first_clause_ready(text) == expected
