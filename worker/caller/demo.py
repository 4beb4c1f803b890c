"""``voicestack demo``: the whole stack on loopback with the bundled models, one scripted call.

Brings up redis, livekit-server, livekit-sip, the inference server and an agent worker under
the control plane's supervisor; provisions the shipped trunk and dispatch rule; places a call
from baresip through livekit-sip (``--transport webrtc``, asked for explicitly, uses a WebRTC
participant instead, with a banner saying so); then prints the conversation transcribed from
the caller's recording by our STT and the per-turn voice-to-voice latency. Exit status 1 when
the agent did not greet or left an utterance unanswered, 2 when livekit-sip is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path

from worker.caller.analysis import CallAnalysis, analyse_call, format_report
from worker.caller.audio import write_wav
from worker.caller.transport import CallRecording, HangUp
from worker.caller.utterances import DEFAULT_QUESTIONS, CallerScript, build_caller_script
from worker.process_exit import exit_process

__all__ = ["CallOutcome", "place_scripted_call", "register", "run_demo"]

logger = logging.getLogger("voicestack.demo")

WEBRTC_BANNER = """\
################################################################################
#  --transport webrtc: the caller joins over WebRTC (a LiveKit participant), not
#  over SIP. Everything after the media leg (LiveKit, agent, inference) is the
#  same; the product's front door (livekit-sip) is not exercised.
################################################################################"""


@dataclasses.dataclass
class CallOutcome:
    script: CallerScript
    recording: CallRecording
    analysis: CallAnalysis


async def place_scripted_call(
    *,
    transport: str,
    ws_url: str,
    api_key: str,
    api_secret: str,
    agent_name: str,
    inference_url: str,
    work_dir: Path,
    sip_address: tuple[str, int] | None = None,
    sip_number: str = "",
    questions: tuple[str, ...] = DEFAULT_QUESTIONS,
    hang_up: HangUp | None = None,
    greeting_wait_s: float = 10.0,
    answer_wait_s: float = 16.0,
) -> CallOutcome:
    """Place one scripted call over ``transport`` ("sip" or "webrtc") and analyse it."""
    from worker.caller.transcribe import transcribe_analysis

    if transport == "sip":
        from worker.caller.sip import SIP_SAMPLE_RATE, BaresipCaller

        if sip_address is None or not sip_number:
            raise ValueError("the SIP transport needs livekit-sip's address and a trunk number")
        script = build_caller_script(
            work_dir / "caller",
            questions=questions,
            sample_rate=SIP_SAMPLE_RATE,
            greeting_wait_s=greeting_wait_s,
            answer_wait_s=answer_wait_s,
        )
        sip = BaresipCaller(
            sip_host=sip_address[0],
            sip_port=sip_address[1],
            number=sip_number,
            work_dir=work_dir / "baresip",
        )
        recording = await sip.call(script, hang_up=hang_up)
        schedule = sip.measured_schedule(script)
    elif transport == "webrtc":
        from worker.caller.webrtc import WebRTCCaller

        script = build_caller_script(
            work_dir / "caller",
            questions=questions,
            sample_rate=16000,
            greeting_wait_s=greeting_wait_s,
            answer_wait_s=answer_wait_s,
        )
        caller = WebRTCCaller(
            ws_url=ws_url, api_key=api_key, api_secret=api_secret, agent_name=agent_name
        )
        recording = await caller.call(script, hang_up=hang_up)
        schedule = script.utterances
    else:
        raise ValueError(f"unknown transport {transport!r} (sip or webrtc)")
    shift = recording.schedule_offset_s
    schedule = tuple(u.shifted(shift) for u in schedule)
    write_wav(work_dir / "heard.wav", recording.samples, recording.sample_rate)
    analysis = analyse_call(recording.samples, recording.sample_rate, schedule)
    await transcribe_analysis(
        analysis, recording.samples, recording.sample_rate, inference_url=inference_url
    )
    return CallOutcome(script=script, recording=recording, analysis=analysis)


