"""A network namespace whose only way out is a veth link we capture on.

Every process started inside it (``exec_prefix``) has loopback plus one IPv4 and one IPv6 address
with default routes through the veth, so any attempt to reach the outside (DNS, telemetry, STUN,
a model hub) leaves as a packet on the host end of the link, where ``dumpcap`` records it. The
host's own traffic (package mirrors, other sessions) never crosses that link, so a capture on it
is a clean record of what the namespace sent. Needs root and iproute2 (``ip netns``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Captured", "Namespace", "captured_namespace", "kernel_chatter"]

# Benchmarking / documentation prefixes: routable in form, owned by nobody.
_HOST_V4, _NS_V4 = "198.18.77.1", "198.18.77.2"
_HOST_V6, _NS_V6 = "fd00:77::1", "fd00:77::2"


@dataclass(frozen=True)
class Namespace:
    name: str
    host_link: str

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix a command line with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]


@dataclass(frozen=True)
class Captured:
    """One packet that left the namespace, as tshark summarises it."""

    src: str
    dst: str
    protocol: str
    info: str


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def kernel_chatter(packet: Captured) -> bool:
    """Link-layer housekeeping the kernel itself sends (ARP, IPv6 neighbour discovery, router
    solicitation, IGMP/MLD membership reports): it carries no data and never passes a router.
    A membership report is how the kernel announces that a socket joined a multicast group:
    livekit-sip's WebRTC library (pion) opens an mDNS socket, so its joins to 224.0.0.251
    appear here; an mDNS *query* would be UDP and is not chatter."""
    if packet.protocol == "ARP":
        return True
    if packet.protocol.startswith("IGMP") and "Membership" in packet.info:
        return True
    if packet.protocol != "ICMPv6":
        return False
    kinds = (
        "Neighbor Solicitation",
        "Neighbor Advertisement",
        "Router Solicitation",
        "Multicast Listener Report",
    )
    return any(k in packet.info for k in kinds)


def _read(pcap: Path) -> list[Captured]:
    out = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(pcap),
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-e",
            "_ws.col.Source",
            "-e",
            "_ws.col.Destination",
            "-e",
            "_ws.col.Protocol",
            "-e",
            "_ws.col.Info",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    packets = []
    for line in out.splitlines():
        src, dst, proto, info = [*line.split("\t"), "", "", ""][:4]
        packets.append(Captured(src, dst, proto, info))
    return packets


@contextmanager
def captured_namespace(work: Path) -> Iterator[tuple[Namespace, list[Captured]]]:
    """Create the namespace and start the capture; on exit stop it and fill the yielded list
    with every packet that left (kernel chatter included: filter with :func:`kernel_chatter`)."""
    for tool in ("ip", "dumpcap", "tshark"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: scripts/setup.sh installs it")
    tag = f"{os.getpid() % 100000}"
    ns = Namespace(name=f"vs-egress-{tag}", host_link=f"vseg{tag}h")
    inner = f"vseg{tag}n"
    pcap = work / "egress.pcapng"
    work.mkdir(parents=True, exist_ok=True)
    packets: list[Captured] = []
    _ip("netns", "add", ns.name)
    try:
        _ip("link", "add", ns.host_link, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns.name)
        _ip("addr", "add", f"{_HOST_V4}/30", "dev", ns.host_link)
        _ip("-6", "addr", "add", f"{_HOST_V6}/64", "dev", ns.host_link, "nodad")
        _ip("link", "set", ns.host_link, "up")
        _ip("link", "set", "lo", "up", ns=ns.name)
        _ip("addr", "add", f"{_NS_V4}/30", "dev", inner, ns=ns.name)
        _ip("-6", "addr", "add", f"{_NS_V6}/64", "dev", inner, "nodad", ns=ns.name)
        _ip("link", "set", inner, "up", ns=ns.name)
        _ip("route", "add", "default", "via", _HOST_V4, ns=ns.name)
        _ip("-6", "route", "add", "default", "via", _HOST_V6, ns=ns.name)
        # dumpcap writes as root into a directory pytest owns; -q: no per-packet console output.
        cap = subprocess.Popen(
            ["dumpcap", "-q", "-i", ns.host_link, "-w", str(pcap)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not pcap.exists() and time.monotonic() < deadline:
            if cap.poll() is not None:
                why = cap.stderr.read().decode() if cap.stderr else ""
                raise RuntimeError(f"dumpcap failed: {why}")
            time.sleep(0.1)
        try:
            yield ns, packets
        finally:
            time.sleep(1.0)  # let the last packets reach the file
            cap.send_signal(signal.SIGINT)
            cap.wait(timeout=10)
        packets.extend(_read(pcap))
    finally:
        subprocess.run(["ip", "link", "del", ns.host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
