"""The quantized ANN's decisions in exact arithmetic, from the model's own parameters.

Every float32 (and float64) parameter is a dyadic rational, so a hidden block's rule
(ALGORITHMS.md §1)

    count >= i + 1   <=>   2^k * (gamma (z - mu) / sqrt(var + eps) + beta) >= i + 1/2

can be decided without rounding: with r = (i + 1/2) / 2^k - beta and q = var + eps it reads
gamma (z - mu) >= r sqrt(q), and a comparison x >= r sqrt(q) of rationals x, r is decided
by signs and squares (x^2 against r^2 q). ``eps`` is the block's own ``norm.eps`` (the
float64 1e-5 by default) taken as the exact value it holds.

This module gives
- :class:`ChannelRule`: one channel's rule, with its exact count for a rational z and
  the least integer membrane that reaches a level (the spiking thresholds, in integers);
- :func:`threshold_table`: a layer's exact integer threshold table;
- :func:`round_half_up` etc.: exact roundings used for the INT paper's scaled thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

MEMBRANE_LIMIT = 2**53  # no membrane reaches this (the integer grid keeps them below)
PRECISION_BITS = 128  # fixed-point bits of the fast table pass (see threshold_table)


def _floor_sqrt(value: Fraction) -> int:
    """floor(sqrt(value)) for a rational value >= 0, exactly."""
    n, d = value.numerator, value.denominator
    return math.isqrt(n * d) // d


def _at_most(a: Fraction, sign: int, square: Fraction, t: Fraction | int) -> bool:
    """Whether a + sign * sqrt(square) <= t, exactly (square >= 0, sign in -1, 0, 1)."""
    u = t - a
    if sign == 0 or square == 0:
        return u >= 0
    if sign > 0:  # sqrt(square) <= u
        return u >= 0 and square <= u * u
    return u >= 0 or square >= u * u  # -sqrt(square) <= u


def ceil_of(a: Fraction, sign: int, square: Fraction) -> int:
    """ceil(a + sign * sqrt(square)), exactly: the least integer t with a + sign*sqrt(square) <= t."""
    root = _floor_sqrt(square) if sign else 0
    t = math.floor(a) + sign * root  # within 2 of the answer
    while not _at_most(a, sign, square, t):
        t += 1
    while _at_most(a, sign, square, t - 1):
        t -= 1
    return t


def floor_of(a: Fraction, sign: int, square: Fraction) -> int:
    """floor(a + sign * sqrt(square)), exactly."""
    return -ceil_of(-a, -sign, square)


def round_half_up(a: Fraction, sign: int, square: Fraction) -> int:
    """floor(a + sign * sqrt(square) + 1/2), exactly."""
    return floor_of(a + Fraction(1, 2), sign, square)


@dataclass(frozen=True)
class ChannelRule:
    """The quantized ReLU of one channel: count n(z) = min(floor(2^k relu(y) + 1/2), N),
    y = gamma (z - mu) / sqrt(var + eps) + beta, every parameter an exact rational."""

    gamma: Fraction
    beta: Fraction
    mean: Fraction
    var: Fraction
    eps: Fraction
    k: int
    levels: int | None  # N = 2^k B, or None when unbounded

    @classmethod
    def from_floats(cls, gamma, beta, mean, var, eps, k: int, levels: int | None) -> ChannelRule:
        return cls(Fraction(float(gamma)), Fraction(float(beta)), Fraction(float(mean)), Fraction(float(var)),
                   Fraction(float(eps)), k, levels)

    @property
    def q(self) -> Fraction:
        return self.var + self.eps

    def _r(self, level: int) -> Fraction:
        return Fraction(2 * level + 1, 2 << self.k) - self.beta

    def reaches(self, z: Fraction, level: int) -> bool:
        """Whether pre-activation z gives a count above ``level`` (bound ignored), exactly."""
        x = self.gamma * (z - self.mean)
        r = self._r(level)
        if r <= 0:
            return x >= 0 or x * x <= r * r * self.q
        return x >= 0 and x * x >= r * r * self.q

    def constant_count(self) -> int | None:
        """The count of a channel with gamma == 0 (it ignores its input), else None."""
        if self.gamma != 0:
            return None
        count = max(0, math.floor(self.beta * (1 << self.k) + Fraction(1, 2)))
        return count if self.levels is None else min(count, self.levels)

    def count(self, z: Fraction) -> int:
        """The exact count n(z) of the definition (the independent reference for tests)."""
        fixed = self.constant_count()
        if fixed is not None:
            return fixed
        y = float(self.gamma * (z - self.mean)) / math.sqrt(float(self.q)) + float(self.beta)
        level = max(0, math.floor(y * (1 << self.k) + 0.5) - 2)  # a guess near the answer
        if self.levels is not None:
            level = min(level, self.levels)
        while level > 0 and not self.reaches(z, level - 1):
            level -= 1
        while (self.levels is None or level < self.levels) and self.reaches(z, level):
            level += 1
        return level

    def threshold_terms(self, per_unit: Fraction, level: int) -> tuple[Fraction, int, Fraction]:
        """(a, sign, square) with the threshold of ``level`` in membrane units V = z * per_unit
        (z * per_unit * sign(gamma): a channel with gamma < 0 has its weights negated)
        being a + sign * sqrt(square). Needs gamma != 0."""
        g = abs(self.gamma)
        mean = self.mean if self.gamma > 0 else -self.mean
        r = self._r(level)
        a = per_unit * mean
        square = per_unit * per_unit * r * r * self.q / (g * g)
        return a, (r > 0) - (r < 0), square

    def least_membrane(self, per_unit: Fraction, level: int) -> int:
        """T(level): the least integer membrane (in units of 1 / per_unit, sign-folded) whose
        count is above ``level``."""
        return ceil_of(*self.threshold_terms(per_unit, level))

    def base_and_spacing(self, per_unit: Fraction) -> tuple[tuple[Fraction, int, Fraction], Fraction]:
        """theta_i = theta_0 + i * d in membrane units: theta_0 as (a, sign, square), and d^2."""
        g = abs(self.gamma)
        spacing_square = per_unit * per_unit * self.q / (g * g * (1 << (2 * self.k)))
        return self.threshold_terms(per_unit, 0), spacing_square


def threshold_table(rules: list[ChannelRule], per_unit: Fraction, size_cap: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact integer threshold table of a layer: (table int64 [C, width], size int64 [C]).

    table[c, i] = T(i), the least integer membrane of channel c whose count is above i,
    for i < size[c]; size[c] is ``size_cap`` (the bound 2^k B, or an unbounded layer's
    count limit + 1), or less where T(i) reaches MEMBRANE_LIMIT (no membrane gets there).
    A constant channel (gamma == 0) is reached by every membrane at its first
    ``constant_count`` levels and never beyond. Thresholds below -MEMBRANE_LIMIT are
    written as -MEMBRANE_LIMIT (every membrane reaches them).

    theta_i = theta_0 + i d. A fixed-point pass with G = 2^128 takes lo_i = floor(G theta_0)
    + i floor(G d), so G theta_i lies in [lo_i, lo_i + i + 1): where no integer multiple of
    G lies strictly inside (the ceiling is then the same across that interval), T(i) =
    ceil(lo_i / G); otherwise (a threshold on or within 2^-100 of an integer) T(i) is
    decided by :func:`ceil_of` in exact arithmetic (see :func:`_channel_table`).
    """
    columns: list = []  # per channel: a list or array of its T(i)
    for rule in rules:
        if rule.gamma == 0:  # reached by every membrane up to the constant count, then never
            values = [-MEMBRANE_LIMIT] * min(rule.constant_count(), size_cap)
        else:
            values = _channel_table(rule, per_unit, *fixed_point_terms(rule, per_unit), size_cap)
        columns.append(values)
    width = max((len(values) for values in columns), default=0)
    table = np.full((len(rules), max(width, 1)), MEMBRANE_LIMIT, np.int64)
    for channel, values in enumerate(columns):
        table[channel, : len(values)] = values
    size = np.array([len(values) for values in columns], np.int64)
    return table, size


