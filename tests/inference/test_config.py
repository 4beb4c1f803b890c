"""Inference configuration: typed, strict, model paths checked at load."""

import hashlib
import io
import json
from pathlib import Path

import pytest

from worker.config.inference import InferenceConfig, LlmEngineConfig, load_inference_config
from worker.config.loader import ConfigError
from worker.models.download import verify_set
from worker.models.manifest import LlmEngine, load_manifest

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_with_bundled_models() -> None:
    cfg, models = load_inference_config(REPO / "config" / "inference.yaml")
    assert cfg.device == "cpu"
    assert (models.stt_dir / "model.bin").is_file()
    assert models.llm_gguf.suffix == ".gguf"
    assert models.tts_config.is_file()


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "inference.yaml"
    path.write_text("stt:\n  thread: 2\n")
    with pytest.raises(ConfigError, match=r"stt\.thread"):
        load_inference_config(path)


def test_wrong_model_path_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "inference.yaml"
    path.write_text("models:\n  llm_gguf: nowhere/model.gguf\n")
    with pytest.raises(ConfigError, match=r"models\.llm_gguf: model file not found: .*nowhere"):
        load_inference_config(path)


def test_stt_dir_without_tokenizer_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "whisper"
    model_dir.mkdir()
    (model_dir / "model.bin").write_bytes(b"x")
    (model_dir / "config.json").write_text("{}")
    path = tmp_path / "inference.yaml"
    path.write_text("models:\n  stt_dir: whisper\n")  # relative to the config file
    with pytest.raises(ConfigError, match=r"models\.stt_dir: .*tokenizer\.json"):
        load_inference_config(path)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError):
        InferenceConfig.model_validate({"device": "tpu"})
    with pytest.raises(ValueError):
        InferenceConfig.model_validate({"llm": {"threads": 0}})


# --- model sets from the manifest -----------------------------------------------------------

# Tiny stand-ins for a downloaded set: the config only checks presence and verification.
_SET_FILES = {
    "stt/tiny/model.bin": b"whisper weights",
    "stt/tiny/config.json": b"{}",
    "stt/tiny/tokenizer.json": b"{}",
    "llm/small/small.gguf": b"GGUF tiny",
    "tts/voice/voice.onnx": b"onnx voice",
    "tts/voice/voice.onnx.json": json.dumps({"audio": {"sample_rate": 16000}}).encode(),
    "vad/silero/vad.onnx": b"onnx vad",
}
_SET_MODELS = {
    "tiny-stt": (
        "stt",
        "ctranslate2",
        "stt/tiny",
        'compute_type = "int8_float32", language = "de"',
    ),
    "tiny-llm": ("llm", "gguf", "llm/small", "context_length = 1024"),
    "tiny-tts": ("tts", "onnx", "tts/voice", "sample_rate = 16000"),
    "tiny-vad": ("vad", "onnx", "vad/silero", "sample_rate = 16000"),
}


