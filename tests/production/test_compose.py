"""docker-compose.gpu.yml: valid per the Compose specification, and consistent with our configs.

No docker engine is needed: the file is validated against the compose-spec JSON schema that
check-jsonschema vendors, and cross-checked against the YAML configs, the env file template,
the Dockerfiles, the Prometheus/Grafana provisioning and the model manifest.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from worker.config.inference import InferenceConfig, apply_set_defaults
from worker.config.loader import parse_model
from worker.inference.metrics import InferenceMetrics
from worker.models.manifest import DEFAULT_MANIFEST, LlmEngine, SttEngine, load_manifest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.gpu.yml"
# Services a live call passes through: they must outlive the agents' drain on shutdown.
CALL_PATH = ("agent", "inference", "livekit-server", "livekit-sip", "redis")
# Metrics on the dashboard that no component exports yet (see docs/production.md, "Metrics").
PENDING_METRICS = {
    "voicestack_inference_gpu_memory_bytes",
}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?([^}]*)\}")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _env_keys(path: Path) -> set[str]:
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=", line.strip())
        if match:
            keys.add(match.group(1))
    return keys


def _required_placeholders(text: str) -> set[str]:
    """``${VAR}`` and ``${VAR:?msg}`` need a value; ``${VAR:-default}`` does not."""
    text = text.replace("$$", "")  # compose escapes: resolved at run time, not here
    return {m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(2) not in ("-", ":-")}


def _runtime_vars(text: str) -> set[str]:
    """``$${VAR}`` / ``$$VAR`` in compose: expanded by the container's shell from its env."""
    return set(re.findall(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))


