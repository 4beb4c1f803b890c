"""``voicestack inference-selftest``: does this machine run our native engines?

Each engine (faster-whisper/CTranslate2, llama.cpp, Piper/onnxruntime) is loaded from the
configured models and runs one real step through its owner thread and scheduler, exactly as the
server runs it, in a subprocess of its own: a native crash (SIGSEGV from a kernel built for
another CPU, SIGILL from an instruction this CPU lacks) is reported with the signal's name and
does not stop the check of the other engines. Exit status 0 when every engine passed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["ENGINES", "EngineCheck", "check_engine", "register"]

ENGINES = ("stt", "llm", "tts")


@dataclass(frozen=True)
class EngineCheck:
    engine: str
    ok: bool
    detail: str
    """What the step produced, or why it failed (signal name for a native crash)."""


def check_engine(engine: str, config: str, *, timeout_s: float = 300.0) -> EngineCheck:
    """Run one engine's check in a fresh ``python -m worker.inference.selftest`` process."""
    cmd = [sys.executable, "-m", "worker.inference.selftest", "--child", engine, "--config", config]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return EngineCheck(engine, False, f"no result within {timeout_s:g} s (hung)")
    out = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return EngineCheck(engine, False, f"native crash: killed by {name}\n{tail}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        return EngineCheck(engine, False, f"exit status {proc.returncode}\n{tail}")
    return EngineCheck(engine, True, out)


async def _child(engine: str, config_path: str) -> str:
    from worker.config.inference import load_inference_config
    from worker.inference.jobs import EngineSet, LlmJob, SttJob, TtsJob
    from worker.inference.runtime import WorkState
    from worker.inference.scheduler import Stage

    config, models = load_inference_config(config_path)
    engines = EngineSet(config, models)
    runner = {"stt": engines.stt, "llm": engines.llm, "tts": engines.tts}[engine]
    runner.start()
    try:
        t0 = time.monotonic()
        await runner.wait_loaded()
        loaded = time.monotonic() - t0
        payload: object
        stage: Stage
        if engine == "stt":
            tone = (np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000) * 3000).astype(np.int16)
            payload, stage = SttJob(tone.tobytes(), config.stt.language), Stage.STT_FINAL
        elif engine == "llm":
            from worker.inference.engines.llm import ChatMessage, SamplingParams

            messages = [ChatMessage("user", "Say hello.")]
            payload = LlmJob(messages, SamplingParams(max_tokens=8, temperature=0.0))
            stage = Stage.LLM_FIRST_CLAUSE
        else:
            payload, stage = TtsJob("Hello, this is a test."), Stage.TTS_FIRST
        work = runner.submit(
            payload,
            stream_id="selftest",
            max_partials=16 if engine == "llm" else 0,
            call_id="selftest",
            stage=stage,
        )
        event = await work.wait()
        if event.state != WorkState.FINISHED:
            raise RuntimeError(f"{engine} step ended {event.state}: {event.error}")
        return f"loaded in {loaded:.1f} s, one step ok ({type(event.result).__name__})"
    finally:
        await asyncio.to_thread(runner.stop)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.inference.selftest")
    parser.add_argument("--child", choices=ENGINES, required=True)
    parser.add_argument("--config", default="config/inference.yaml")
    args = parser.parse_args(argv)
    print(asyncio.run(_child(args.child, args.config)), flush=True)
    return 0


def _command(args: argparse.Namespace) -> int:
    failed = 0
    for engine in args.engine or ENGINES:
        result = check_engine(engine, args.config)
        print(f"{engine}: {'ok' if result.ok else 'FAILED'}: {result.detail}", flush=True)
        failed += not result.ok
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``voicestack inference-selftest``."""
    parser = subparsers.add_parser(
        "inference-selftest",
        help="load each engine and run one step, each in its own process (native crash check)",
    )
    parser.add_argument("--config", default="config/inference.yaml", help="YAML configuration")
    parser.add_argument(
        "--engine", action="append", choices=ENGINES, help="check only this engine (repeatable)"
    )
    parser.set_defaults(func=_command)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
