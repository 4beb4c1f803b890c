# syntax=docker/dockerfile:1.7
# voicestack inference server for NVIDIA GPUs: CTranslate2 (faster-whisper) with CUDA,
# llama-cpp-python built with CUDA, onnxruntime-gpu for Piper. Models are mounted at /models,
# never baked in. Build from the repository root:
#   docker build -f docker/inference.Dockerfile -t voicestack-inference:0.1.0 .
#
# Versions: the CUDA base is pinned by tag (CUDA 12.8 + cuDNN 9, what ctranslate2 4.x and
# onnxruntime-gpu 1.2x+ wheels are built against); every Python package is pinned in
# pyproject.toml, and onnxruntime-gpu to the same version as onnxruntime there.
ARG CUDA_IMAGE_TAG=12.8.1-cudnn
ARG UBUNTU=ubuntu24.04

# --- build: compile llama-cpp-python against the CUDA toolkit ---------------------------------
FROM nvidia/cuda:${CUDA_IMAGE_TAG}-devel-${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
# GGML_CUDA: llama.cpp kernels on the GPU. GGML_NATIVE=OFF: no -march=native, so the image runs
# on any x86-64 host, not only the build machine. One binary for Ampere, Ada and Hopper GPUs.
# The driver's libcuda.so.1 exists only at run time; link against the toolkit's stub.
ENV CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90" \
    FORCE_CMAKE=1 \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
RUN pip install . \
 && ONNXRUNTIME_VERSION=$(pip show onnxruntime | sed -n 's/^Version: //p') \
 && pip uninstall -y onnxruntime \
 && pip install --no-deps "onnxruntime-gpu==${ONNXRUNTIME_VERSION}" \
 && python -c "import llama_cpp, ctranslate2, onnxruntime, piper, faster_whisper"

# --- runtime -----------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_IMAGE_TAG}-runtime-${UBUNTU}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin voicestack
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Only what the processes read: configs (mounted over in compose), the manifest, entrypoints.
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
    VOICESTACK_MODELS_DIR=/models \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001
VOLUME ["/models"]
EXPOSE 8765
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["inference"]