def _seconds(duration: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema_file = (
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(_compose()), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_the_validator_rejects_a_broken_compose_file() -> None:
    schema_file = (
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    broken = _compose()
    broken["services"]["inference"]["stop_grace_periode"] = "10s"
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


def test_images_are_pinned() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    services = _services()
    assert services["livekit-server"]["image"] == "livekit/livekit-server:v1.13.5"
    assert services["livekit-sip"]["image"] == "livekit/sip:v1.11.0"
    for name, service in services.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "$" not in tag, (name, image)
        if repo.startswith("voicestack-"):
            assert tag == version, (name, image)
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text(encoding="utf-8")
        for match in re.finditer(r"^ARG (\w+)=(\S+)", text, re.M):
            assert "latest" not in match.group(2), (dockerfile.name, match.group(0))
        args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
        for line in re.findall(r"^FROM (\S+)", text, re.M):
            image = line
            for name, value in args.items():
                image = image.replace("${" + name + "}", value)
            assert ":" in image and "latest" not in image, (dockerfile.name, image)


def test_gpu_is_reserved_for_the_inference_server_only() -> None:
    for name, service in _services().items():
        devices = (
            service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        )
        if name == "inference":
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        else:
            assert devices is None, name


def test_media_services_use_host_networking_and_workers_scale() -> None:
    services = _services()
    for name in ("livekit-server", "livekit-sip", "redis"):
        assert services[name]["network_mode"] == "host", name
        assert "ports" not in services[name]
    agent = services["agent"]
    assert "container_name" not in agent and "ports" not in agent  # `--scale agent=N` works
    assert str(agent["deploy"]["replicas"]).startswith("${AGENT_REPLICAS")


def test_stop_grace_periods_exceed_the_agent_drain_time() -> None:
    agent_cfg = yaml.safe_load((ROOT / "config" / "agent.yaml").read_text(encoding="utf-8"))
    drain = float(agent_cfg["worker"]["drain_timeout_s"])
    services = _services()
    for name in CALL_PATH:
        assert _seconds(services[name]["stop_grace_period"]) > drain, name
    assert services["agent"].get("stop_signal", "SIGTERM") == "SIGTERM"


def test_every_variable_the_configs_use_is_provided() -> None:
    env_template = _env_keys(ROOT / ".env.example")
    compose_extra = _env_keys(ROOT / "deploy" / "compose.env.example")
    services = _services()
    # The shipped YAMLs are rendered (render), checked and applied (provision) from the env file.
    needed: set[str] = set()
    for config in ("livekit-server.yaml", "sip-config.yaml", "config/telephony.yaml"):
        # Values only (comments explain the ${NAME} syntax itself).
        values = json.dumps(yaml.safe_load((ROOT / config).read_text(encoding="utf-8")))
        needed |= _required_placeholders(values)
    needed |= {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"}
    assert needed, "no placeholders found: the cross-check would be empty"
    assert needed <= env_template, sorted(needed - env_template)
    for name in ("render", "provision", "livekit-server", "livekit-sip", "redis", "agent"):
        assert services[name]["env_file"] == ".env", name
    # Compose-level interpolation: every variable without a default is in one of the templates.
    text = "\n".join(
        line.split(" # ")[0]
        for line in COMPOSE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    )
    missing = _required_placeholders(text) - env_template - compose_extra
    assert not missing, sorted(missing)
    # Run-time references inside containers ($$VAR) come from the env file.
    runtime = _runtime_vars(text)
    assert runtime and runtime <= env_template, sorted(runtime - env_template)


def test_mounted_files_exist_and_commands_use_them() -> None:
    services = _services()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, volume)
    rendered = {"rendered:/rendered", "rendered:/rendered:ro"}
    for name in ("render", "livekit-server", "livekit-sip"):
        assert rendered & set(services[name]["volumes"]), name
    assert services["render"]["environment"]["RENDER_DIR"] == "/rendered"
    assert "/rendered/livekit-server.yaml" in " ".join(services["livekit-server"]["command"])
    assert "--config=/rendered/sip-config.yaml" in services["livekit-sip"]["entrypoint"]
    inference = services["inference"]
    assert "${VOICESTACK_MODELS_DIR:-./models}:/models:ro" in inference["volumes"]
    config = inference["environment"]["INFERENCE_CONFIG"]
    assert config.startswith("/app/deploy/config/")
    assert (ROOT / config.removeprefix("/app/")).is_file()
    assert "./deploy/config:/app/deploy/config:ro" in inference["volumes"]
    grafana = services["grafana"]
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/voicestack.yml").read_text("utf-8")
    )
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dashboards_dir}:ro" in grafana["volumes"]


def test_ports_agree_across_compose_configs_and_prometheus() -> None:
    services = _services()
    deploy_cfg = yaml.safe_load(
        (ROOT / "deploy/config/inference.gpu.yaml").read_text(encoding="utf-8")
    )
    port = int(services["inference"]["environment"]["INFERENCE_PORT"])
    assert port == deploy_cfg["port"]
    assert services["agent"]["environment"]["INFERENCE_URL"] == f"http://inference:{port}"
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text(encoding="utf-8"))
    targets = [
        t
        for job in prom["scrape_configs"]
        for c in job.get("static_configs", [])
        for t in c["targets"]
    ]
    assert f"inference:{port}" in targets
    # Health checks probe the ports the rendered configs listen on.
    livekit_port = re.search(
        r"^port: \$\{(\w+)", (ROOT / "livekit-server.yaml").read_text("utf-8"), re.M
    )
    sip_health = re.search(
        r"^health_port: \$\{(\w+)", (ROOT / "sip-config.yaml").read_text("utf-8"), re.M
    )
    assert livekit_port and sip_health
    assert livekit_port.group(1) in " ".join(services["livekit-server"]["healthcheck"]["test"])
    assert sip_health.group(1) in " ".join(services["livekit-sip"]["healthcheck"]["test"])
    # The operator's firewall guide names every port variable of the env template.
    doc = (ROOT / "docs/production.md").read_text(encoding="utf-8")
    for var in _env_keys(ROOT / ".env.example"):
        if var.endswith(("_PORT", "_PORT_RANGE")):
            assert var in doc, var


def test_offline_and_no_development_keys() -> None:
    services = _services()
    text = COMPOSE.read_text(encoding="utf-8")
    assert "devkey" not in text and "--dev" not in text and "development" not in text
    for name in ("inference", "agent", "render", "provision", "models-download"):
        assert services[name]["environment"]["HF_HUB_OFFLINE"] == "1", name
        # onnxruntime's telemetry client resolves a Microsoft host otherwise (test_zero_egress).
        assert services[name]["environment"]["ORT_DISABLE_TELEMETRY"] == "1", name
    for key in ("GF_ANALYTICS_REPORTING_ENABLED", "GF_ANALYTICS_CHECK_FOR_UPDATES"):
        assert services["grafana"]["environment"][key] == "false"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    # The downloader is a tool (it needs a network or a mirror): never started by `up`.
    assert services["models-download"]["profiles"] == ["tools"]
    for name, service in services.items():
        if name != "models-download":
            assert "profiles" not in service, name