def agent_breakdown(agent_log: Path, caller_latencies: list[float] | None = None) -> str:
    """The agent's own per-turn timings (its log). ``end_turn``, ``stt_final`` and
    ``agent_e2e`` count from the caller's end of speech as the agent's VAD saw it (turn
    committed, final transcript, first audio frame sent); ``llm_ttft`` and ``tts_ttfb`` are
    each node's own time to first output. ``media_vad`` is the caller's voice-to-voice minus
    ``agent_e2e``: both media legs and the VAD's view of the end of speech (shown when the agent
    logged exactly one turn per caller utterance)."""
    from worker.agent.turn_metrics import parse_turn_lines

    if not agent_log.is_file():
        return f"(no agent breakdown: {agent_log} is missing)"
    turns = [t for _, t in parse_turn_lines(agent_log.read_text(errors="replace")) if t.turn > 0]
    if not turns:
        return "(no agent breakdown: the agent logged no completed turn)"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    caller = caller_latencies or []
    aligned = len(caller) == len(turns)
    lines = ["Agent breakdown (ms; end_turn, stt_final, agent_e2e from the end of speech)"]
    lines.append(
        f"  {'turn':>4}  {'end_turn':>8}  {'stt_final':>9}  {'llm_ttft':>8}  "
        f"{'tts_ttfb':>8}  {'agent_e2e':>9}  {'media_vad':>9}"
    )
    for i, t in enumerate(turns):
        gap = caller[i] - t.e2e if aligned and t.e2e is not None else None
        lines.append(
            f"  {t.turn:>4}  {ms(t.end_of_utterance_delay):>8}  {ms(t.stt_delay):>9}  "
            f"{ms(t.llm_ttft):>8}  {ms(t.tts_ttfb):>8}  {ms(t.e2e):>9}  {ms(gap):>9}"
        )
    return "\n".join(lines)


def _say(line: str) -> None:
    print(line, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Bring the stack up, place the call, print the report; the exit status."""
    from worker.agent.components import inference_url, voice_specs
    from worker.config.agent import load_agent_config
    from worker.config.loader import ConfigError
    from worker.stack.loopback import loopback_stack
    from worker.stack.plan import SIP_COMPONENTS, tool_path
    from worker.stack.render import project_root
    from worker.stack.supervisor import StartError
    from worker.telephony.provision import ProvisionError, provision_loopback

    root = project_root()
    run_dir: Path = args.run_dir or root / ".run" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        agent_cfg = load_agent_config(root / "config" / "agent.yaml")
    except ConfigError as err:
        _say(f"demo: {err}")
        return 2
    sip_bin = tool_path("livekit-sip")
    transport = args.transport
    if transport == "webrtc":
        _say(WEBRTC_BANNER)
    elif not sip_bin.exists():
        _say(f"demo: the SIP call needs {sip_bin}, which is missing: run scripts/setup.sh")
        return 2
    components = SIP_COMPONENTS if transport == "sip" else ("redis", "livekit")
    questions = DEFAULT_QUESTIONS[: args.questions]
    _say(f"demo: run directory {run_dir}; transport {transport}; starting the stack ...")
    env = {k: v for k, v in os.environ.items() if k.startswith(("PBX_", "LIVEKIT_LOG"))}
    try:
        with loopback_stack(run_dir, components, env=env, extra_specs=voice_specs) as stack:
            _say("demo: stack is up (" + ", ".join(s.name for s in stack.supervisor.status()) + ")")
            rendered = stack.rendered
            number = ""
            if transport == "sip":
                tel, result = provision_loopback(stack)
                for line in result.summary_lines():
                    _say(f"demo: provision: {line}")
                number = tel.trunks[0].numbers[0]
            outcome = asyncio.run(
                place_scripted_call(
                    transport=transport,
                    ws_url=stack.ws_url,
                    api_key=stack.api_key,
                    api_secret=stack.api_secret,
                    agent_name=agent_cfg.worker.agent_name,
                    inference_url=inference_url(rendered),
                    work_dir=run_dir / "call",
                    sip_address=stack.sip_address,
                    sip_number=number,
                    questions=questions,
                )
            )
    except (StartError, ConfigError, ProvisionError) as err:
        _say(f"demo: {err}")
        return 1
    _say("")
    _say(format_report(outcome.analysis, transport=transport))
    for note in outcome.recording.notes:
        _say(f"note: {note}")
    _say(agent_breakdown(run_dir / "agent.log", outcome.analysis.latencies()))
    _say(f"recording: {run_dir / 'call' / 'heard.wav'}; logs: {run_dir}")
    problems = outcome.analysis.failures()
    if problems:
        _say("demo FAILED: " + "; ".join(problems))
        return 1
    _say("demo OK: the agent greeted and answered every utterance")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``voicestack demo``."""
    demo = subparsers.add_parser(
        "demo", help="whole stack on loopback + one scripted call; prints transcript and latency"
    )
    demo.add_argument(
        "--transport",
        choices=("sip", "webrtc"),
        default="sip",
        help="sip: baresip -> livekit-sip (default); webrtc: a LiveKit participant instead",
    )
    demo.add_argument(
        "--questions", type=int, default=3, choices=(1, 2, 3), help="caller utterances"
    )
    demo.add_argument("--run-dir", type=Path, default=None, help="where logs and audio go")
    demo.set_defaults(func=run_demo)


if __name__ == "__main__":
    exit_process(run_demo(argparse.Namespace(transport="sip", questions=3, run_dir=None)))
