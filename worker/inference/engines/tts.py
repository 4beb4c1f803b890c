"""Text to speech with a Piper voice on onnxruntime. No asyncio here: an engine thread owns it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["TtsEngine"]


class TtsEngine:
    """A Piper voice held by one thread; :meth:`synthesize` is a pure compute call.

    The onnxruntime session is built here rather than by ``PiperVoice.load`` because that one
    uses default session options (all cores) and we must pin the thread count.
    """

    def __init__(
        self,
        onnx_path: Path,
        config_path: Path,
        *,
        device: Literal["cpu", "cuda"],
        threads: int,
    ) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads would otherwise spin and steal the cores the other engines share.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[str | tuple[str, dict[str, str]]]
        if device == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise RuntimeError(
                    "device=cuda but this onnxruntime build has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu)"
                )
            providers = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
        else:
            providers = ["CPUExecutionProvider"]
        with open(config_path, encoding="utf-8") as fh:
            config = PiperConfig.from_dict(json.load(fh))
        session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=providers
        )
        self._voice = PiperVoice(session=session, config=config)
        self.sample_rate: int = int(config.sample_rate)

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Speak ``text``; returns mono int16 samples at :attr:`sample_rate` (empty if nothing
        speakable). ``speed`` > 1 speaks faster."""
        from piper.config import SynthesisConfig

        if speed <= 0:
            raise ValueError("speed must be positive")
        base = self._voice.config.length_scale
        syn = SynthesisConfig(length_scale=base / speed)
        chunks = [chunk.audio_int16_array for chunk in self._voice.synthesize(text, syn_config=syn)]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)
