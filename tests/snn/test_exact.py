"""Exact ties: thresholds derived in exact arithmetic, checked against the model's own
definition evaluated with ``fractions`` (ALGORITHMS.md §1-§2), never against the converter."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.quantization import Precision
from qsnn.sim.events import EventSimulator
from qsnn.sim.stepwise import simulate_batch
from qsnn.snn.convert import applicable_schemes, convert
from qsnn.snn.exact import ExactANN
from qsnn.snn.thresholds import ChannelRule, ceil_of, floor_of, threshold_table

HALF = Fraction(1, 2)


# --- the definition, in fractions (square roots exact: var + eps = s^2, s dyadic) --------


def defined_count(z: Fraction, gamma, beta, mean, s: Fraction, k: int, levels: int | None) -> int:
    """n = min(floor(2^k relu(y) + 1/2), N), y = gamma (z - mu) / s + beta, in fractions."""
    y = Fraction(gamma) * (z - Fraction(mean)) / s + Fraction(beta)
    n = math.floor(max(y, 0) * (1 << k) + HALF)
    return n if levels is None else min(n, levels)


def defined_counts(model: QuantizedNet, pixels: torch.Tensor) -> tuple[list[np.ndarray], list[set]]:
    """Every block's counts for every image, in fractions, for nets whose blocks are 1x1
    convolutions or dense layers with var + eps a perfect square; and, per block, the
    levels i at which some neuron sat exactly on its boundary (2^k y = i + 1/2)."""
    x = [[Fraction(int(p), 255) for p in image.reshape(-1).tolist()] for image in pixels]
    counts, ties = [], []
    for block in model.blocks:
        w = block.effective_weight().detach().double().reshape(block.weight.shape[0], -1).tolist()
        norm = block.norm
        s = [Fraction(math.isqrt(int(v * 2**40)), 2**20) for v in (norm.running_var + norm.eps).tolist()]
        assert all(si * si == Fraction(v) + Fraction(norm.eps) for si, v in zip(s, norm.running_var.tolist(), strict=True))
        levels = None if block.bound is None else (1 << block.k) * block.bound
        out_c = block.layer.out_shape[0]
        positions = math.prod(block.layer.out_shape[1:]) if block.layer.kind == "conv" else 1
        layer_counts, hit = [], set()
        for image in x:
            values = []
            for c in range(out_c):
                gamma, beta, mean = (float(t[c]) for t in (norm.weight.detach(), norm.bias.detach(), norm.running_mean))
                for p in range(positions):
                    if block.layer.kind == "conv":  # 1x1: input channel j at the same position
                        z = sum(Fraction(w[c][j]) * image[j * positions + p] for j in range(len(w[c])))
                    else:
                        z = sum(Fraction(wj) * xj for wj, xj in zip(w[c], image, strict=True) if wj)
                    n = defined_count(z, gamma, beta, mean, s[c], block.k, levels)
                    u = (Fraction(gamma) * (z - Fraction(mean)) / s[c] + Fraction(beta)) * (1 << block.k)
                    if u - HALF == math.floor(u - HALF) and u > 0 and (levels is None or u < levels):
                        hit.add(int(u - HALF))
                    values.append(n)
            layer_counts.append(values)
        counts.append(np.array(layer_counts, np.int64))
        ties.append(hit)
        x = [[Fraction(n, 1 << block.k) for n in row] for row in layer_counts]
    return counts, ties


# --- a net with a tie at every level of every block ----------------------------------------


def tie_net(k: int, B: int | None, negative: bool, channels: int = 3) -> QuantizedNet:
    """1x1 encoding convolution, 1x1 hidden convolution, hidden dense layer; every pixel
    value of the images of :func:`tie_pixels` puts neurons exactly on a boundary.

    Encoding: w = 255/256, so z = p / 256; gamma = +-4, var = 1/4 (eps = 0): 2^k y =
    2^k p / 32 (or 2^k (8 - p/32)), a tie at p = 2^(4-k) (2i + 1) for every level i.
    Hidden: w = 1 from one input, gamma = +-1/2, var = 1/4, beta_j = (j m - 1/2) / 2^k:
    2^k y = n - 1/2 + j m, a tie at every input count n, channel j covering levels
    j m - 1 .. from there on (m = the encoding's largest count)."""
    precision = Precision(k=k, B=B, ternary=True)
    model = QuantizedNet(NetSpec(f"{channels}C1-{channels}C1-{channels}", (1, 2, 2), 4, "valid", precision))
    top = (1 << k) * (B if B is not None else 8)  # the encoding's largest count
    sign = -1.0 if negative else 1.0
    with torch.no_grad():
        for index, block in enumerate(model.blocks):
            block.norm.eps = 0.0
            block.norm.running_var.fill_(0.25)
            block.weight.zero_()
            if index == 0:
                block.weight.fill_(255 / 256)
                block.norm.weight.fill_(4.0 * sign)
                block.norm.running_mean.fill_(1.0 if negative else 0.0)
                block.norm.bias.zero_()
                continue
            block.norm.weight.fill_(0.5 * sign)
            for j in range(channels):
                block.norm.bias[j] = (j * top - 0.5) / (1 << k)
                if block.layer.kind == "conv":
                    block.weight[j, j] = 1.0
                else:  # neuron j reads input channel j at position 0
                    block.weight[j, j * 4] = 1.0
            block.norm.running_mean.fill_(top / (1 << k) if negative else 0.0)
        model.classifier.copy_(torch.linspace(-1, 1, model.classifier.numel()).reshape(model.classifier.shape))
    return model.eval()


def tie_pixels() -> torch.Tensor:
    """256 images, image p with every pixel p."""
    return torch.arange(256, dtype=torch.uint8).reshape(256, 1, 1, 1).expand(256, 1, 2, 2).contiguous()


def spiking_counts(net, pixels) -> list[list[np.ndarray]]:
    """Final counts per layer, by the reference simulator and by the fast engine."""
    reference = simulate_batch(net, pixels, None).counts
    if net.scheme == "sg":
        engine = EventSimulator(net)(net, pixels, None).counts
    else:
        engine = EventSimulator(net)._event_driven(net, pixels, None)[0].counts
    return [[c.reshape(len(pixels), -1).numpy() for c in counts] for counts in (reference, engine)]


@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("B", [1, 2, 3, None])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_ties_at_every_level_are_decided_as_the_model_defines(k, B, negative):
    model = tie_net(k, B, negative)
    pixels = tie_pixels()
    expected, ties = defined_counts(model, pixels)
    top = (1 << k) * (B if B is not None else 8)
    for index, hit in enumerate(ties):  # the test is not vacuous: every level is tied
        wanted = set(range(top))
        assert wanted <= hit, f"block {index + 1}: levels {sorted(wanted - hit)} never tied"
    exact = [c.reshape(len(pixels), -1).numpy() for c in ExactANN(model)(pixels).counts]
    assert all(np.array_equal(a, b) for a, b in zip(exact, expected, strict=True))
    for scheme in applicable_schemes(model):
        net = convert(model, scheme)
        for found in spiking_counts(net, pixels):
            for index, (snn, ann) in enumerate(zip(found, expected, strict=True)):
                differing = int((snn != ann).sum())
                assert differing == 0, f"{scheme} k={k} B={B}: {differing} counts differ in layer {index + 1}"


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_zero_gamma_channels_take_their_half_up_constant(k):
    """gamma = 0: the count is floor(2^k relu(beta) + 1/2), ties included (beta = (2i+1)/2^(k+1))."""
    model = tie_net(k, 3, False, channels=4)
    with torch.no_grad():
        for block in model.blocks:
            block.norm.weight.zero_()
            block.norm.bias.copy_(torch.tensor([0.5, 1.5, 2.5, -0.5]) / (1 << k))
    pixels = tie_pixels()[::17]
    expected, _ = defined_counts(model, pixels)
    assert expected[0][0].tolist()[::4] == [1, 2, 3, 0]
    exact = [c.reshape(len(pixels), -1).numpy() for c in ExactANN(model)(pixels).counts]
    assert all(np.array_equal(a, b) for a, b in zip(exact, expected, strict=True))
    for scheme in applicable_schemes(model):
        for found in spiking_counts(convert(model, scheme), pixels):
            assert all(np.array_equal(s, a) for s, a in zip(found, expected, strict=True)), scheme


def test_the_reported_tie_at_level_one_is_decided_upwards():
    """The case that was decided wrongly: a 1x1 encoding layer with w = 255/256, mean 0.5,
    gamma 0.8, beta 0.75, var 0.3 (eps 1e-5: an irrational sigma); pixel 128 gives z = mu
    exactly, so 2^k y = 1.5 and the count is 2 (half-up), not 1."""
    precision = Precision(k=1, B=2, ternary=True)
    model = QuantizedNet(NetSpec("4C1-P2-16", (1, 28, 28), 10, "valid", precision))
    with torch.no_grad():
        block = model.blocks[0]
        block.weight.fill_(255 / 256)
        block.norm.running_mean.fill_(0.5)
        block.norm.weight.copy_(torch.tensor([0.8, 0.6, 1.1, 0.9]))
        block.norm.bias.copy_(torch.tensor([0.75, 0.25, 1.25, 0.75]))
        block.norm.running_var.copy_(torch.tensor([0.3, 0.7, 0.11, 1.9]))
    model.eval()
    rule = ChannelRule.from_floats(0.8, 0.75, 0.5, float(torch.tensor(0.3)), 1e-5, 1, 4)
    assert rule.count(Fraction(1, 2)) == 2 and rule.count(Fraction(1, 2) - Fraction(1, 10**30)) == 1
    pixels = torch.full((1, 1, 28, 28), 128, dtype=torch.uint8)
    for scheme in ("nsd", "sg", "int"):
        net = convert(model, scheme)
        layer = net.layers[0]
        membrane = int(layer.weight[0].sum()) * 128  # V = W_int p, exactly: z = mu
        # 2^k y at z = mu is 2 beta = 1.5, 0.5, 2.5, 1.5: each channel's tie is its T(level)
        assert [layer.table[c, i] for c, i in ((0, 1), (1, 0), (2, 2), (3, 1))] == [membrane] * 4
        for found in spiking_counts(net, pixels):
            assert found[0].reshape(4, -1)[:, 0].tolist() == [2, 1, 3, 2]


# --- the exact primitives, against fractions --------------------------------------------


dyadic = st.integers(-(2**12), 2**12).map(lambda n: Fraction(n, 2**6))


@settings(max_examples=200, deadline=None)
@given(a=dyadic, root=st.integers(0, 2**10), scale=st.integers(0, 8), sign=st.sampled_from([-1, 0, 1]))
def test_ceil_and_floor_of_a_sum_with_a_square_root(a, root, scale, sign):
    """With square = (root / 2^scale)^2 the square root is exact, so the answer is plain."""
    r = Fraction(root, 2**scale)
    value = a + sign * r
    assert ceil_of(a, sign, r * r) == math.ceil(value)
    assert floor_of(a, sign, r * r) == math.floor(value)


# a channel's dyadic parameters, var = s^2 (eps 0: sigma exact)
CHANNEL = dict(
    gamma=st.integers(-64, 64).map(lambda n: n / 16),
    beta=st.integers(-64, 64).map(lambda n: n / 32),
    mean=st.integers(-512, 512).map(lambda n: n / 64),
    s=st.integers(1, 64).map(lambda n: n / 16),
    k=st.integers(0, 3),
    B=st.sampled_from([1, 2, 3, None]),
)


@settings(max_examples=60, deadline=None)
@given(**CHANNEL, exponent=st.integers(0, 12))
@example(gamma=0.0, beta=1.5625, mean=0.0, s=1 / 16, k=3, B=None, exponent=0)  # (a constant 13 above the cap 12)
def test_threshold_tables_are_the_least_membranes_of_the_definition(gamma, beta, mean, s, k, B, exponent):
    """For random dyadic parameters (var = s^2, eps = 0, so sigma is exact), every table
    entry T(i) is the least integer membrane V whose count, by the definition evaluated
    in fractions with z = V / P, is above i (with the sign folding of gamma < 0)."""
    levels = None if B is None else (1 << k) * B
    rule = ChannelRule.from_floats(gamma, beta, mean, s * s, 0.0, k, levels)
    per_unit = Fraction(2) ** exponent
    cap = levels if levels is not None else 12  # (an unbounded layer's table stops at its count limit)
    table, size = threshold_table([rule], per_unit, cap)
    if gamma == 0:
        assert table[0, : size[0]].tolist() == [-(2**53)] * min(rule.constant_count(), cap)
        return
    sign = 1 if gamma > 0 else -1

    def count(v: int) -> int:
        return defined_count(sign * Fraction(v) / per_unit, gamma, beta, mean, Fraction(s), k, levels)

    for i in range(int(size[0])):
        t = int(table[0, i])
        assert count(t) > i and count(t - 1) <= i, (i, t)


@settings(max_examples=80, deadline=None)
@given(
    gamma=st.one_of(CHANNEL["gamma"], st.floats(-8, 8, width=32)).filter(lambda g: g != 0),
    beta=st.one_of(CHANNEL["beta"], st.floats(-4, 4, width=32)),
    mean=st.one_of(CHANNEL["mean"], st.floats(-16, 16, width=32)),
    var=st.one_of(CHANNEL["s"].map(lambda s: s * s), st.floats(2.0**-20, 64, width=32)),
    eps=st.sampled_from([0.0, 1e-5]),
    k=st.integers(0, 3),
    B=st.sampled_from([1, 2, 3, None]),
    exponent=st.integers(0, 44),
)
def test_the_vectorised_table_equals_the_level_by_level_one(gamma, beta, mean, var, eps, k, B, exponent):
    """threshold_table settles most levels in float64 (numpy) and the rest in integers: it
    equals the level-by-level integer computation at every level, ties (dyadic parameters)
    and unbounded layers' 1,024 levels included."""
    from qsnn.snn.thresholds import _channel_table, _channel_table_exact, fixed_point_terms

    levels = None if B is None else (1 << k) * B
    rule = ChannelRule.from_floats(gamma, beta, mean, var, eps, k, levels)
    per_unit = Fraction(2) ** exponent
    cap = levels if levels is not None else 1024
    base, spacing = fixed_point_terms(rule, per_unit)
    fast = _channel_table(rule, per_unit, base, spacing, cap)
    assert list(fast) == _channel_table_exact(rule, per_unit, base, spacing, cap)


# --- the exact ANN, and the simulator's independent check ------------------------------


@pytest.mark.parametrize(("k", "B", "negative"), [(0, 1, False), (1, None, True), (2, 3, False), (3, 2, True)])
def test_exact_ann_is_the_definition_at_every_tie(k, B, negative):
    model = tie_net(k, B, negative)
    pixels = tie_pixels()
    expected, _ = defined_counts(model, pixels)
    result = ExactANN(model)(pixels)
    for index, (found, wanted) in enumerate(zip(result.counts, expected, strict=True)):
        assert np.array_equal(found.reshape(len(pixels), -1).numpy(), wanted), f"block {index + 1}"
    assert result.decided_exactly >= 3 * len(pixels)  # every tie went to the exact decision
    logits = [[sum(Fraction(float(w)) * Fraction(n, 1 << k) for w, n in zip(row, counts, strict=True))
               for row in model.classifier.detach().double().tolist()] for counts in expected[-1].tolist()]
    assert result.predictions.tolist() == [max(range(4), key=lambda c, r=r: (r[c], -c)) for r in logits]


@pytest.mark.parametrize(("k", "B", "ternary", "seed"), [(1, 2, True, 3), (2, None, False, 5), (0, 4, True, 1)])
def test_exact_ann_equals_the_float64_model_and_the_converted_reference(k, B, ternary, seed):
    """Random nets with adversarial statistics (no neuron within float64's reach of a
    boundary): the exact ANN, the float64 model and the converted tables' reference agree."""
    from qsnn.snn.reference import reference_counts
    from tests.helpers import random_net, random_pixels

    model = random_net("6C5-P2-8C3-12", k=k, B=B, ternary=ternary, seed=seed)
    pixels = random_pixels(40, seed=seed)
    exact = ExactANN(model)(pixels)
    float64 = model.double().counts(pixels.double() / 255)
    model.float()
    tables = reference_counts(convert(model, "nsd"), pixels)
    reference, logits = tables.counts, tables.logits
    for a, b, c in zip(exact.counts, float64, reference, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(exact.predictions, logits.argmax(dim=1))


def test_the_check_against_the_trained_model_sees_a_table_that_both_sides_share():
    """A converted net whose table is one unit off at a tie (the kind of error the
    spiking network and a reference built from the same tables share). Measured against
    the exact ANN of the trained model (the default) the simulation shows it, count by
    count; against the tables' own ANN (verify="sample") the agreement stays perfect and
    only the sampled images are checked against the model."""
    from dataclasses import replace

    from qsnn.report.summary import summarize
    from qsnn.sim.run import simulate

    model = tie_net(1, 2, False)
    net = convert(model, "nsd")
    encoding = net.layers[0]
    table = encoding.table.copy()
    table[:, 1] += 1  # level 1's tie (p = 24) now counts 1, not 2
    net = replace(net, layers=[replace(encoding, table=table), *net.layers[1:]])
    pixels, labels = tie_pixels(), torch.zeros(256, dtype=torch.int64)
    result = simulate(net, pixels, labels, steps=None, batch_size=64)
    assert result.verified_images == 256
    assert result.count_mismatches[0] == 3 * 4  # image 24: 3 channels x 4 positions
    assert result.verified_count_mismatches == result.count_mismatches
    assert result.agree[-1] == 256 - result.verified_disagreements
    summary = summarize(result, net, dataset="mnist", seed=0, e_add=0.9, e_mac=4.6)
    assert summary["verified_count_mismatches"] > 0 and summary["lossless"] is False
    tables = simulate(net, pixels, labels, steps=None, verify="sample", batch_size=64)  # images 0, 64, 128, 192
    assert tables.count_mismatches == [0, 0, 0] and tables.agree[-1] == 256  # both sides share the table
    assert tables.verified_images == 4 and tables.verified_count_mismatches == [0, 0, 0]
    clean = simulate(convert(model, "nsd"), pixels, labels, steps=None, batch_size=64)
    assert clean.count_mismatches == [0, 0, 0] and clean.verified_disagreements == 0 and clean.agree[-1] == 256


@settings(max_examples=200, deadline=None)
@given(**CHANNEL, z=st.integers(-(2**14), 2**14).map(lambda n: Fraction(n, 2**10)))
def test_a_channel_counts_as_the_definition(gamma, beta, mean, s, k, B, z):
    """ChannelRule.count (the exact ANN's decision near boundaries) equals the definition."""
    levels = None if B is None else (1 << k) * B
    rule = ChannelRule.from_floats(gamma, beta, mean, s * s, 0.0, k, levels)
    assert rule.count(z) == defined_count(z, gamma, beta, mean, Fraction(s), k, levels)


@pytest.mark.parametrize(("notation", "k", "B", "ternary"), [("6C5-P2-8C3-12", 1, None, False), ("6C5-P2-12", 2, 2, True)])
def test_evaluate_exact_counts_what_it_says(notation, k, B, ternary):
    """evaluate_exact: the exact ANN's correct predictions, the float32 model's (its own
    forward pass), and the counts on which the two differ, image by image."""
    from qsnn.snn.exact import evaluate_exact
    from tests.helpers import random_net, random_pixels

    model = random_net(notation, k=k, B=B, ternary=ternary, seed=3)
    pixels, labels = random_pixels(40, seed=3), torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(3))
    found = evaluate_exact(model, pixels, labels, batch_size=16)
    exact = ExactANN(model)(pixels)
    with torch.no_grad():
        floats = model.counts(pixels.float() / 255)
        logits = model(pixels.float() / 255)
    per_image = sum((a != b).reshape(40, -1).sum(1) for a, b in zip(floats, exact.counts, strict=True))
    assert found.images == 40
    assert found.correct == int((exact.predictions == labels).sum())
    assert found.float32_correct == int((logits.argmax(1) == labels).sum())
    assert (found.differing_counts, found.differing_images) == (int(per_image.sum()), int((per_image > 0).sum()))


def _two_dense_blocks(k: int, first_bias: list[float], second: dict) -> QuantizedNet:
    """A "4-4" net on 2x2 inputs whose first block is constant (gamma 0: counts set by its
    biases) and whose second block's channel 0 reads ``second`` weights."""
    model = QuantizedNet(NetSpec("4-4", (1, 2, 2), 2, "valid", Precision(k=k, B=None))).eval()
    with torch.no_grad():
        first, block = model.blocks
        first.norm.weight.zero_()
        first.norm.bias.copy_(torch.tensor(first_bias))
        first.norm.running_mean.zero_()
        first.norm.running_var.fill_(1.0)
        block.weight.zero_()
        for (row, column), value in second["weights"].items():
            block.weight[row, column] = value
        block.norm.weight.fill_(second["gamma"])
        block.norm.bias.fill_(second["beta"])
        block.norm.running_mean.fill_(second["mean"])
        block.norm.running_var.fill_(1.0)
        block.norm.eps = 0.0
    return model


def test_membranes_beyond_float64s_integers_are_decided_exactly():
    """W_int x past 2^53 (a weight of 1 beside one of 2^-60, so the grid is 2^60) with
    counts past 2^24 that float32 could not carry: the count is the definition's."""
    model = _two_dense_blocks(1, [2.0**24, 0, 0, 0], {"weights": {(0, 0): 1.0, (1, 1): 2.0**-60},
                                                       "gamma": 1.0, "beta": 0.25, "mean": 0.0})
    result = ExactANN(model)(torch.zeros((1, 1, 2, 2), dtype=torch.uint8))
    assert result.counts[0].tolist() == [[2**25, 0, 0, 0]]
    z = Fraction(2**25, 2)  # block 1, channel 0: 1.0 * 2^25 / 2^k
    assert int(result.counts[1][0, 0]) == defined_count(z, 1.0, 0.25, 0.0, Fraction(1), 1, None) == 2**25 + 1


def test_counts_past_float32s_integers_reach_the_next_block_unrounded():
    """A count of 2^24 + 1 (pixel 255 through weight 1, plus beta 2^24) is passed on exactly."""
    model = QuantizedNet(NetSpec("4-4", (1, 2, 2), 2, "valid", Precision(k=0, B=None))).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.weight.zero_()
            block.weight[0, 0] = 1.0
            block.norm.weight.fill_(1.0)
            block.norm.bias.zero_()
            block.norm.running_mean.zero_()
            block.norm.running_var.fill_(1.0)
            block.norm.eps = 0.0
        model.blocks[0].norm.bias[0] = 2.0**24
    pixels = torch.zeros((1, 1, 2, 2), dtype=torch.uint8)
    pixels[0, 0, 0, 0] = 255
    result = ExactANN(model)(pixels)
    assert int(result.counts[0][0, 0]) == int(result.counts[1][0, 0]) == 2**24 + 1


def test_the_exact_ann_holds_when_float32_matmuls_are_not_ieee():
    """With torch's float32 matmul precision lowered ("high": TF32-like shortcuts), the first
    pass takes the float64 path; a membrane 2^54 + 1 in its grid is still decided exactly."""
    model = _two_dense_blocks(0, [16.0, 1.0, 0, 0], {"weights": {(0, 0): 1.0, (0, 1): 2.0**-50},
                                                      "gamma": 2.0**50, "beta": 0.0, "mean": 16.0})
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        result = ExactANN(model)(torch.zeros((1, 1, 2, 2), dtype=torch.uint8))
    finally:
        torch.set_float32_matmul_precision(before)
    z = Fraction(16) + Fraction(1, 2**50)  # 1.0 * 16 + 2^-50 * 1
    assert int(result.counts[1][0, 0]) == defined_count(z, 2.0**50, 0.0, 16.0, Fraction(1), 0, None) == 1


def test_the_exact_ann_refuses_what_is_not_a_raw_pixel():
    model = tie_net(1, 2, False)
    with pytest.raises(ValueError, match="raw integer pixels 0..255"):
        ExactANN(model)(torch.full((1, *model.spec.input_shape), -3, dtype=torch.int64))


def test_standardized_inputs_at_a_tie_are_decided_as_the_model_defines():
    """A standardizing net whose first neuron sits exactly on its level boundary (z - mu =
    1/2, z a standardized float32 value): its count is the definition's, in fractions."""
    from qsnn.data.transforms import model_input

    model = QuantizedNet(NetSpec("4", (1, 2, 2), 2, "valid", Precision(k=0, B=None), input_stage="standardize")).eval()
    pixels = torch.tensor([[[[10, 200], [30, 77]]]], dtype=torch.uint8)
    x = model_input(pixels, "standardize")
    z = Fraction(float(x[0, 0, 0, 1]))
    with torch.no_grad():
        block = model.blocks[0]
        block.weight.zero_()
        block.weight[:, 1] = 1.0  # z = x at (0, 1) for every neuron
        block.norm.weight.fill_(1.0)
        block.norm.bias.zero_()
        block.norm.running_mean.fill_(float(z - HALF))
        block.norm.running_var.fill_(1.0)
        block.norm.eps = 0.0
    assert Fraction(float(block.norm.running_mean[0])) == z - HALF  # (exact in float32)
    result = ExactANN(model)(pixels)
    assert result.decided_exactly >= 1
    assert result.counts[0][0].tolist() == [defined_count(z, 1.0, 0.0, float(z - HALF), Fraction(1), 0, None)] * 4 == [1] * 4


# --- the near neurons' exact membranes (qsnn.snn.exact._near_sums) --------------------------


def _membrane_in_fractions(block, x: torch.Tensor, image: int, neuron: int) -> Fraction:
    """z = sum w x of one neuron (flat index in its image), from the float weights, in fractions."""
    weight = block.effective_weight().detach().double()
    if block.layer.kind != "conv":
        row = weight[neuron].tolist()
        return sum((Fraction(w) * int(v) for w, v in zip(row, x[image].reshape(-1).tolist(), strict=True) if w), Fraction(0))
    _, out_h, out_w = block.layer.out_shape
    channel, position = divmod(neuron, out_h * out_w)
    oy, ox = divmod(position, out_w)
    kernel, stride, pad = block.layer.kernel, block.layer.stride, block.layer.padding
    total = Fraction(0)
    for ci in range(x.shape[1]):
        for ky in range(kernel):
            for kx in range(kernel):
                iy, ix = oy * stride + ky - pad, ox * stride + kx - pad
                if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:
                    total += Fraction(float(weight[channel, ci, ky, kx])) * int(x[image, ci, iy, ix])
    return total


@pytest.mark.parametrize(("notation", "padding", "largest", "dtype"), [
    ("5C3-P2-7C3-9", "same", 255, torch.float32),  # padded convolutions, a pooling one, dense; one part
    ("5C3-P2-7C3-9", "valid", 2**23, torch.float32),  # several parts, int64 totals
    ("4C3-6", "same", 2**40, torch.float64),  # counts past float32: totals past int64, as Python ints
])
@pytest.mark.parametrize("threads", ["one", "all"])
@pytest.mark.parametrize("layout", ["gathered", "channel-last"])
def test_near_membranes_are_the_exact_sums(monkeypatch, notation, padding, largest, dtype, threads, layout):
    """ExactANN._exact_membranes (the float64 parts summed by _near_sums on the inputs as
    they are, or on a channel-last copy with the neurons taken channel by channel; on one
    thread or shared among them; then combined) equals sum w x in fractions at any
    neuron, border and padding included."""
    import qsnn.snn.exact as exact
    from tests.helpers import random_net

    monkeypatch.setattr(exact, "SERIAL_WORK", 2**62 if threads == "one" else 0)
    monkeypatch.setattr(exact, "CHANNEL_LAST_WORK", math.inf if layout == "gathered" else 0.0)

    model = random_net(notation, k=1, B=None, seed=7, input_shape=(2, 8, 8), padding=padding)
    ann = ExactANN(model)
    generator = torch.Generator().manual_seed(11)
    for index, layer in enumerate(ann.blocks):
        shape = layer.block.layer.in_shape
        x = torch.randint(0, largest + 1, (3, *shape), generator=generator, dtype=torch.int64)
        x[0] = largest  # the largest inputs everywhere: every part's sums at their bound
        x[1].view(-1)[::3] = 0
        x = x.to(dtype)
        assert torch.equal(x.to(torch.int64).to(dtype), x)  # (exact in dtype)
        neurons = math.prod(layer.block.layer.out_shape)
        image = np.repeat(np.arange(3), neurons)
        neuron = np.tile(np.arange(neurons), 3)
        found = ann._exact_membranes(index, layer, x, float(largest), image, neuron)
        found = found.tolist() if isinstance(found, torch.Tensor) else found
        scale = Fraction(2) ** layer.exponent
        for i in range(0, len(image), 7 if neurons > 50 else 1):
            assert Fraction(found[i]) / scale == _membrane_in_fractions(layer.block, x, int(image[i]), int(neuron[i])), (
                f"block {index + 1}, image {image[i]}, neuron {neuron[i]}"
            )


def test_parts_are_combined_in_int64_wherever_the_total_fits_and_as_python_ints_beyond():
    """_combine(sums, bits) = sum_j sums[j] 2^(bits j) exactly: int64 when the parts' own
    bounds keep every total below 2^62 (a low part near 2^52 with a small high part
    included), Python ints beyond."""
    from qsnn.snn.exact import _combine

    low = torch.tensor([2.0**52 - 1, -(2.0**52 - 1), 0.0, 12345.0], dtype=torch.float64)
    high = torch.tensor([3.0, -5.0, 2.0**20, 0.0], dtype=torch.float64)
    wanted = [int(a) + (int(b) << 35) for a, b in zip(low.tolist(), high.tolist(), strict=True)]
    found = _combine([low, high], 35)
    assert isinstance(found, torch.Tensor) and found.dtype == torch.int64
    assert found.tolist() == wanted
    high[2] = 2.0**40  # 2^75: past int64
    found = _combine([low, high], 35)
    assert isinstance(found, list)
    assert found == [int(a) + (int(b) << 35) for a, b in zip(low.tolist(), high.tolist(), strict=True)]
    assert found[2] == 2**75


def test_a_tie_the_float32_pass_misses_is_decided_by_the_exact_membrane():
    """z = 5 + 2^-40 (float32 sums it to 5) with mean 2^-40: u = 2^k y + 1/2 = 6 exactly, a
    tie decided upwards; the first pass's bound leaves it in doubt, and the exact membrane
    of the weight grid (parts summed by _near_sums) with the rational decision gives 6."""
    model = _two_dense_blocks(0, [5.0, 1.0, 0, 0], {"weights": {(0, 0): 1.0, (0, 1): 2.0**-40},
                                                     "gamma": 1.0, "beta": 0.5, "mean": 2.0**-40})
    assert float(model.blocks[1].norm.running_mean[0]) == 2.0**-40
    result = ExactANN(model)(torch.zeros((2, 1, 2, 2), dtype=torch.uint8))
    assert result.counts[0][0].tolist() == [5, 1, 0, 0]
    z = Fraction(5) + Fraction(1, 2**40)
    assert result.counts[1][:, 0].tolist() == [defined_count(z, 1.0, 0.5, 2.0**-40, Fraction(1), 0, None)] * 2 == [6, 6]
    assert result.decided_exactly >= 2


@pytest.mark.parametrize("room", [1, 3])
def test_more_near_neurons_than_the_kernel_lists_are_all_decided(monkeypatch, room):
    """Images with more near neurons than NEAR_ROOM are found by a scan: the same counts."""
    import qsnn.snn.exact as exact

    model = tie_net(1, None, False)
    pixels = tie_pixels()
    expected = ExactANN(model)(pixels)
    monkeypatch.setattr(exact, "NEAR_ROOM", room)
    found = ExactANN(model)(pixels)
    assert found.decided_exactly == expected.decided_exactly > 0
    for a, b in zip(found.counts, expected.counts, strict=True):
        assert torch.equal(a, b)
    wanted, _ = defined_counts(model, pixels)
    for index, (a, b) in enumerate(zip(found.counts, wanted, strict=True)):
        assert np.array_equal(a.reshape(len(pixels), -1).numpy(), b), f"block {index + 1}"


def test_a_recycled_result_receives_the_counts_and_held_buffers_carry_nothing_over():
    """ExactANN(pixels, recycle=earlier) writes the counts into the earlier result's
    tensors where the shapes match (a new batch size gets new ones), and the buffers it
    keeps between calls (the next block's inputs, the near flags) carry nothing from one
    call to the next: every call equals a fresh ExactANN's and the definition."""
    model = tie_net(1, 2, True)
    pixels = tie_pixels()
    ann = ExactANN(model)
    first = ann(pixels.flip(0))
    tensors = [c for c in first.counts]
    second = ann(pixels, recycle=first)
    assert all(a is b for a, b in zip(second.counts, tensors, strict=True))
    fresh = ExactANN(model)(pixels)
    wanted, _ = defined_counts(model, pixels)
    assert second.decided_exactly == fresh.decided_exactly > 0
    for index, (a, b, c) in enumerate(zip(second.counts, fresh.counts, wanted, strict=True)):
        assert torch.equal(a, b) and np.array_equal(a.reshape(len(pixels), -1).numpy(), c), f"block {index + 1}"
    assert torch.equal(second.logits, fresh.logits) and torch.equal(second.predictions, fresh.predictions)
    third = ann(pixels[100:107], recycle=second)  # another batch size: new tensors, the same values
    assert not any(a is b for a, b in zip(third.counts, tensors, strict=True))
    for a, b in zip(third.counts, fresh.counts, strict=True):
        assert torch.equal(a, b[100:107])


def _decide_by_the_definition(first, box, largest_weight, gamma_n, slope, mean, shift, inverse, levels):
    """_decide_kernel's contract, neuron by neuron in Python floats: (counts, near)."""
    from qsnn.snn.exact import FLOAT_SLACK

    counts, near = np.zeros(first.shape, np.int64), np.zeros(first.shape, bool)
    for b, c, p in np.ndindex(*first.shape):
        a, m, h = float(slope[c]), float(mean[c]), float(shift[c])
        alpha, beta = a * inverse, h - a * m
        f = float(first[b, c, p])
        u = alpha * f + beta
        margin = abs(alpha) * FLOAT_SLACK * abs(f) + FLOAT_SLACK * (abs(a) * abs(m) + abs(h) + 1.0) + abs(alpha) * 2.0**-100
        if len(box):
            margin += abs(alpha) * gamma_n * (1 + 4 * gamma_n) * float(largest_weight[c]) * float(box[b, 0, p])
        n = math.floor(u)
        doubt = (u - n <= margin) or (n + 1 - u <= margin)
        if n < 0:
            n, doubt = 0, doubt and u > -margin
        if levels >= 0 and n >= levels:
            n, doubt = levels, doubt and u < levels + 1 + margin
        counts[b, c, p], near[b, c, p] = n, doubt
    return counts, near


@pytest.mark.parametrize("levels", [-1, 0, 3])
@pytest.mark.parametrize("bounded", [False, True])
def test_the_decision_kernel_is_its_definition(levels, bounded):
    """u on integers, within the margin of them, beyond both ends, and anywhere: the same
    counts and doubts as the definition; the near neurons listed per image (all of them,
    also past the room of the list), and the largest count of the others."""
    from qsnn.snn.exact import _decide_kernel

    rng = np.random.default_rng(5)
    images, plane = 4, 60  # (three channels)
    slope = np.array([1.5, -0.75, 2.0**-10])
    mean, shift, inverse = np.array([0.25, -3.0, 100.0]), np.array([0.5, 2.5, -1.0]), 1 / 255
    targets = np.concatenate([np.arange(-2, 6), np.arange(-2, 6) + 1e-13, np.arange(-2, 6) - 1e-13,
                              np.arange(-2, 6) + 1e-5, rng.uniform(-3, 7, 28)])  # u values (plane of them)
    alpha = slope * inverse
    beta = shift - slope * mean
    first = ((targets[None, None, :] - beta[None, :, None]) / alpha[None, :, None]).repeat(images, 0)
    first = first * rng.choice([1.0, 1 + 2.0**-40], first.shape)  # some a hair off
    first = first.astype(np.float32)
    box = rng.uniform(0, 50, (images, 1, plane)).astype(np.float32) if bounded else np.empty((0, 1, 1), np.float32)
    largest_weight = np.array([0.5, 2.0, 1e-3], np.float32)
    gamma_n = 25 * 2.0**-24
    wanted_counts, wanted_near = _decide_by_the_definition(first, box, largest_weight, gamma_n, slope, mean, shift,
                                                           inverse, levels)
    assert wanted_near.any() and (~wanted_near).any() and ((wanted_counts > 0).any() or levels == 0)
    for room in (256, 2):
        counts = np.empty(first.shape, np.int64)
        inputs = np.empty(first.shape, np.float32)
        near = np.empty(first.shape, bool)
        found, found_count, top = np.empty((images, room), np.int64), np.empty(images, np.int64), np.empty(images, np.int64)
        _decide_kernel(first, box, largest_weight, gamma_n, slope, mean, shift, inverse, levels, counts, inputs, near,
                       found, found_count, top)
        assert np.array_equal(counts, wanted_counts) and np.array_equal(inputs, wanted_counts.astype(np.float32))
        assert np.array_equal(near, wanted_near)
        for b in range(images):
            listed = np.flatnonzero(wanted_near[b])
            assert found_count[b] == len(listed)
            assert found[b, : min(room, len(listed))].tolist() == listed[:room].tolist()
            assert top[b] == max([0, *wanted_counts[b][~wanted_near[b]].tolist()])
