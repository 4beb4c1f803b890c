"""Text to speech with a Piper voice on onnxruntime. No asyncio here: an engine thread owns it.

Batching (:meth:`TtsEngine.synthesize_batch`): Piper's VITS graph has a dynamic batch axis, but
its only output is the waveform padded to the longest item, and what the decoder makes of the
padded (all-zero) latent frames is not silence, so a trim by energy is unreliable. The graph does
compute every item's length in frames (``y_lengths = clip(sum(ceil(durations)), 1)``); at load we
expose that tensor as a second graph output and trim item ``i`` to ``y_lengths[i] * hop_length``
samples. Verified in tests/inference/test_tts_batch.py: with the noise scales at zero, each
batched item has the same length as the text synthesized alone and its waveform matches
(docs/tts-batching.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["TtsEngine"]

_LOG = logging.getLogger(__name__)
_MAX_WAV = 32767.0


def _expose_lengths(onnx_path: Path) -> tuple[bytes | None, str | None]:
    """The voice's graph with its per-item frame counts added as an output, and that output's
    name; ``(None, None)`` when the graph has no ``Ceil -> ReduceSum -> Clip`` length chain (then
    batches run item by item: correct, just unbatched)."""
    try:
        import onnx
    except ImportError:  # the server still speaks, one clause per run; say how to batch
        _LOG.warning("the onnx package is missing: TTS batches run item by item (pip install onnx)")
        return None, None
    model = onnx.load(str(onnx_path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type != "Clip" or not node.input:
            continue
        summed = producer.get(node.input[0])
        if summed is None or summed.op_type != "ReduceSum":
            continue
        ceil = producer.get(summed.input[0])
        if ceil is None or ceil.op_type != "Ceil":
            continue
        name = node.output[0]
        if all(out.name != name for out in graph.output):
            graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch_size"])
            )
        return model.SerializeToString(), name
    return None, None


class TtsEngine:
    """A Piper voice held by one thread; :meth:`synthesize` and :meth:`synthesize_batch` are pure
    compute calls.

    The onnxruntime session is built here rather than by ``PiperVoice.load`` because that one
    uses default session options (all cores) and we must pin the thread count.
    ``deterministic=True`` sets Piper's noise scales to zero, so a text always gives the same
    samples (tests compare batched with unbatched output that way; the voice sounds flatter).
    """

    def __init__(
        self,
        onnx_path: Path,
        config_path: Path,
        *,
        device: Literal["cpu", "cuda"],
        threads: int,
        deterministic: bool = False,
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
        graph, self._lengths_output = _expose_lengths(onnx_path)
        if graph is None:
            _LOG.warning("%s exposes no per-item lengths: TTS batches run item by item", onnx_path)
        session = onnxruntime.InferenceSession(
            graph if graph is not None else str(onnx_path),
            sess_options=options,
            providers=providers,
        )
        self._voice = PiperVoice(session=session, config=config)
        self._session = session
        self.sample_rate: int = int(config.sample_rate)
        self._hop = int(config.hop_length)
        self._noise = (0.0, 0.0) if deterministic else (config.noise_scale, config.noise_w_scale)

    @property
    def batches_in_one_run(self) -> bool:
        """True when :meth:`synthesize_batch` runs the graph once per batch (the per-item
        lengths are exposed); False: it runs the items one by one."""
        return self._lengths_output is not None

    def _length_scale(self, speed: float) -> float:
        if speed <= 0:
            raise ValueError("speed must be positive")
        return float(self._voice.config.length_scale) / speed

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Speak ``text``; returns mono int16 samples at :attr:`sample_rate` (empty if nothing
        speakable). ``speed`` > 1 speaks faster."""
        from piper.config import SynthesisConfig

        syn = SynthesisConfig(
            length_scale=self._length_scale(speed),
            noise_scale=self._noise[0],
            noise_w_scale=self._noise[1],
        )
        chunks = [chunk.audio_int16_array for chunk in self._voice.synthesize(text, syn_config=syn)]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)

    def synthesize_batch(self, texts: list[str], speed: float = 1.0) -> list[np.ndarray]:
        """Speak several texts in one ``session.run``; one int16 array per text, each as
        :meth:`synthesize` would give it (up to Piper's noise). Batching is per sentence: every
        sentence of every text is one row, padded to the longest, and each row's output is trimmed
        to its own length before a text's sentences are joined. An unspeakable text gives an
        empty array and does not disturb the others."""
        length_scale = self._length_scale(speed)
        if self._lengths_output is None:
            return [self.synthesize(text, speed) for text in texts]
        rows: list[list[int]] = []
        owner: list[int] = []
        for index, text in enumerate(texts):
            for phonemes in self._voice.phonemize(text):
                if phonemes:
                    rows.append(self._voice.phonemes_to_ids(phonemes))
                    owner.append(index)
        pieces: list[list[np.ndarray]] = [[] for _ in texts]
        if rows:
            for row, audio in zip(owner, self._run_rows(rows, length_scale), strict=True):
                pieces[row].append(audio)
        return [np.concatenate(p) if p else np.zeros(0, dtype=np.int16) for p in pieces]

    def _run_rows(self, rows: list[list[int]], length_scale: float) -> list[np.ndarray]:
        """One graph run over padded phoneme-id rows; each row's audio trimmed, peak-normalised
        and converted the way Piper's ``synthesize`` does it."""
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)  # masked by input_lengths
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        args: dict[str, Any] = {
            "input": ids,
            "input_lengths": np.array([len(r) for r in rows], dtype=np.int64),
            "scales": np.array([self._noise[0], length_scale, self._noise[1]], dtype=np.float32),
        }
        config = self._voice.config
        if config.num_speakers > 1:
            args["sid"] = np.full(len(rows), config.default_speaker_id or 0, dtype=np.int64)
        waves, frames = self._session.run(["output", self._lengths_output], args)
        out = []
        for i in range(len(rows)):
            audio = waves[i].reshape(-1)[: round(float(frames[i])) * self._hop]
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
            out.append(np.clip(audio * _MAX_WAV, -_MAX_WAV, _MAX_WAV).astype(np.int16))
        return out
