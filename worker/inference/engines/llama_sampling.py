"""Per-request sampling and text post-processing for the batched llama.cpp engine.

Everything here is pure Python + numpy and never touches llama.cpp, so it is unit-tested
without a model:

- :class:`SamplingParams`: validated per-request parameters (max tokens, temperature, top-p,
  stop strings, seed).
- :class:`TokenSampler`: greedy when ``temperature == 0``, else temperature + nucleus (top-p)
  sampling with the request's own seeded RNG, so one call's randomness never depends on which
  other calls share the batch.
- :class:`Utf8Stream`: turns token pieces (bytes) into text, holding back incomplete UTF-8
  sequences (one character can be split over several byte-level BPE tokens).
- :class:`StopStringFilter`: finds stop strings in the detokenized text and holds back any tail
  that could still become a stop string, so that no part of a stop string is ever emitted.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["SamplingParams", "StopStringFilter", "TokenSampler", "Utf8Stream"]

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of one LLM request; invalid values raise ``ValueError`` at once."""

    max_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy (argmax); > 0 scales the logits before top-p sampling."""
    top_p: float = 1.0
    """Nucleus size in (0, 1]: sample among the most likely tokens whose mass reaches ``top_p``."""
    stop: tuple[str, ...] = field(default_factory=tuple)
    """Generation ends before the first occurrence of any of these strings (not emitted)."""
    seed: int | None = None
    """Seed of the request's RNG; ``None`` draws fresh entropy. Ignored when greedy."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            # A bare string would otherwise be split into one-character stop strings.
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (0.0 <= float(self.temperature) <= 10.0):
            raise ValueError(f"temperature must be within [0, 10], got {self.temperature!r}")
        if not (0.0 < float(self.top_p) <= 1.0):
            raise ValueError(f"top_p must be within (0, 1], got {self.top_p!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_LENGTH:
                raise ValueError(
                    f"stop strings must be non-empty strings of at most {MAX_STOP_LENGTH} "
                    f"characters, got {s!r}"
                )
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")


class TokenSampler:
    """Picks the next token from one row of logits according to :class:`SamplingParams`."""

    def __init__(self, params: SamplingParams) -> None:
        self._temperature = float(params.temperature)
        self._top_p = float(params.top_p)
        self._rng = np.random.default_rng(params.seed)

    @property
    def greedy(self) -> bool:
        return self._temperature == 0.0

    def sample(self, logits: npt.NDArray[np.float32]) -> int:
        """Return the chosen token id. ``logits`` is read, never modified."""
        if self.greedy:
            # np.argmax returns the first maximum, like llama.cpp's greedy sampler.
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self._temperature
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if self._top_p < 1.0:
            order = self._top_order(probs)
            cumulative = np.cumsum(probs[order])
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            keep = int(np.searchsorted(cumulative, self._top_p, side="left")) + 1
            keep = min(keep, order.shape[0])  # rounding can leave the sum just below top_p
            chosen = order[:keep]
            kept = probs[chosen] / probs[chosen].sum()
            return int(chosen[self._rng.choice(keep, p=kept)])
        return int(self._rng.choice(probs.shape[0], p=probs))

    def _top_order(self, probs: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """Indices of the most likely tokens, most likely first, covering >= top_p mass.

        Sorting a 50k vocabulary costs ~6 ms per token; the nucleus is nearly always within
        the top few hundred, so partition first and sort only those (widening if needed).
        """
        n = probs.shape[0]
        k = 64
        while k < n:
            top = np.argpartition(probs, n - k)[n - k :]
            top = top[np.argsort(-probs[top], kind="stable")]
            if probs[top].sum() >= self._top_p:
                return top
            k *= 4
        return np.argsort(-probs, kind="stable")


class Utf8Stream:
    """Incremental UTF-8 decoding of token pieces; invalid bytes become U+FFFD."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        """Text completed by ``piece``; a partial character waits for the next piece."""
        return self._decoder.decode(piece, final=False)

    def finish(self) -> str:
        """Whatever is left; an incomplete trailing character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)


class StopStringFilter:
    """Emits generated text, stopping before the first stop string.

    Text that may be the beginning of a stop string is held back until it either completes
    the stop string (then it is dropped) or can no longer match (then it is emitted).
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = stop
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Feed newly generated text; return the part that is safe to emit now."""
        if self.stopped:
            return ""
        self._held += text
        if not self._stop:
            out, self._held = self._held, ""
            return out
        first = -1
        for s in self._stop:
            i = self._held.find(s)
            if i != -1 and (first == -1 or i < first):
                first = i
        if first != -1:
            self.stopped = True
            out, self._held = self._held[:first], ""
            return out
        keep = self._longest_stop_prefix_suffix(self._held)
        cut = len(self._held) - keep
        out, self._held = self._held[:cut], self._held[cut:]
        return out

    def flush(self) -> str:
        """Generation ended without a stop string: release the held-back text."""
        if self.stopped:
            return ""
        out, self._held = self._held, ""
        return out

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
