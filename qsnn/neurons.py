"""Spiking neurons as pure functions of (state, input), ALGORITHMS.md §3.

All membranes here are in *integer membrane units*: the converted network's weights are
integers on a per-layer grid (see :mod:`qsnn.conversion`), so a membrane is an exact
integer, held in a float64 tensor (exact below 2^53) so that convolutions can compute it.

A layer's thresholds form, per channel, the integer table

    T(i) = ceil((A + i * D) / S)        i = 0, 1, ..., size - 1

with integers A (offset), D (step) and S (divisor): a fixed-point accumulator that starts
at A and adds D per count level, exactly as hardware would adapt a threshold. Levels
below 0 are -BIG and levels at or above ``size`` are +BIG (out of reach: the bound
2^k*B, or beyond any reachable membrane). For an integer membrane V, ``V >= theta`` is
the same as ``V >= ceil(theta)``, so integer thresholds lose nothing (ALGORITHMS.md §3c).
Conversion picks S = 2^F with as many fractional bits F as keep |A| + size * D below
2^62 (int64, exact), or
S = 10000 to reproduce the INT paper's original rounding.

A channel whose batch-norm gamma is 0 has a constant count (it ignores its input);
``constant`` holds it, or -1 for ordinary channels.

The count ``m(V)``, the number of levels i with ``V >= T(i)``, is the quantized ReLU
itself; every scheme makes its spike count converge to it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

BIG = float(2**54)  # beyond any reachable membrane (|V| < 2^53 by construction)


class Thresholds(NamedTuple):
    """Per-channel threshold tables of one layer, in integer membrane units."""

    offset: torch.Tensor  # int64 [C]: A
    step: torch.Tensor  # int64 [C]: D >= 0
    divisor: int  # S
    size: torch.Tensor  # int64 [C]: levels at or above are out of reach
    constant: torch.Tensor  # int64 [C]: fixed count, or -1 for input-driven channels

    def to(self, device: torch.device | str) -> Thresholds:
        return self._replace(
            offset=self.offset.to(device),
            step=self.step.to(device),
            size=self.size.to(device),
            constant=self.constant.to(device),
        )


def _channel_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast per-channel values [C] against a batch (B, C, ...) or a single neuron map."""
    shape = [1] * like.dim()
    shape[1 if like.dim() > 1 else 0] = -1
    return values.view(shape)


