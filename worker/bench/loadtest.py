"""``voicestack loadtest``: concurrent scripted SIP calls into the whole stack, measured at the
caller.

Per agent configuration (one, or two to compare a lever before/after in the same run): start the
whole stack on loopback (redis, livekit-server, livekit-sip, inference server, agent worker with
that config), provision the shipped trunk, place ``calls`` concurrent baresip calls (staggered),
each playing the same scripted turns ``rounds`` times, and analyse what each caller heard:
voice-to-voice per answered turn, cut-ins into mid-sentence pauses, barge-in stop times,
backchannel resumes; plus the agent's own per-turn breakdown from its log. Results:
``loadtest.json``, ``loadtest.png`` and a printed table (:mod:`worker.bench.loadtest_report`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.agent.turn_metrics import TurnMetrics, parse_turn_lines
from worker.caller.analysis import analyse_call
from worker.caller.audio import Pcm
from worker.caller.turn_taking import OverlapResult, analyse_overlaps
from worker.caller.utterances import (
    CallerScript,
    CallerTurn,
    ScheduledUtterance,
    build_turn_script,
)
from worker.stack.process import ProcessSpec

__all__ = [
    "DEFAULT_TURNS",
    "CallResult",
    "ConfigRun",
    "LoadtestOptions",
    "TurnRecord",
    "analyse_recording",
    "place_calls",
    "run_loadtest",
]

log = logging.getLogger(__name__)

_ANSWER_S = 11.0  # silence after a question: the agent's latency plus a short phone answer
_OVERLAP_AFTER_S = 3.0  # the next turn starts while the agent is still answering

DEFAULT_TURNS: tuple[CallerTurn, ...] = (
    CallerTurn(("Hello, do you deliver on weekends?",), wait_s=_ANSWER_S),
    CallerTurn(
        ("I would like to know the price of", "express shipping."),
        pause_s=0.5,
        wait_s=_ANSWER_S,
        kind="paused",
    ),
    CallerTurn(("How do I reset my password?",), wait_s=_OVERLAP_AFTER_S),
    CallerTurn(("Sorry, wait, how long does that take?",), wait_s=_ANSWER_S, kind="barge_in"),
    CallerTurn(("What payment methods do you accept?",), wait_s=_OVERLAP_AFTER_S),
    CallerTurn(("Mm-hmm.",), wait_s=_ANSWER_S, kind="backchannel"),
    CallerTurn(
        ("Can you check the status of my", "order, please?"),
        pause_s=0.7,
        wait_s=_ANSWER_S,
        kind="paused",
    ),
    CallerTurn(("Where is your nearest store?",), wait_s=_ANSWER_S),
    CallerTurn(
        ("My parcel arrived and", "the box was damaged."),
        pause_s=0.35,
        wait_s=_ANSWER_S,
        kind="paused",
    ),
    CallerTurn(("Do you have a phone number for returns?",), wait_s=_ANSWER_S),
)
"""One round: questions the agent has not been tuned on, three with a mid-sentence pause
(350-700 ms) where people hesitate (after "of", "my", "and"), one barge-in and one backchannel
said over an answer."""


@dataclass(frozen=True)
class LoadtestOptions:
    """What to run; see ``voicestack loadtest --help``."""

    calls: int = 1
    rounds: int = 2
    agent_configs: tuple[Path, ...] = ()
    out_dir: Path = Path(".run/loadtest")
    stagger_s: float = 2.0
    greeting_wait_s: float = 8.0
    turns: tuple[CallerTurn, ...] = DEFAULT_TURNS


@dataclass
class TurnRecord:
    """One caller utterance of one call, as measured at the caller."""

    call: int
    index: int
    kind: str
    text: str
    v2v_s: float | None = None
    cut_in: bool | None = None
    agent_talking_at_onset: bool | None = None
    stop_s: float | None = None
    resumed_after_s: float | None = None


@dataclass
class CallResult:
    call: int
    greeted: bool
    turns: list[TurnRecord]
    error: str = ""


@dataclass
class ConfigRun:
    """Everything measured for one agent configuration."""

    label: str
    config: str
    calls: list[CallResult] = field(default_factory=list)
    agent_turns: list[TurnMetrics] = field(default_factory=list)
    server_means_s: dict[str, float] = field(default_factory=dict)
    """The inference server's own view (its /metrics at the end of the run): mean per stage
    (``stt_final`` flush -> final, ``llm_first_token``, ``tts_first_audio`` clause -> audio)
    and mean queue wait per engine (``queue_stt`` ...)."""
    wall_s: float = 0.0
    error: str = ""


def analyse_recording(
    call: int, samples: Pcm, rate: int, schedule: Sequence[ScheduledUtterance]
) -> CallResult:
    """The caller-side measurements of one call from what it heard and its schedule."""
    analysis = analyse_call(samples, rate, schedule)
    overlaps = {o.index: o for o in analyse_overlaps(samples, rate, schedule)}
    records: list[TurnRecord] = []
    for utt, turn in zip(schedule, analysis.turns, strict=True):
        o = overlaps.get(turn.index) or OverlapResult(turn.index, utt.kind)
        records.append(
            TurnRecord(
                call=call,
                index=turn.index,
                kind=utt.kind,
                text=utt.text,
                # A backchannel expects the paused answer back, not an answer of its own.
                v2v_s=None if utt.kind == "backchannel" else turn.latency_s,
                cut_in=o.cut_in,
                agent_talking_at_onset=o.agent_talking_at_onset,
                stop_s=o.stop_s,
                resumed_after_s=o.resumed_after_s,
            )
        )
    return CallResult(call=call, greeted=analysis.greeting is not None, turns=records)


async def _one_call(
    call: int, script: CallerScript, sip_address: tuple[str, int], number: str, work: Path
) -> CallResult:
    from worker.caller.sip import BaresipCaller, BaresipError

    caller = BaresipCaller(
        sip_host=sip_address[0], sip_port=sip_address[1], number=number, work_dir=work
    )
    try:
        recording = await caller.call(script)
    except (BaresipError, OSError) as err:
        return CallResult(call=call, greeted=False, turns=[], error=str(err))
    shift = recording.schedule_offset_s
    schedule = tuple(u.shifted(shift) for u in caller.measured_schedule(script))
    result = analyse_recording(call, recording.samples, recording.sample_rate, schedule)
    if not recording.samples.size:
        result.error = "the call was not answered: " + "; ".join(recording.notes)
    return result


async def place_calls(
    opts: LoadtestOptions,
    script: CallerScript,
    sip_address: tuple[str, int],
    number: str,
    work: Path,
) -> list[CallResult]:
    """``opts.calls`` baresip calls to ``number`` at ``sip_address``, started
    ``opts.stagger_s`` apart, each playing ``script``; what each caller measured."""

    async def staggered(i: int) -> CallResult:
        await asyncio.sleep(i * opts.stagger_s)
        return await _one_call(i + 1, script, sip_address, number, work / f"call{i + 1}")

    return list(await asyncio.gather(*(staggered(i) for i in range(opts.calls))))


def _run_config(opts: LoadtestOptions, label: str, config: Path, work: Path) -> ConfigRun:
    from worker.agent.components import agent_spec, inference_spec, inference_url
    from worker.caller.sip import SIP_SAMPLE_RATE
    from worker.stack.loopback import loopback_stack
    from worker.stack.plan import SIP_COMPONENTS
    from worker.stack.render import RenderedStack, RunFiles
    from worker.stack.supervisor import StartError
    from worker.telephony.provision import ProvisionError, provision_loopback

    run = ConfigRun(label=label, config=str(config))
    script = build_turn_script(
        work / "caller",
        list(opts.turns) * opts.rounds,
        sample_rate=SIP_SAMPLE_RATE,
        greeting_wait_s=opts.greeting_wait_s,
    )

    def voice(stack: RenderedStack, files: RunFiles) -> list[ProcessSpec]:
        return [inference_spec(stack), agent_spec(stack, config=config, drain_timeout_s=30.0)]

    started = time.monotonic()
    try:
        with loopback_stack(work / "stack", SIP_COMPONENTS, extra_specs=voice) as st:
            tel, _ = provision_loopback(st)
            if st.sip_address is None:
                raise StartError("livekit-sip is not running: the load test calls over SIP")
            print(
                f"loadtest [{label}]: stack up; {opts.calls} call(s) x "
                f"{len(script.utterances)} turns ({script.duration_s:.0f} s each)",
                flush=True,
            )
            run.calls = asyncio.run(
                place_calls(opts, script, st.sip_address, tel.trunks[0].numbers[0], work)
            )
            run.server_means_s = asyncio.run(server_means(inference_url(st.rendered)))
    except (StartError, ProvisionError) as err:
        run.error = str(err)
    run.wall_s = time.monotonic() - started
    agent_log = work / "stack" / "agent.log"  # the supervisor's log of the agent component
    if agent_log.is_file():
        turns = parse_turn_lines(agent_log.read_text(errors="replace"))
        run.agent_turns = [t for _, t in turns if t.turn > 0]  # turn 0: the greeting
    return run


async def server_means(url: str) -> dict[str, float]:
    """Mean stage latency and queue wait from the inference server's Prometheus histograms."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    from worker.inference.protocol import auth_headers

    try:
        async with (
            aiohttp.ClientSession(trust_env=False, headers=auth_headers()) as http,
            http.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(5)) as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as err:
        log.warning("could not read the inference server's metrics: %s", err)
        return {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    wanted = {
        "voicestack_inference_stage_latency_seconds": "stage",
        "voicestack_inference_queue_wait_seconds": "engine",
    }
    for family in text_string_to_metric_families(text):
        label = wanted.get(family.name)
        if label is None:
            continue
        for sample in family.samples:
            key = sample.labels.get(label, "")
            key = key if label == "stage" else f"queue_{key}"
            if sample.name.endswith("_sum"):
                sums[key] = sample.value
            elif sample.name.endswith("_count"):
                counts[key] = sample.value
    return {k: round(sums[k] / counts[k], 4) for k in sums if counts.get(k)}


def run_loadtest(opts: LoadtestOptions) -> list[ConfigRun]:
    """Run every configuration in turn (one stack at a time: they share the CPU)."""
    runs: list[ConfigRun] = []
    for i, config in enumerate(opts.agent_configs):
        label = f"{chr(ord('A') + i)}:{config.stem}"
        runs.append(_run_config(opts, label, config, opts.out_dir / f"config{i + 1}"))
    return runs
