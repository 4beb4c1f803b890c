"""Which llama.cpp sequence holds which call's KV, and how many KV cells are spoken for.

The batched engine keeps one llama.cpp sequence (``seq_id``) per call, and between turns the
sequence keeps the KV of every token the call has seen so far, so the next turn only prefills
what changed. :class:`SequenceTable` is the pure bookkeeping of that: it never calls
llama.cpp, it tells the engine which sequences to clear, and it is unit-tested without a model.

Cell accounting (one token of one sequence occupies one KV cell). Two layouts, as llama.cpp's
``kv_unified`` flag chooses:

- shared pool (``kv_unified=True``): all sequences draw from one pool of ``n_cells``. ``used``
  cells hold cached tokens; ``reserved`` cells are promised to running requests (remaining
  prompt plus ``max_tokens``), so a running request never runs out of cells mid-reply. A new
  request is admitted only when its reservation fits, after evicting as many
  least-recently-used *idle* calls (no running request) as needed; otherwise it waits.
- one pool per sequence (``kv_unified=False``): each sequence owns ``n_cells`` cells, so a
  request fits iff its prompt + ``max_tokens`` does; eviction only frees sequence ids.

In both layouts an idle call is evicted (LRU first) when a new call needs its sequence id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Admission", "CachedSequence", "SequenceTable", "common_prefix_len"]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class CachedSequence:
    """One call's llama.cpp sequence: ``tokens[i]`` has its KV at position ``i``."""

    seq_id: int
    call_id: str
    tokens: list[int] = field(default_factory=list)
    last_used: int = 0
    busy: bool = False
    """A request of this call is admitted (prefilling or decoding); busy sequences are never
    evicted."""
    reserved: int = 0
    """Cells the running request may still add (remaining prompt + remaining max tokens)."""


@dataclass(frozen=True)
class Admission:
    """What the engine must do to start a request, in this order.

    1. clear every sequence in ``evicted`` completely;
    2. if ``copy_from`` is set: clear ``seq_id`` and copy positions ``< reused`` of sequence
       ``copy_from`` into it (a prefix another call already computed, e.g. the system prompt);
       else remove positions ``>= reused`` of ``seq_id``;
    3. prefill ``prompt[reused:]`` into ``seq_id``.
    """

    seq_id: int
    reused: int
    evicted: tuple[int, ...]
    copy_from: int | None = None