def fixed_point_terms(rule: ChannelRule, per_unit: Fraction) -> tuple[int, int]:
    """(floor(G theta_0), floor(G d)) of a channel with gamma != 0, G = 2^PRECISION_BITS."""
    scale = 1 << PRECISION_BITS
    (a, sign, square), spacing_square = rule.base_and_spacing(per_unit)
    return floor_of(a * scale, sign, square * scale * scale), _floor_sqrt(spacing_square * scale * scale)


def _channel_table(rule: ChannelRule, per_unit: Fraction, base: int, spacing: int, size_cap: int):
    """One channel's T(i) from lo_i = base + i spacing (see :func:`threshold_table`), up
    to the first that reaches MEMBRANE_LIMIT (an int64 array).

    With base = qb G + rb and spacing = qs G + rs, ceil(lo_i / G) = qb + i qs + ceil(f_i)
    for f_i = (rb + i rs) / G, and an integer lies in [lo_i, lo_i + i + 1) / G exactly when
    ceil(f_i) - f_i < (i + 1) / G. f_i is computed in float64 (error below 2^-40 for i
    below 2^10); levels whose f_i comes within 2^-30 of an integer are taken the exact
    way (Python integers, and :meth:`ChannelRule.least_membrane` where an integer lies
    inside), all others are settled by the float: their ceiling is that of the float and
    no integer lies inside."""
    scale = 1 << PRECISION_BITS
    quotient_base, rest_base = divmod(base, scale)
    quotient_spacing, rest_spacing = divmod(spacing, scale)  # (spacing >= 0)
    if abs(quotient_base) >= 2**61 or quotient_spacing * size_cap >= 2**61 or size_cap > 2**10:
        return np.array(_channel_table_exact(rule, per_unit, base, spacing, size_cap), np.int64)
    level = np.arange(size_cap, dtype=np.int64)
    fraction = rest_base / scale + level * (rest_spacing / scale)
    ceiling = np.ceil(fraction)
    doubt = (ceiling - fraction < 2.0**-30) | (fraction - np.floor(fraction) < 2.0**-30)
    table = quotient_base + level * quotient_spacing + ceiling.astype(np.int64)
    for i in np.flatnonzero(doubt).tolist():
        table[i] = min(_exact_level(rule, per_unit, base, spacing, i), MEMBRANE_LIMIT)
    beyond = np.flatnonzero(table >= MEMBRANE_LIMIT)
    table = table[: beyond[0]] if len(beyond) else table
    return np.maximum(table, -MEMBRANE_LIMIT)  # (every membrane reaches those)