def _write_set(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest with set ``tiny`` (real sha256 of tiny files) and its models dir, verified the
    way ``scripts/download_models.sh`` does it. Returns (manifest, models_dir)."""
    models = tmp_path / "models"
    for relpath, data in _SET_FILES.items():
        (models / relpath).parent.mkdir(parents=True, exist_ok=True)
        (models / relpath).write_bytes(data)
    parts = [
        'schema_version = 1\ndefault_set = "tiny"\n',
        '[sets.tiny]\ndevice = "cpu"\nproduction = false\n'
        'stt = "tiny-stt"\nllm = "tiny-llm"\ntts = "tiny-tts"\nvad = "tiny-vad"\n',
    ]
    for key, (role, fmt, directory, engine) in _SET_MODELS.items():
        parts.append(
            f'[models.{key}]\nrole = "{role}"\nformat = "{fmt}"\nlicense = "MIT"\n'
            f'dir = "{directory}"\nengine = {{ {engine} }}\n'
        )
        for relpath, data in _SET_FILES.items():
            if relpath.startswith(directory + "/"):
                parts.append(
                    f'[[models.{key}.files]]\nname = "{relpath.rsplit("/", 1)[1]}"\n'
                    f'url = "http://127.0.0.1:9/{relpath}"\nsize = {len(data)}\n'
                    f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n'
                )
    manifest = tmp_path / "manifest.toml"
    manifest.write_text("\n".join(parts), encoding="utf-8")
    assert verify_set(load_manifest(manifest), "tiny", models, out=io.StringIO())
    return manifest, models


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "conf" / "inference.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    return path


def test_default_is_the_bundled_set_with_its_engine_settings() -> None:
    cfg, models = load_inference_config()
    bundled = load_manifest().model_set("bundled")
    assert models.set_name == cfg.models.set_name == "bundled"
    assert models.llm_gguf == bundled.llm.location(Path("unused"))
    assert isinstance(bundled.llm.engine, LlmEngine)
    assert cfg.llm.n_ctx == bundled.llm.engine.context_length
    assert cfg.device == "cpu"


def test_named_set_resolves_and_its_engine_settings_are_the_defaults(tmp_path: Path) -> None:
    manifest, models_dir = _write_set(tmp_path)
    # models.dir defaults to ../models relative to the config file: tmp_path/models here.
    path = _config(tmp_path, f"models:\n  set: tiny\n  manifest: {manifest}\n")
    cfg, models = load_inference_config(path)
    assert models.set_name == "tiny"
    assert models.stt_dir == (models_dir / "stt/tiny").resolve()
    assert models.llm_gguf == (models_dir / "llm/small/small.gguf").resolve()
    assert models.tts_onnx == (models_dir / "tts/voice/voice.onnx").resolve()
    assert (cfg.stt.compute_type, cfg.stt.language, cfg.llm.n_ctx) == ("int8_float32", "de", 1024)


def test_explicit_engine_settings_and_paths_win_over_the_set(tmp_path: Path) -> None:
    manifest, models_dir = _write_set(tmp_path)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF other")
    path = _config(
        tmp_path,
        f"stt:\n  compute_type: int8\nmodels:\n  set: tiny\n  manifest: {manifest}\n"
        f"  dir: {models_dir}\n  llm_gguf: {other}\n",
    )
    cfg, models = load_inference_config(path)
    assert cfg.stt.compute_type == "int8" and cfg.stt.language == "de"
    assert models.llm_gguf == other
    assert cfg.llm.n_ctx == LlmEngineConfig().n_ctx  # the set's LLM is not the one loaded


def test_missing_file_of_a_set_names_set_file_and_fix(tmp_path: Path) -> None:
    manifest, models_dir = _write_set(tmp_path)
    (models_dir / "llm/small/small.gguf").unlink()
    path = _config(tmp_path, f"models:\n  set: tiny\n  manifest: {manifest}\n")
    with pytest.raises(ConfigError) as err:
        load_inference_config(path)
    msg = str(err.value)
    assert "models.set 'tiny'" in msg and "small.gguf" in msg
    assert "scripts/download_models.sh tiny" in msg


def test_unverified_file_of_a_set_is_refused(tmp_path: Path) -> None:
    manifest, models_dir = _write_set(tmp_path)
    (models_dir / "tts/voice/voice.onnx").write_bytes(b"changed after verification")
    path = _config(tmp_path, f"models:\n  set: tiny\n  manifest: {manifest}\n")
    with pytest.raises(ConfigError, match=r"voice\.onnx.*verified.*download_models\.sh tiny"):
        load_inference_config(path)


def test_unknown_set_is_a_config_error_listing_the_known_ones(tmp_path: Path) -> None:
    manifest, _ = _write_set(tmp_path)
    path = _config(tmp_path, f"models:\n  set: huge\n  manifest: {manifest}\n")
    with pytest.raises(ConfigError, match=r"models\.set: .*unknown model set 'huge'.*tiny"):
        load_inference_config(path)


def test_voice_sample_rate_must_match_the_manifest(tmp_path: Path) -> None:
    manifest, _ = _write_set(tmp_path)
    text = manifest.read_text().replace("sample_rate = 16000 }", "sample_rate = 22050 }", 1)
    manifest.write_text(text)
    path = _config(tmp_path, f"models:\n  set: tiny\n  manifest: {manifest}\n")
    with pytest.raises(ConfigError, match=r"16000 Hz but the manifest says 22050 Hz"):
        load_inference_config(path)
