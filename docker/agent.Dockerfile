# syntax=docker/dockerfile:1.7
# voicestack agent worker (livekit-agents), CPU only: it runs Silero VAD and talks to the
# inference server; it also renders the LiveKit configs and provisions SIP trunks in compose.
# Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t voicestack-agent:0.1.0 .
# Python packages are pinned in pyproject.toml; the base image by tag.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
# llama-cpp-python is a dependency of the package (the agent never loads an LLM); build it
# without -march=native so the image runs on any x86-64 host.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" FORCE_CMAKE=1
RUN pip install . && python -c "import livekit.agents, livekit.plugins.silero"

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin voicestack \
 && mkdir -p /rendered && chown 10001:10001 /rendered
# /rendered: an empty named volume mounted there takes this owner, so `render` can write to it.
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY livekit-server.yaml sip-config.yaml ./
COPY config ./config
COPY deploy/config ./deploy/config
COPY models/manifest.toml ./models/manifest.toml
COPY docker/entrypoint.sh docker/render_configs.py docker/agent_config.py ./docker/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    VOICESTACK_MODEL_MANIFEST=/app/models/manifest.toml \
    VOICESTACK_MODELS_DIR=/models
USER 10001
EXPOSE 8081
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["agent"]