def _exact_level(rule: ChannelRule, per_unit: Fraction, base: int, spacing: int, level: int) -> int:
    scale = 1 << PRECISION_BITS
    low = base + level * spacing
    value = -((-low) // scale)  # ceil(low / G)
    if low + level + 1 > value * scale:  # an integer may lie inside: decide exactly
        value = rule.least_membrane(per_unit, level)
    return value


def _channel_table_exact(rule: ChannelRule, per_unit: Fraction, base: int, spacing: int, size_cap: int) -> list[int]:
    """:func:`_channel_table` level by level in Python integers."""
    values: list[int] = []
    for level in range(size_cap):
        value = _exact_level(rule, per_unit, base, spacing, level)
        if value >= MEMBRANE_LIMIT:
            break
        values.append(max(value, -MEMBRANE_LIMIT))
    return values


def linear_table(offset: np.ndarray, step: np.ndarray, divisor: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The table ceil((A + i D) / S) of every channel for i < levels (int64 [C, levels]),
    and each channel's size: ``levels``, or fewer where the table reaches MEMBRANE_LIMIT.
    (The INT paper's rounded thresholds, and hand-made neurons.)"""
    level = np.arange(max(levels, 1), dtype=np.int64)[None, :]
    table = -((-(offset[:, None] + level * step[:, None])) // divisor)
    size = np.minimum((table < MEMBRANE_LIMIT).sum(axis=1), levels).astype(np.int64)
    return np.minimum(table, MEMBRANE_LIMIT), size
