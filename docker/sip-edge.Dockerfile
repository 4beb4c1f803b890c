# syntax=docker/dockerfile:1.7
# voicestack SIP edge: Kamailio 5.6 (Debian bookworm's package) with sip-edge.cfg, in front of
# livekit-sip, and the media relay rtpengine (Debian's rtpengine-daemon, userspace: no kernel
# module) that the edge drives; compose runs the image twice (sip-edge, rtp-relay). Settings
# come from the compose `render` service (/rendered/sip-edge.defines, one NAME=value per line;
# /rendered/rtp-relay.args, one argument per line), from config/telephony.yaml and .env; see
# docs/security.md.
# Build from the repository root:
#   docker build -f docker/sip-edge.Dockerfile -t voicestack-sip-edge:0.1.0 .
ARG DEBIAN_IMAGE=debian:bookworm-20241111-slim
FROM ${DEBIAN_IMAGE}
ARG KAMAILIO_VERSION=5.6.3-2
ARG RTPENGINE_VERSION=10.5.3.5-1+deb12u1
RUN apt-get update \
 && apt-get install -y --no-install-recommends "kamailio=${KAMAILIO_VERSION}" \
      "rtpengine-daemon=${RTPENGINE_VERSION}" bash \
 && rm -rf /var/lib/apt/lists/*
COPY sip-edge.cfg /etc/voicestack/sip-edge.cfg
COPY docker/sip-edge.sh /usr/local/bin/sip-edge
COPY docker/rtp-relay.sh /usr/local/bin/rtp-relay
USER 10001
ENTRYPOINT ["/usr/local/bin/sip-edge"]