def test_production_inference_config_matches_the_manifest() -> None:
    data = yaml.safe_load((ROOT / "deploy/config/inference.gpu.yaml").read_text("utf-8"))
    cfg = parse_model(data, InferenceConfig, "deploy/config/inference.gpu.yaml")
    manifest = load_manifest(DEFAULT_MANIFEST)
    # The config names a set of the manifest, and the one the entrypoint checks by default.
    assert cfg.models.set_name == "gpu-en"
    gpu = manifest.model_set(cfg.models.set_name)
    assert (
        _services()["inference"]["environment"]["VOICESTACK_MODEL_SET"]
        == "${VOICESTACK_MODEL_SET:-" + cfg.models.set_name + "}"
    )
    # Its files come from the set (no per-role path mirrors it), under the mounted models dir.
    assert (cfg.models.stt_dir, cfg.models.llm_gguf, cfg.models.tts_onnx) == (None, None, None)
    inference = _services()["inference"]
    assert cfg.models.dir.is_absolute()
    assert f"${{VOICESTACK_MODELS_DIR:-./models}}:{cfg.models.dir}:ro" in inference["volumes"]
    # The entrypoint's `download_models.sh --check` looks where the server loads from.
    assert inference["environment"]["VOICESTACK_MODELS_DIR"] == str(cfg.models.dir)
    # The engines run with the set's settings: the set's defaults apply where the file is silent.
    effective = apply_set_defaults(cfg, gpu)
    assert isinstance(gpu.stt.engine, SttEngine) and isinstance(gpu.llm.engine, LlmEngine)
    assert effective.device == "cuda" == gpu.device
    assert effective.stt.compute_type == gpu.stt.engine.compute_type
    assert effective.stt.language == gpu.stt.engine.language
    # n_ctx is per call sequence; all slots together hold the manifest's context_length (its
    # GPU memory estimate is for that many KV cells).
    assert effective.llm.n_ctx * effective.scheduler.llm.slots == gpu.llm.engine.context_length


def test_dashboard_queries_only_known_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/voicestack.json").read_text("utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:voicestack|lk_agents)_[a-z0-9_]+)", e)}
    exported = {metric.name for metric in InferenceMetrics().registry.collect()}
    # The agent's per-turn histograms, served by every agent worker's /metrics.
    from prometheus_client import CollectorRegistry

    from worker.agent.turn_metrics import TurnMetricsRecorder

    agent_registry = CollectorRegistry()
    TurnMetricsRecorder(agent_registry)
    exported |= {metric.name for metric in agent_registry.collect()}
    from livekit.agents.telemetry import metrics as lk_metrics

    lk_exported = {
        getattr(lk_metrics, n)._name
        for n in dir(lk_metrics)
        if n.isupper() and hasattr(getattr(lk_metrics, n), "_name")
    }
    known = exported | lk_exported | PENDING_METRICS
    # Histograms are queried as _bucket/_sum/_count, counters as _total.
    unknown = {
        m
        for m in used
        if m not in known and re.sub(r"_(bucket|sum|count|total)$", "", m) not in known
    }
    assert not unknown, sorted(unknown)
    # Everything the issue asks to see has a panel.
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "voice-to-voice",
        "per-stage",
        "queue depth",
        "batch size",
        "capacity",
        "active calls",
    ):
        assert topic in titles, topic
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text("utf-8")
    )["datasources"][0]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["uid"]}


def test_dockerfiles_build_for_gpu_run_as_non_root_and_never_bake_models() -> None:
    inference = (ROOT / "docker/inference.Dockerfile").read_text(encoding="utf-8")
    agent = (ROOT / "docker/agent.Dockerfile").read_text(encoding="utf-8")
    assert "-DGGML_CUDA=on" in inference and "-DGGML_NATIVE=OFF" in inference
    assert "-DGGML_NATIVE=OFF" in agent
    assert "nvidia/cuda:" in inference and "onnxruntime-gpu==" in inference
    for text in (inference, agent):
        assert re.search(r"^USER 10001$", text, re.M)
        copies = re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
        assert all("models" not in c or "models/manifest.toml" in c for c in copies), copies
    ignores = sorted((ROOT / "docker").glob("*.Dockerfile.dockerignore"))
    assert len(ignores) == 2
    for ignore in ignores:
        rules = [
            line
            for line in ignore.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")
        ]
        assert rules[0] == "**"  # deny by default: no .env, no weights, no .venv in the context
        allowed = [rule[1:] for rule in rules if rule.startswith("!")]
        assert not [a for a in allowed if ".env" in a or a.startswith((".venv", ".tools"))]
        assert [a for a in allowed if a.startswith("models")] == ["models/manifest.toml"]


@pytest.mark.parametrize("role", ["inference", "agent", "render", "provision", "download"])
def test_entrypoint_knows_every_role_compose_uses(role: str) -> None:
    entrypoint = (ROOT / "docker/entrypoint.sh").read_text(encoding="utf-8")
    assert re.search(rf"^  {role}\)$", entrypoint, re.M)
