# syntax=docker/dockerfile:1.7
# voicestack SIP edge: Kamailio 5.6 (Debian bookworm's package) with sip-edge.cfg, in front of
# livekit-sip. Its settings come from the compose `render` service (/rendered/sip-edge.defines,
# one NAME=value per line, from config/telephony.yaml and .env); see docs/security.md.
# Build from the repository root:
#   docker build -f docker/sip-edge.Dockerfile -t voicestack-sip-edge:0.1.0 .
ARG DEBIAN_IMAGE=debian:bookworm-20241111-slim
FROM ${DEBIAN_IMAGE}
ARG KAMAILIO_VERSION=5.6.3-2
RUN apt-get update \
 && apt-get install -y --no-install-recommends "kamailio=${KAMAILIO_VERSION}" bash \
 && rm -rf /var/lib/apt/lists/*
COPY sip-edge.cfg /etc/voicestack/sip-edge.cfg
COPY docker/sip-edge.sh /usr/local/bin/sip-edge
USER 10001
ENTRYPOINT ["/usr/local/bin/sip-edge"]
