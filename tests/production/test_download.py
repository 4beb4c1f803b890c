"""The model download tool against a local HTTP server serving small files."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prod_fileserver import FileServer

from worker.models import download
from worker.models.manifest import (
    STAMP_FILE,
    ModelNotVerifiedError,
    load_manifest,
    resolve_model_set,
)
from worker.models.paths import ModelNotFoundError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "download_models.sh"

# Distinct, incompressible-looking payloads; model.bin spans several 1 MiB read chunks.
FILES = {
    "stt/tiny/model.bin": os.urandom(3 * 1024 * 1024 + 123),
    "stt/tiny/config.json": b'{"lang_ids": [1]}\n',
    "stt/tiny/tokenizer.json": b'{"model": {}}\n',
    "llm/small/model.gguf": os.urandom(200_000),
    "tts/voice/voice.onnx": os.urandom(50_000),
    "tts/voice/voice.onnx.json": b'{"audio": {"sample_rate": 22050}}\n',
    "vad/silero/vad.onnx": os.urandom(10_000),
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_entry(base_url: str, relpath: str, data: bytes, sha256: str | None = None) -> str:
    name = relpath.rsplit("/", 1)[1]
    sha = sha256 if sha256 is not None else _sha(data)
    return (
        f'[[models.{{key}}.files]]\nname = "{name}"\nurl = "{base_url}/{relpath}"\n'
        f'size = {len(data)}\nsha256 = "{sha}"\n'
    )


def write_manifest(
    path: Path, base_url: str, *, sha_override: dict[str, str] | None = None
) -> Path:
    """A manifest whose set ``tiny`` has every role downloaded from ``base_url``."""
    overrides = sha_override or {}
    models = {
        "tiny-stt": ("stt", "ctranslate2", "stt/tiny", 'compute_type = "int8"'),
        "tiny-llm": ("llm", "gguf", "llm/small", "context_length = 512"),
        "tiny-tts": ("tts", "onnx", "tts/voice", "sample_rate = 22050"),
        "tiny-vad": ("vad", "onnx", "vad/silero", "sample_rate = 16000"),
    }
    parts = [
        'schema_version = 1\ndefault_set = "tiny"\n',
        '[sets.tiny]\ndevice = "cpu"\nproduction = false\n'
        'stt = "tiny-stt"\nllm = "tiny-llm"\ntts = "tiny-tts"\nvad = "tiny-vad"\n',
    ]
    for key, (role, fmt, directory, engine) in models.items():
        parts.append(
            f'[models.{key}]\nrole = "{role}"\nformat = "{fmt}"\nlicense = "MIT"\n'
            f'dir = "{directory}"\nengine = {{ {engine} }}\n'
        )
        for relpath, data in FILES.items():
            if relpath.startswith(directory + "/"):
                entry = _file_entry(base_url, relpath, data, overrides.get(relpath))
                parts.append(entry.replace("{key}", key))
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.state.files = {f"/{k}": v for k, v in FILES.items()}
        yield srv


def _free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting is refused


def _run(manifest: Path, models: Path, *extra: str) -> int:
    return download.main(["tiny", "--manifest", str(manifest), "--models-dir", str(models), *extra])


def _installed(models: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(models)): p.read_bytes()
        for p in models.rglob("*")
        if p.is_file() and p.name not in (STAMP_FILE, download.LOCK_FILE)
    }


def test_correct_checksum_installs_and_resolves(tmp_path: Path, server: FileServer) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    models = tmp_path / "models"
    assert _run(manifest, models) == 0
    assert _installed(models) == FILES
    assert not list(models.rglob("*.part"))
    files = resolve_model_set("tiny", models, manifest)
    assert files.stt_dir == models / "stt/tiny"
    assert files.llm_gguf == models / "llm/small/model.gguf"
    assert files.tts_onnx == models / "tts/voice/voice.onnx"
    assert files.tts_config.read_bytes() == FILES["tts/voice/voice.onnx.json"]
    assert files.vad_onnx == models / "vad/silero/vad.onnx"


def test_check_is_fast_and_clear(
    tmp_path: Path, server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    models = tmp_path / "models"
    assert _run(manifest, models, "--check") == 1
    assert "download_models.sh tiny" in capsys.readouterr().err
    assert _run(manifest, models) == 0
    assert _run(manifest, models, "--check") == 0
    (models / STAMP_FILE).unlink()  # e.g. files copied in by hand, never verified
    assert _run(manifest, models, "--check") == 1
    assert "--verify" in capsys.readouterr().err


def test_second_run_downloads_nothing(tmp_path: Path, server: FileServer) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    models = tmp_path / "models"
    assert _run(manifest, models) == 0
    served = len(server.state.requests)
    assert served == len(FILES)
    assert _run(manifest, models) == 0
    assert len(server.state.requests) == served


def test_wrong_checksum_fails_and_installs_nothing(
    tmp_path: Path, server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "0" * 64
    manifest = write_manifest(
        tmp_path / "manifest.toml", server.url, sha_override={"llm/small/model.gguf": bad}
    )
    models = tmp_path / "models"
    assert _run(manifest, models) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and bad in err
    assert not (models / "llm/small/model.gguf").exists()
    assert not (models / "llm/small/model.gguf.part").exists()
    with pytest.raises(ModelNotFoundError):
        resolve_model_set("tiny", models, manifest)


def test_interrupted_download_resumes_with_range(tmp_path: Path, server: FileServer) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    models = tmp_path / "models"
    cut = 1_500_000
    server.state.cut_after["/stt/tiny/model.bin"] = cut
    # No retries: the first run stops with the partial file kept, like a killed process.
    assert _run(manifest, models, "--retries", "0") == download.NetworkError.exit_code
    part = models / "stt/tiny/model.bin.part"
    assert part.stat().st_size == cut
    assert not (models / "stt/tiny/model.bin").exists()
    assert _run(manifest, models) == 0
    assert (models / "stt/tiny/model.bin").read_bytes() == FILES["stt/tiny/model.bin"]
    assert ("/stt/tiny/model.bin", f"bytes={cut}-") in server.state.requests
    assert not part.exists()


def test_dropped_connection_resumes_within_one_run(tmp_path: Path, server: FileServer) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    models = tmp_path / "models"
    server.state.cut_after["/llm/small/model.gguf"] = 70_000
    assert _run(manifest, models) == 0
    assert (models / "llm/small/model.gguf").read_bytes() == FILES["llm/small/model.gguf"]
    assert ("/llm/small/model.gguf", "bytes=70000-") in server.state.requests


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, server: FileServer) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    models = tmp_path / "models"
    part = models / "stt/tiny/model.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from an older file")
    server.state.honour_range = False
    assert _run(manifest, models) == 0
    assert (models / "stt/tiny/model.bin").read_bytes() == FILES["stt/tiny/model.bin"]


def test_mirror_dir_works_without_network(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_free_closed_port()}"
    manifest = write_manifest(tmp_path / "manifest.toml", dead)
    mirror = tmp_path / "usb"
    for relpath, data in FILES.items():
        # A flat folder of files works as well as a copy of a models dir.
        target = mirror / (relpath if relpath.startswith("stt/") else relpath.rsplit("/", 1)[1])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    models = tmp_path / "models"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            str(SCRIPT),
            "tiny",
            "--manifest",
            str(manifest),
            "--models-dir",
            str(models),
            "--mirror",
            str(mirror),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert _installed(models) == FILES
    # The same command without the mirror has to reach the (dead) URLs and says so clearly.
    shutil.rmtree(models)
    result = subprocess.run(
        [str(SCRIPT), "tiny", "--manifest", str(manifest), "--models-dir", str(models)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == download.NetworkError.exit_code
    assert "cannot reach 127.0.0.1" in result.stderr and "--mirror" in result.stderr


def test_mirror_dir_with_corrupt_copy_is_refused(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", f"http://127.0.0.1:{_free_closed_port()}")
    mirror = tmp_path / "mirror"
    for relpath, data in FILES.items():
        (mirror / relpath).parent.mkdir(parents=True, exist_ok=True)
        (mirror / relpath).write_bytes(data)
    (mirror / "tts/voice/voice.onnx").write_bytes(b"truncated")
    models = tmp_path / "models"
    assert _run(manifest, models, "--mirror", str(mirror)) == 1
    assert not (models / "tts/voice/voice.onnx").exists()


def test_mirror_url(tmp_path: Path, server: FileServer) -> None:
    manifest = write_manifest(
        tmp_path / "manifest.toml", f"http://127.0.0.1:{_free_closed_port()}/x"
    )
    server.state.files = {f"/mirror/{k}": v for k, v in FILES.items()}
    models = tmp_path / "models"
    assert _run(manifest, models, "--mirror", f"{server.url}/mirror/") == 0
    assert _installed(models) == FILES


def test_verify_detects_changed_file(
    tmp_path: Path, server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    models = tmp_path / "models"
    assert _run(manifest, models) == 0
    served = len(server.state.requests)
    assert _run(manifest, models, "--verify") == 0
    config = models / "stt/tiny/config.json"
    config.write_bytes(b'{"tampered": true}\n')
    with pytest.raises(ModelNotVerifiedError):
        resolve_model_set("tiny", models, manifest)
    capsys.readouterr()
    assert _run(manifest, models, "--verify") == 1
    assert "BAD      stt/tiny/config.json" in capsys.readouterr().out
    assert len(server.state.requests) == served  # --verify never downloads
    # A normal run repairs it: only the bad file is fetched again.
    assert _run(manifest, models) == 0
    assert config.read_bytes() == FILES["stt/tiny/config.json"]
    assert server.state.requests[served:] == [("/stt/tiny/config.json", None)]


def test_no_space_is_a_clear_error(
    tmp_path: Path,
    server: FileServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)

    def tiny_disk(path: Any) -> Any:
        return shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)

    monkeypatch.setattr(download.shutil, "disk_usage", tiny_disk)
    assert _run(manifest, tmp_path / "models") == download.NoSpaceError.exit_code
    assert "not enough disk space" in capsys.readouterr().err
    assert server.state.requests == []


def test_entry_without_sha256_is_refused(
    tmp_path: Path, server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    text = manifest.read_text(encoding="utf-8")
    sha = _sha(FILES["vad/silero/vad.onnx"])
    manifest.write_text(text.replace(f'sha256 = "{sha}"\n', ""), encoding="utf-8")
    assert load_manifest(manifest).model_set("tiny").vad.files[0].sha256 is None
    assert _run(manifest, tmp_path / "models") == 2
    assert "no sha256" in capsys.readouterr().err
    assert server.state.requests == []  # refused before fetching anything


def test_http_error_names_the_url(
    tmp_path: Path, server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", server.url)
    del server.state.files["/tts/voice/voice.onnx.json"]
    assert _run(manifest, tmp_path / "models") == 1
    assert "voice.onnx.json: HTTP 404" in capsys.readouterr().err