class SequenceTable:
    """Assigns sequence ids to calls and accounts for KV cells; one owner, not thread-safe.

    ``n_cells`` is the size of the shared pool (``shared=True``) or of each sequence's own pool.
    """

    def __init__(
        self, n_seq: int, n_cells: int, *, shared: bool = True, share_prefixes: bool = False
    ) -> None:
        if n_seq < 1 or n_cells < 1:
            raise ValueError(f"need n_seq >= 1 and n_cells >= 1, got {n_seq} and {n_cells}")
        self.n_seq = n_seq
        self.n_cells = n_cells
        self.shared = shared
        self.share_prefixes = share_prefixes
        """Let a new request copy a longer prompt prefix from another call's sequence."""
        self.evictions = 0
        self._by_call: dict[str, CachedSequence] = {}
        self._free_ids: list[int] = list(range(n_seq))
        self._tick = 0

    def get(self, call_id: str) -> CachedSequence | None:
        """The call's cached sequence, if it still has one."""
        return self._by_call.get(call_id)

    def sequences(self) -> list[CachedSequence]:
        """Every sequence that holds a call (busy or idle)."""
        return list(self._by_call.values())

    @property
    def cells_used(self) -> int:
        return sum(len(e.tokens) for e in self._by_call.values())

    @property
    def cells_reserved(self) -> int:
        return sum(e.reserved for e in self._by_call.values() if e.busy)

    @property
    def cells_free(self) -> int:
        """Unpromised cells of the shared pool (of the whole cache when not shared)."""
        total = self.n_cells if self.shared else self.n_cells * self.n_seq
        return total - self.cells_used - self.cells_reserved

    def admit(self, call_id: str, prompt: Sequence[int], max_new: int) -> Admission | None:
        """Reserve a sequence and cells for a request, or return ``None`` if it must wait.

        Reuses the longest prefix of the call's cached tokens, but always leaves at least one
        prompt token to prefill (its logits give the first generated token).
        """
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + max_new > self.n_cells:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + max_tokens {max_new} exceeds the "
                f"{self.n_cells} KV cells available to one sequence"
            )
        entry = self._by_call.get(call_id)
        if entry is not None and entry.busy:
            raise RuntimeError(f"call {call_id!r} already has a running request")
        own = 0
        if entry is not None:
            own = min(common_prefix_len(entry.tokens, prompt), len(prompt) - 1)
        # Another call may hold a longer prefix (calls share a system prompt): copy its KV
        # instead of prefilling it again. The donor is never evicted by this admission.
        donor: CachedSequence | None = None
        reused = own
        for cand in self._by_call.values() if self.share_prefixes else ():
            if cand is entry:
                continue
            common = min(common_prefix_len(cand.tokens, prompt), len(prompt) - 1)
            if common > reused:
                donor, reused = cand, common
        plan = self._plan(call_id, entry, prompt, max_new, reused, donor)
        if plan is None and donor is not None:
            # Keeping the donor blocked the only evictable sequence: admit without sharing.
            plan = self._plan(call_id, entry, prompt, max_new, own, None)
        return plan

    def _plan(
        self,
        call_id: str,
        entry: CachedSequence | None,
        prompt: Sequence[int],
        max_new: int,
        reused: int,
        donor: CachedSequence | None,
    ) -> Admission | None:
        need = len(prompt) - reused + max_new
        free = self.cells_free + (len(entry.tokens) - reused if entry is not None else 0)
        if not self.shared:
            free = need  # the sequence's own pool always fits a request checked above
        need_seq = entry is None and not self._free_ids
        victims: list[CachedSequence] = []
        for cand in sorted(self._by_call.values(), key=lambda e: e.last_used):
            if free >= need and not need_seq:
                break
            if cand.busy or cand is entry or cand is donor:
                continue
            victims.append(cand)
            free += len(cand.tokens)
            need_seq = False
        if free < need or need_seq:
            return None  # nothing evicted: a request that cannot start changes no cache
        for victim in victims:
            del self._by_call[victim.call_id]
            self._free_ids.append(victim.seq_id)
        self.evictions += len(victims)
        if entry is None:
            self._free_ids.sort()
            entry = CachedSequence(seq_id=self._free_ids.pop(0), call_id=call_id)
            self._by_call[call_id] = entry
        entry.tokens = list(prompt[:reused])
        entry.busy = True
        entry.reserved = need
        entry.last_used = self._next_tick()
        return Admission(
            entry.seq_id,
            reused,
            tuple(v.seq_id for v in victims),
            donor.seq_id if donor is not None else None,
        )

    def append(self, call_id: str, tokens: Sequence[int]) -> None:
        """Tokens of a running request were decoded into its sequence."""
        entry = self._by_call[call_id]
        entry.tokens.extend(tokens)
        entry.reserved = max(0, entry.reserved - len(tokens))

    def release(self, call_id: str, keep: int | None = None) -> None:
        """The call's request ended; its reservation returns to the pool.

        ``keep`` truncates the cached tokens (the engine removes the same positions from the
        KV); ``None`` keeps them all for the call's next turn.
        """
        entry = self._by_call[call_id]
        if keep is not None:
            del entry.tokens[keep:]
        entry.busy = False
        entry.reserved = 0
        entry.last_used = self._next_tick()

    def drop(self, call_id: str) -> int | None:
        """Forget the call entirely; returns the sequence id the engine must clear, if any."""
        entry = self._by_call.pop(call_id, None)
        if entry is None:
            return None
        self._free_ids.append(entry.seq_id)
        return entry.seq_id

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick
