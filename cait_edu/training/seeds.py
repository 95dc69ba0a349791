"""Randomness derived, not stored: every random draw of a training step is seeded from
``(seed, stream, step, rank)``.

This is what makes a resumed run continue bit for bit: the loop re-seeds the global torch RNG
(dropout, stochastic depth) and a fresh generator for Mixup/CutMix before every step from these
numbers alone, and the data pipeline seeds each sample's augmentation from ``(seed, epoch,
position)`` (:class:`cait_edu.data.EpochSampler`). A checkpoint therefore needs no RNG state, and
it does not matter how many GPUs wrote it or how many worker processes load the data.
"""
from __future__ import annotations

__all__ = ["derived_seed", "STEP_STREAM", "MIX_STREAM", "TEACHER_STREAM"]

_M64 = (1 << 64) - 1

STEP_STREAM = 1
"""Seeds the global torch RNG before a step (stochastic depth, dropout)."""
MIX_STREAM = 2
"""Seeds the generator that draws Mixup/CutMix lambda, boxes and partners."""
TEACHER_STREAM = 3
"""Seeds the random initialisation of a teacher built without weights (tests and demonstrations)."""


def _mix64(x: int) -> int:
    """SplitMix64's finaliser (Steele, Lea, Flood 2014) on a Python int, mod 2^64."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed (valid for ``torch.manual_seed``) that is a pure function of the integers ``parts``.

    Neighbouring inputs (step 41 and 42) give unrelated seeds: each part is hashed into the chain."""
    h = 0
    for p in parts:
        h = _mix64(h ^ (int(p) & _M64))
    return h >> 1