def threshold(th: Thresholds, level: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """T(level) for every neuron of ``like``, as float64 holding exact integers.

    ``level`` is an integer tensor broadcastable to ``like`` (or an int). Levels below 0
    give -BIG and levels at or above the channel's size +BIG, so comparisons at the ends
    of the table need no special cases. Constant channels: -BIG below their count, +BIG
    from it on.
    """
    level = torch.as_tensor(level, dtype=torch.int64, device=like.device)
    size = _channel_view(th.size, like)
    inside = level.clamp(min=0)
    inside = torch.minimum(inside, size)
    raw = _channel_view(th.offset, like) + inside * _channel_view(th.step, like)
    value = -torch.div(-raw, th.divisor, rounding_mode="floor")  # ceil(raw / S), exact
    value = value.clamp(-int(BIG), int(BIG)).to(torch.float64)
    constant = _channel_view(th.constant, like)
    fixed = constant >= 0
    if bool(fixed.any()):
        value = torch.where(fixed, torch.where(level < constant, -BIG, BIG), value)
    value = torch.where(level < 0, -BIG, value)
    return torch.where(level >= size, BIG, value)


def target_count(v: torch.Tensor, th: Thresholds) -> torch.Tensor:
    """m(V) = number of levels i with V >= T(i), exactly (int64).

    T(i) <= V  <=>  (A + i D) / S <= floor(V), which gives the count in closed form; a
    correction against the exact table absorbs the float rounding of that estimate (T is
    non-decreasing in i, so the count is unique).
    """
    offset = _channel_view(th.offset, v).to(torch.float64)
    step = _channel_view(th.step, v).to(torch.float64)
    size = _channel_view(th.size, v)
    raw = torch.floor(v) * float(th.divisor) - offset
    flat = torch.where(raw >= 0, BIG, 0.0)  # a zero step: every level at once, or none
    estimate = torch.where(step > 0, torch.floor(raw / step) + 1, flat)
    estimate = torch.nan_to_num(estimate, nan=0.0).clamp(0.0, BIG)
    count = torch.minimum(estimate.to(torch.int64), size)
    constant = _channel_view(th.constant, v)
    count = torch.where(constant >= 0, constant, count)
    for _ in range(64):
        up = (count < size) & (threshold(th, count, v) <= v)
        down = (count > 0) & (threshold(th, count - 1, v) > v)
        if not bool(up.any()) and not bool(down.any()):
            return count
        count = count + up.to(torch.int64) - down.to(torch.int64)
    raise RuntimeError("target_count did not converge: the threshold table is not monotone")


# --- NSD: integrate-and-fire with negative spikes (ALGORITHMS.md §3a) -------------------


class NSDState(NamedTuple):
    """Membrane V (sum of all input so far) and count c (positive minus negative spikes)."""

    membrane: torch.Tensor  # float64
    count: torch.Tensor  # int64


def nsd_init(like: torch.Tensor) -> NSDState:
    return NSDState(
        torch.zeros_like(like, dtype=torch.float64), torch.zeros_like(like, dtype=torch.int64)
    )


def nsd_step(state: NSDState, current: torch.Tensor, th: Thresholds) -> tuple[NSDState, torch.Tensor]:
    """One time step: integrate, then emit at most one spike.

    +1 if V >= T(c) (and c < N when bounded); -1 if c > 0 and V < T(c - 1); else 0.
    Returns the new state and the signed spikes (int64).
    """
    membrane = state.membrane + current
    count = state.count
    positive = membrane >= threshold(th, count, membrane)
    negative = membrane < threshold(th, count - 1, membrane)
    spikes = positive.to(torch.int64) - negative.to(torch.int64)
    return NSDState(membrane, count + spikes), spikes


# --- INT: integer neurons with adapting thresholds (ALGORITHMS.md §3c) ------------------


class AdaptiveState(NamedTuple):
    """Integer membrane, count, and the two adapting thresholds T(c) and T(c - 1)."""

    membrane: torch.Tensor  # float64 exact integers
    count: torch.Tensor  # int64
    upper: torch.Tensor  # T(count), +BIG at the top of a bounded table
    lower: torch.Tensor  # T(count - 1), -BIG at count 0


def adaptive_init(like: torch.Tensor, th: Thresholds) -> AdaptiveState:
    count = torch.zeros_like(like, dtype=torch.int64)
    return AdaptiveState(
        torch.zeros_like(like, dtype=torch.float64),
        count,
        threshold(th, count, like),
        threshold(th, count - 1, like),
    )


def adaptive_step(
    state: AdaptiveState, current: torch.Tensor, th: Thresholds
) -> tuple[AdaptiveState, torch.Tensor]:
    """One step of the INT hidden neuron: fire +1 if V >= upper, -1 if V < lower.

    After a +1 spike both thresholds move up one level (lower takes upper's value, upper
    the next table entry); after a -1 spike both move down. All state stays integer.
    """
    membrane = state.membrane + current
    positive = membrane >= state.upper
    negative = membrane < state.lower
    spikes = positive.to(torch.int64) - negative.to(torch.int64)
    count = state.count + spikes
    moved = spikes != 0
    upper = torch.where(moved, threshold(th, count, membrane), state.upper)
    lower = torch.where(moved, threshold(th, count - 1, membrane), state.lower)
    return AdaptiveState(membrane, count, upper, lower), spikes


def rising_threshold_step(
    step_index: int, membrane: torch.Tensor, th: Thresholds
) -> torch.Tensor:
    """INT encoding neuron: at step t it fires iff t < N and V >= T(t) (threshold rises by d).

    ``membrane`` is the constant input received at t = 0. Returns spikes in {0, 1}.
    """
    return (membrane >= threshold(th, step_index, membrane)).to(torch.int64)


# --- SG: scatter-and-gather, one time step (ALGORITHMS.md §3b) ---------------------------


def scatter_gather(
    v: torch.Tensor,
    th: Thresholds,
    drop_ratio: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gathered count of the N binary neurons sharing membrane V (binary neuron i fires iff
    V >= T(i)); with ``drop_ratio`` r each fired binary neuron's spike is lost with
    probability r. The N copies are never materialized: the fired ones are exactly the
    first m(V), so the gathered count is m(V), or a Binomial(m, 1 - r) draw under noise.
    """
    return drop_spikes(target_count(v, th), drop_ratio, generator)


def drop_spikes(count: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each of ``count`` binary spikes survives with probability 1 - ratio (SG noise).

    Drawn on the CPU (from a CPU generator), so a GPU run drops the very same spikes."""
    if ratio <= 0.0:
        return count
    counts = count.to("cpu", torch.float64)
    keep = torch.full(counts.shape, 1.0 - ratio, dtype=torch.float64)
    return torch.binomial(counts, keep, generator=generator).to(device=count.device, dtype=torch.int64)
