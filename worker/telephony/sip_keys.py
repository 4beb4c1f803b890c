"""The keys livekit-sip v1.11.0 understands in its YAML config.

livekit-sip decodes its config without strict mode, so a misspelt key is silently ignored and
its default used. This schema mirrors ``pkg/config/config.go`` of livekit/sip v1.11.0 (and the
``redis``/``logging``/``tls`` structs from livekit/protocol it embeds) so that
``voicestack check-config`` can reject any key livekit-sip would drop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SIP_CONFIG_SCHEMA", "unknown_keys"]

# A nested mapping: key -> None (any value) | schema of a sub-mapping | [schema] for a list of
# mappings. "*" as a schema means "a mapping with free-form keys" (e.g. ``codecs``).
_ANY = None
_FREE = "*"


def _keys(names: str) -> dict[str, Any]:
    return dict.fromkeys(names.split(), _ANY)


_REDIS_TLS = _keys(
    """
    enabled insecure server_name ca_cert_file client_cert_file client_key_file
    """
)
_REDIS = {
    **_keys(
        """
        address username password db use_tls sentinel_master_name sentinel_username
        sentinel_password sentinel_addresses cluster_addresses dial_timeout read_timeout
        write_timeout max_redirects pool_timeout pool_size
        """
    ),
    "tls": _REDIS_TLS,
}
_LOGGING = _keys(
    """
    json level sample component_levels sample_initial sample_interval item_sample_seconds
    item_sample_initial item_sample_interval
    """
)
_SIP_TLS = {
    **_keys(
        """
        port port_listen key_log min_version max_version cipher_suites alpn
        """
    ),
    "certs": [{"cert_file": _ANY, "key_file": _ANY}],
}

SIP_CONFIG_SCHEMA: dict[str, Any] = {
    **_keys(
        """
        api_key api_secret ws_url health_port prometheus_port pprof_port sip_port
        sip_port_listen sip_hostname outbound_route_headers sip_ringing_interval rtp_port
        cluster_id max_cpu_utilization max_active_calls sip_trunk_ids use_external_ip
        local_net nat_1_to_1_ip listen_ip udp_max_payload media_use_external_ip
        media_nat_1_to_1_ip media_timeout media_timeout_initial symmetric_rtp
        rtp_draining_idle_timeout rtp_draining_duration ignore_local_addr_in_sdp
        hide_inbound_port disable_rejected_invite_cache add_record_route audio_dtmf
        enable_jitter_buffer enable_jitter_buffer_prob jaeger_url
        """
    ),
    "redis": _REDIS,
    "logging": _LOGGING,
    "tls": _SIP_TLS,
    "tcp": {"dial_port": _ANY},
    "codecs": _FREE,
    "experimental": {"inbound_wait_ack": _ANY},
}


def unknown_keys(data: Mapping[str, Any], schema: Any = None, prefix: str = "") -> list[str]:
    """Dotted paths of every key in ``data`` that ``schema`` (default: livekit-sip's) lacks."""
    schema = SIP_CONFIG_SCHEMA if schema is None else schema
    found: list[str] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            found.append(path)
            continue
        sub = schema[key]
        if isinstance(sub, dict) and isinstance(value, Mapping):
            found += unknown_keys(value, sub, f"{path}.")
        elif isinstance(sub, list) and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    found += unknown_keys(item, sub[0], f"{path}[{i}].")
    return found
