"""The shipped model manifest loads, and its production sets are fully pinned and checksummed."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.models.download import sha256_file, verify_set
from worker.models.manifest import (
    DEFAULT_MANIFEST,
    LlmEngine,
    ManifestError,
    SttEngine,
    TtsEngine,
    load_manifest,
    parse_manifest,
    resolve_model_set,
)
from worker.models.paths import bundled_model_files


def test_shipped_manifest_loads_with_a_cpu_and_a_gpu_production_set() -> None:
    manifest = load_manifest(DEFAULT_MANIFEST)
    assert manifest.default_set == "bundled"
    production = [s for s in manifest.sets.values() if s.production]
    assert {s.device for s in production} == {"cpu", "cuda"}
    gpu = manifest.model_set("gpu-en")
    assert gpu.gpu_memory_gib is not None
    assert isinstance(gpu.stt.engine, SttEngine) and gpu.stt.engine.compute_type == "float16"
    assert isinstance(gpu.llm.engine, LlmEngine) and gpu.llm.engine.n_gpu_layers == -1
    assert gpu.llm.engine.tool_calling
    assert isinstance(gpu.tts.engine, TtsEngine) and gpu.tts.engine.sample_rate == 22050


def test_every_production_entry_has_url_size_and_sha256() -> None:
    manifest = load_manifest(DEFAULT_MANIFEST)
    checked = 0
    for model_set in manifest.sets.values():
        if not model_set.production:
            continue
        for entry in model_set.entries():
            if entry.package is not None:
                # Shipped by a pinned PyPI dependency; its bytes are still pinned here.
                assert entry.package_sha256 and entry.package_size, entry.key
                continue
            for item in entry.files:
                assert item.url and item.url.startswith("https://"), (entry.key, item.name)
                assert item.size and item.size > 0, (entry.key, item.name)
                assert item.sha256 and len(item.sha256) == 64, (entry.key, item.name)
                assert item.checksum_source, (entry.key, item.name)
                # Pinned to a revision: a moving branch would make the checksum go stale.
                assert "/resolve/main/" not in item.url and "/resolve/master/" not in item.url
                checked += 1
    assert checked >= 10


def test_bundled_set_resolves_to_the_bundled_model_files(tmp_path: Path) -> None:
    assert resolve_model_set("bundled", tmp_path) == bundled_model_files()


def test_unknown_set_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"unknown model set 'nope'.*gpu-en"):
        resolve_model_set("nope", tmp_path)


def test_missing_downloaded_set_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"download_models.sh gpu-en"):
        resolve_model_set("gpu-en", tmp_path)


VALID = """
schema_version = 1
default_set = "s"
[sets.s]
device = "cpu"
stt = "a"
llm = "b"
tts = "c"
vad = "d"
[models.a]
role = "stt"
format = "ctranslate2"
license = "MIT"
package = "p"
path = "x"
engine = { compute_type = "int8" }
[models.b]
role = "llm"
format = "gguf"
license = "MIT"
package = "p"
path = "y.gguf"
engine = { context_length = 512 }
[models.c]
role = "tts"
format = "onnx"
license = "MIT"
package = "p"
path = "z.onnx"
engine = { sample_rate = 22050 }
[models.d]
role = "vad"
format = "onnx"
license = "MIT"
package = "p"
path = "v.onnx"
engine = { sample_rate = 16000 }
"""


def test_valid_minimal_manifest_parses() -> None:
    manifest = parse_manifest(VALID, Path("m.toml"))
    assert manifest.model_set("s").llm.key == "b"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('device = "cpu"', 'device = "tpu"', r"sets\.s\.device"),
        ('role = "llm"', 'role = "asr"', r"models\.b\.role"),
        ('format = "gguf"', 'format = "onnx"', r"llm model must be 'gguf'"),
        ("context_length = 512", "context_length = 0", r"context_length: must be > 0"),
        ("context_length = 512", "context_length = 512, n_gpu_layer = 1", r"key\(s\): n_gpu_layer"),
        ('llm = "b"', 'llm = "c"', r"'c' is a tts model, not llm"),
        ('vad = "d"', 'vad = "zz"', r"no model called 'zz'"),
        ('default_set = "s"', 'default_set = "t"', r"default_set 't'"),
        ("schema_version = 1", "schema_version = 2", r"schema_version 2"),
        ('path = "y.gguf"', 'path = "y.gguf"\nsha = 1', r"unknown key\(s\): sha"),
        ("[models.a]", "[models.a\n", r"not valid TOML"),
    ],
)
def test_malformed_manifest_names_file_and_key(old: str, new: str, message: str) -> None:
    assert old in VALID
    with pytest.raises(ManifestError, match=message) as err:
        parse_manifest(VALID.replace(old, new, 1), Path("bad.toml"))
    assert str(err.value).startswith("bad.toml")


def test_downloaded_model_rules() -> None:
    sha = "a" * 64
    downloaded = VALID.replace('package = "p"\npath = "y.gguf"', 'dir = "../escape"').replace(
        "engine = { context_length = 512 }",
        "engine = { context_length = 512 }\n"
        f'[[models.b.files]]\nname = "m.gguf"\nsize = 1\nsha256 = "{sha}"',
    )
    with pytest.raises(ManifestError, match=r"models\.b\.dir: must be a relative path"):
        parse_manifest(downloaded, Path("m.toml"))
    bad_sha = downloaded.replace("../escape", "llm/b").replace("a" * 64, "A" * 64)
    with pytest.raises(ManifestError, match=r"sha256: must be 64 lower-case hex"):
        parse_manifest(bad_sha, Path("m.toml"))
    no_gguf = downloaded.replace("../escape", "llm/b").replace("m.gguf", "m.bin")
    with pytest.raises(ManifestError, match=r"exactly one \*\.gguf"):
        parse_manifest(no_gguf, Path("m.toml"))


def test_missing_manifest_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="model manifest not found"):
        load_manifest(tmp_path / "absent.toml")


def test_bundled_set_verifies_including_the_pinned_silero_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = load_manifest(DEFAULT_MANIFEST)
    assert verify_set(manifest, "bundled", tmp_path)
    out = capsys.readouterr().out
    assert "silero_vad.onnx" in out and "BAD" not in out and "MISSING" not in out
    silero = manifest.model_set("gpu-en").vad
    assert silero.package_sha256 is not None
    assert sha256_file(silero.location(tmp_path)).hexdigest() == silero.package_sha256
    assert silero.location(tmp_path).stat().st_size == silero.package_size
