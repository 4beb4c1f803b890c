"""The whole stack on 127.0.0.1 with free ports, as one synchronous context manager.

Used by the test suite's session fixture and usable by the demo::

    with loopback_stack(run_dir, components=("redis", "livekit", "sip")) as stack:
        stack.livekit_url, stack.api_key, stack.api_secret, stack.sip_address ...

Extra children (inference server, agent workers) can be appended through ``extra_specs``:
a callable receiving the rendered stack and run files, so their specs can point at the ports
and keys this run picked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.config.stack import Profile
from worker.stack.plan import CORE_COMPONENTS, build_plan
from worker.stack.process import ProcessSpec
from worker.stack.render import RenderedStack, RunFiles, render_stack, write_run_files
from worker.stack.supervisor import BackgroundSupervisor

__all__ = ["LoopbackStack", "loopback_stack"]


@dataclass(frozen=True)
class LoopbackStack:
    """Addresses and credentials of a running loopback stack."""

    rendered: RenderedStack
    files: RunFiles
    supervisor: BackgroundSupervisor
    components: tuple[str, ...]

    @property
    def livekit_url(self) -> str:
        """``http://127.0.0.1:<port>`` for livekit-api."""
        return self.rendered.livekit_url

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:<port>`` for agents and SDK clients."""
        return self.rendered.ws_url

    @property
    def api_key(self) -> str:
        return self.rendered.api_key

    @property
    def api_secret(self) -> str:
        return self.rendered.api_secret

    @property
    def redis_address(self) -> tuple[str, int]:
        return self.rendered.redis_address

    @property
    def sip_address(self) -> tuple[str, int] | None:
        """Where to send INVITEs (the SIP edge when it runs, else livekit-sip itself), or None
        when livekit-sip is not part of this stack."""
        if "sip" not in self.components:
            return None
        return (
            self.rendered.sip_edge_address
            if "sip-edge" in self.components
            else (self.rendered.sip_address)
        )

    @property
    def livekit_sip_address(self) -> tuple[str, int] | None:
        """livekit-sip's own SIP address (behind the edge), or None without livekit-sip."""
        return self.rendered.sip_address if "sip" in self.components else None

    @property
    def run_dir(self) -> Path:
        return self.files.run_dir


@contextlib.contextmanager
def loopback_stack(
    run_dir: Path,
    components: Sequence[str] = CORE_COMPONENTS,
    env: Mapping[str, str] | None = None,
    extra_specs: Callable[[RenderedStack, RunFiles], Sequence[ProcessSpec]] | None = None,
    tools_dir: Path | None = None,
) -> Iterator[LoopbackStack]:
    """Render the shipped configs for the loopback profile into ``run_dir``, start the
    components (and ``extra_specs``) under a supervisor, yield, then stop everything."""
    rendered = render_stack(Profile.LOOPBACK, dict(env or {}))
    files = write_run_files(rendered, run_dir)
    specs = build_plan(rendered, files, components, tools_dir)
    if extra_specs is not None:
        specs += list(extra_specs(rendered, files))
    with BackgroundSupervisor(specs, run_dir) as sup:
        yield LoopbackStack(rendered, files, sup, tuple(components))
