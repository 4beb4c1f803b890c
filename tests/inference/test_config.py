"""Inference configuration: typed, strict, model paths checked at load."""

from pathlib import Path

import pytest

from worker.config.inference import InferenceConfig, load_inference_config
from worker.config.loader import ConfigError

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
