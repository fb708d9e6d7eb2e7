"""Spiking neurons as pure functions of (state, input), ALGORITHMS.md §3.

All membranes here are in *integer membrane units*: the converted network's weights are
integers on a per-layer grid (see :mod:`qsnn.snn.convert`), so a membrane is an exact
integer, held in a float64 tensor (exact below 2^53) so that convolutions can compute it.

A layer's thresholds form, per channel, the exact integer table ``T(i)``, i = 0 .. size - 1:
the least integer membrane whose count is above i, derived from the trained model's
parameters in exact arithmetic (:mod:`qsnn.snn.exact`). Levels below 0 are -BIG and levels at
or above ``size`` are +BIG (out of reach: the bound 2^k*B, an unbounded layer's count
limit, or beyond any reachable membrane). For an integer membrane V, ``V >= theta`` is the
same as ``V >= ceil(theta)``, so integer thresholds lose nothing (ALGORITHMS.md §3c). A
hardware neuron steps through this table as its thresholds adapt. Beside it, integers A,
D, S give the linear estimate T(i) ~ (A + i D) / S that the fast kernels use as a first
guess (|error| <= (1 + i) / 2S), always settled against the table.

A channel whose batch-norm gamma is 0 has a constant count (it ignores its input);
``constant`` holds it, or -1 for ordinary channels.

The count ``m(V)``, the number of levels i with ``V >= T(i)``, is the quantized ReLU
itself; every scheme makes its spike count converge to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from qsnn.snn.thresholds import linear_table

BIG = float(2**54)  # beyond any reachable membrane (|V| < 2^53 by construction)


class Thresholds(NamedTuple):
    """Per-channel threshold tables of one layer, in integer membrane units."""

    offset: torch.Tensor  # int64 [C]: A of the linear estimate
    step: torch.Tensor  # int64 [C]: D >= 0
    divisor: int  # S
    size: torch.Tensor  # int64 [C]: levels at or above are out of reach
    constant: torch.Tensor  # int64 [C]: fixed count, or -1 for input-driven channels
    table: torch.Tensor  # int64 [C, width]: T(i) for i < size, exact
    lookup: torch.Tensor | None = None  # float64 [C, width + 2]: T(i - 1) for i = 0 .. width + 1 (see prepared)

    @classmethod
    def linear(cls, offset, step, divisor: int, size, constant) -> Thresholds:
        """Tables that are exactly T(i) = ceil((A + i D) / S) for i < size (hand-made
        neurons, and the INT paper's rounded thresholds)."""
        offset, step, size, constant = (torch.as_tensor(v, dtype=torch.int64) for v in (offset, step, size, constant))
        table, _ = linear_table(offset.numpy(), step.numpy(), divisor, int(size.max()) if size.numel() else 1)
        return cls(offset, step, divisor, size, constant, torch.from_numpy(table))

    def to(self, device: torch.device | str) -> Thresholds:
        return self._replace(
            offset=self.offset.to(device),
            step=self.step.to(device),
            size=self.size.to(device),
            constant=self.constant.to(device),
            table=self.table.to(device),
            lookup=None if self.lookup is None else self.lookup.to(device),
        )

    def prepared(self) -> Thresholds:
        """The same tables with ``lookup``: every level's threshold as :func:`threshold`
        gives it, -BIG at level -1, +BIG from the channel's size (and at width), constant
        channels included, so that a simulator stepping many times looks each one up
        with one gather."""
        channels, width = self.table.shape
        level = torch.arange(width, device=self.table.device)
        inside = self.table.clamp(-int(BIG), int(BIG)).to(torch.float64)
        inside = torch.where(level[None, :] < self.size[:, None], inside, BIG)
        constant = self.constant[:, None]
        inside = torch.where(constant >= 0, torch.where(level[None, :] < constant, -BIG, BIG), inside)
        lookup = torch.cat([torch.full((channels, 1), -BIG, dtype=torch.float64, device=inside.device), inside,
                            torch.full((channels, 1), BIG, dtype=torch.float64, device=inside.device)], dim=1)
        return self._replace(lookup=lookup.contiguous())


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
    if th.lookup is not None:  # (prepared: one gather)
        width = th.lookup.shape[1]
        rows = _channel_view(torch.arange(th.lookup.shape[0], device=like.device) * width, like)
        return torch.take(th.lookup, (rows + (level + 1).clamp(0, width - 1)).expand(like.shape))
    size = _channel_view(th.size, like)
    inside = torch.minimum(level.clamp(min=0), (size - 1).clamp(min=0)).clamp(max=th.table.shape[1] - 1).expand(like.shape)
    channel = _channel_view(torch.arange(th.table.shape[0], device=like.device), like).expand(like.shape)
    value = th.table[channel, inside].clamp(-int(BIG), int(BIG)).to(torch.float64)
    value = torch.where(level >= size, BIG, value)
    constant = _channel_view(th.constant, like)
    fixed = constant >= 0
    if bool(fixed.any()):
        value = torch.where(fixed, torch.where(level < constant, -BIG, BIG), value)
    return torch.where(level < 0, -BIG, value)


def target_count(v: torch.Tensor, th: Thresholds) -> torch.Tensor:
    """m(V) = number of levels i with V >= T(i), exactly (int64): a search in each
    channel's sorted table, T(i) <= V <=> T(i) <= floor(V)."""
    channels = th.table.shape[0]
    per_channel = v.transpose(0, 1).reshape(channels, -1) if v.dim() > 1 else v.reshape(channels, 1)
    floor_v = torch.floor(per_channel).clamp(-BIG, BIG).to(torch.int64).contiguous()
    found = torch.searchsorted(th.table.contiguous(), floor_v, right=True)
    found = torch.minimum(found, th.size[:, None])
    found = torch.where(th.constant[:, None] >= 0, th.constant[:, None], found)
    if v.dim() > 1:
        shape = (v.shape[1], v.shape[0], *v.shape[2:])
        return found.reshape(shape).transpose(0, 1).contiguous()
    return found.reshape(v.shape)


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


# --- the neuron models by name (Scheme.neuron names one per layer role) -----------------


def _rising_step(state: NSDState, current: torch.Tensor, th: Thresholds, t: int) -> tuple[NSDState, torch.Tensor]:
    membrane = state.membrane + current
    spikes = rising_threshold_step(t, membrane, th)
    return NSDState(membrane, state.count + spikes), spikes


class NeuronModel(NamedTuple):
    """A time-stepped neuron as the step-by-step simulator runs it, Norse-style: its state
    at rest, ``init(like, thresholds)``, and one step, ``step(state, current, thresholds,
    t) -> (state, signed spikes)``, pure functions of their arguments."""

    name: str
    init: Callable[[torch.Tensor, Thresholds], NamedTuple]
    step: Callable[[NamedTuple, torch.Tensor, Thresholds, int], tuple[NamedTuple, torch.Tensor]]


NEURON_MODELS: dict[str, NeuronModel] = {
    model.name: model
    for model in (
        NeuronModel("negative-spike", lambda like, th: nsd_init(like), lambda state, i, th, t: nsd_step(state, i, th)),
        NeuronModel("adaptive", adaptive_init, lambda state, i, th, t: adaptive_step(state, i, th)),
        NeuronModel("rising-threshold", lambda like, th: nsd_init(like), _rising_step),
    )
}


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
