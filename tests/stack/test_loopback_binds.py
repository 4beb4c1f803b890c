"""Nothing of an idle loopback stack listens beyond the loopback interface: every TCP listener
and UDP socket of redis, livekit-server and livekit-sip is bound to 127.0.0.1 (or ::1), with one
named exceptions.

livekit-server's ICE/TCP listener binds every interface whatever its config says, and its UDP
mux binds every local address that passes ``rtc.ips``; the loopback profile turns the first off
and narrows the second (worker/stack/render.py: LOOPBACK_OVERRIDES). The exception:
livekit-sip v1.11.0 serves its health endpoint on ``:<health_port>`` (pkg/service/service.go,
no address setting), i.e. on every interface; it answers only health status. And its RTP ports
(``rtp_port`` range) bind every interface whatever ``listen_ip`` says (pkg/sip/media_port.go);
a call's port stays bound for a while after the call ends, so a stack that carried calls shows
it here (docs/security.md)."""

from __future__ import annotations

import psutil

from worker.stack.loopback import LoopbackStack

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _bound_sockets(pid: int) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            listening = conn.status == psutil.CONN_LISTEN
            udp = conn.type == 2  # SOCK_DGRAM
            if (listening or udp) and conn.laddr:
                out.append((proc.name(), conn.laddr.ip, conn.laddr.port))
    return out


def test_every_listener_is_on_loopback(livekit_stack: LoopbackStack) -> None:
    seen: list[tuple[str, str, int]] = []
    for child in livekit_stack.supervisor.status():
        assert child.pid is not None, f"{child.name} is not running"
        seen += _bound_sockets(child.pid)
    names = {name for name, _ip, _port in seen}
    assert {"redis-server", "livekit-server"} <= names, seen  # never vacuous
    health = int(livekit_stack.rendered.sip.get("health_port") or 0)
    low, high = (int(p) for p in str(livekit_stack.rendered.sip["rtp_port"]).split("-"))

    def named_exception(name: str, port: int) -> bool:
        return name == "livekit-sip" and (port == health or low <= port <= high)

    wide = [s for s in seen if s[1] not in LOOPBACK and not named_exception(s[0], s[2])]
    assert not wide, f"bound beyond loopback: {wide}"
