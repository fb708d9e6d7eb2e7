"""Neuron dynamics on hand-computed cases (ALGORITHMS.md §3)."""

import torch

from qsnn.snn.neurons import (
    BIG,
    Thresholds,
    adaptive_init,
    adaptive_step,
    nsd_init,
    nsd_step,
    rising_threshold_step,
    scatter_gather,
    target_count,
    threshold,
)


def table(theta0, step, levels, constant=None, divisor=2**30):
    """Threshold tables T(i) = ceil(theta0 + i step) in fixed point (per channel)."""
    constant = [-1] * len(theta0) if constant is None else constant
    size = 2**12 if levels is None else levels
    return Thresholds.linear(
        torch.round(torch.tensor(theta0, dtype=torch.float64) * divisor).to(torch.int64),
        torch.round(torch.tensor(step, dtype=torch.float64) * divisor).to(torch.int64),
        divisor,
        torch.full((len(theta0),), size, dtype=torch.int64),
        torch.tensor(constant, dtype=torch.int64),
    )


def column(values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


def run_nsd(th, currents):
    state = nsd_init(column([0.0]))
    spikes = []
    for current in currents:
        state, s = nsd_step(state, column([current]), th)
        spikes.append(int(s))
    return spikes, int(state.count)


def test_threshold_table_is_the_ceiling_of_a_fixed_point_accumulator():
    th = table([2.5], [1.25], levels=4, divisor=4)  # A = 10, D = 5
    like = column([0.0])
    got = [float(threshold(th, i, like)) for i in range(-1, 6)]
    # T(i) = ceil(2.5 + 1.25 i): 3, 4, 5, 7; below 0 -> -BIG, at or above N -> +BIG
    assert got == [-BIG, 3.0, 4.0, 5.0, 7.0, BIG, BIG]


def test_target_count_ties_fire_and_bound_clips():
    th = table([3.0], [2.0], levels=3)  # thresholds 3, 5, 7
    v = column([2.0, 3.0, 4.0, 5.0, 6.9, 7.0, 100.0, -50.0])
    assert target_count(v, th).flatten().tolist() == [0, 1, 1, 2, 2, 3, 3, 0]


def test_target_count_unbounded_and_constant_channel():
    th = table([0.5, 0.5], [1.0, 1.0], levels=None, constant=[-1, 2])
    v = torch.tensor([[0.0, 0.0], [1.0, -1e9], [41.0, 1e9]], dtype=torch.float64)
    # channel 0: T(i) = ceil(0.5 + i) = i + 1, so m = V for V >= 0; channel 1 is fixed at 2
    assert target_count(v, th).tolist() == [[0, 2], [1, 2], [41, 2]]


def test_scaled_thresholds_reproduce_the_original_rounding():
    exact = table([3.00003], [1.0], levels=4)
    scaled = table([3.00003], [1.0], levels=4, divisor=10000)
    v = column([3.0])
    assert int(target_count(v, exact)) == 0  # 3 < 3.00003
    assert int(target_count(v, scaled)) == 1  # round(30000.3) / 10^4 = 3.0 <= 3


def test_nsd_tie_at_threshold_fires():
    th = table([4.0], [2.0], levels=None)  # thresholds 4, 6, 8, ...
    spikes, count = run_nsd(th, [4.0, 0.0, 0.0])
    assert spikes == [1, 0, 0] and count == 1


def test_nsd_one_spike_per_step_until_the_count_is_reached():
    th = table([1.0], [1.0], levels=None)  # thresholds 1, 2, 3, ...
    spikes, count = run_nsd(th, [3.0, 0.0, 0.0, 0.0, 0.0])
    assert spikes == [1, 1, 1, 0, 0] and count == 3


def test_nsd_negative_spike_undoes_an_early_positive_one():
    th = table([2.0], [2.0], levels=None)  # thresholds 2, 4, ...
    # excitatory input arrives first, inhibition one step later: V = 3 then -1
    spikes, count = run_nsd(th, [3.0, -4.0, 0.0])
    assert spikes == [1, -1, 0] and count == 0


def test_nsd_respects_the_upper_bound():
    th = table([1.0], [1.0], levels=2)
    spikes, count = run_nsd(th, [100.0, 0.0, 0.0, 0.0])
    assert spikes == [1, 1, 0, 0] and count == 2


def test_nsd_silent_neuron_never_spikes_negative():
    th = table([5.0], [1.0], levels=4)
    spikes, count = run_nsd(th, [4.0, -10.0, 3.0, 2.0])
    assert spikes == [0, 0, 0, 0] and count == 0


def test_adaptive_neuron_equals_nsd_on_random_input():
    generator = torch.Generator().manual_seed(0)
    th = table([1.5, -2.0, 7.25], [2.0, 0.5, 3.0], levels=5, constant=[-1, -1, 1])
    like = torch.zeros(50, 3, dtype=torch.float64)
    nsd, adaptive = nsd_init(like), adaptive_init(like, th)
    for _ in range(30):
        current = torch.randint(-4, 5, like.shape, generator=generator).to(torch.float64)
        nsd, s1 = nsd_step(nsd, current, th)
        adaptive, s2 = adaptive_step(adaptive, current, th)
        assert torch.equal(s1, s2)
    assert torch.equal(nsd.count, adaptive.count)
    assert torch.equal(adaptive.upper, threshold(th, adaptive.count, like))
    assert torch.equal(adaptive.lower, threshold(th, adaptive.count - 1, like))


def test_adaptive_thresholds_step_through_the_table():
    th = table([2.0], [3.0], levels=None)  # 2, 5, 8, ...
    state = adaptive_init(column([0.0]), th)
    assert (float(state.lower), float(state.upper)) == (-BIG, 2.0)
    state, s = adaptive_step(state, column([6.0]), th)
    assert int(s) == 1 and (float(state.lower), float(state.upper)) == (2.0, 5.0)
    state, s = adaptive_step(state, column([0.0]), th)
    assert int(s) == 1 and (float(state.lower), float(state.upper)) == (5.0, 8.0)
    state, s = adaptive_step(state, column([-3.0]), th)  # V = 3 < 5: step back down
    assert int(s) == -1 and (float(state.lower), float(state.upper)) == (2.0, 5.0)


def test_rising_threshold_is_a_thermometer_code():
    th = table([10.0], [5.0], levels=4)  # 10, 15, 20, 25
    v = column([9.0, 10.0, 19.0, 25.0, 1000.0])
    trains = torch.stack([rising_threshold_step(t, v, th).flatten() for t in range(6)], dim=1)
    assert trains.tolist() == [
        [0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
    ]


def test_scatter_gather_counts_and_spike_drop():
    th = table([1.0], [1.0], levels=4)
    v = column([0.0, 1.0, 2.5, 9.0] * 250)
    assert scatter_gather(v, th)[:4].flatten().tolist() == [0, 1, 2, 4]
    generator = torch.Generator().manual_seed(0)
    dropped_all = scatter_gather(v, th, drop_ratio=1.0, generator=generator)
    assert int(dropped_all.sum()) == 0
    half = scatter_gather(v, th, drop_ratio=0.5, generator=generator)
    assert bool((half <= scatter_gather(v, th)).all())
    # 250 * (1 + 2 + 4) = 1750 spikes, half of them dropped on average
    assert 800 < int(half.sum()) < 950


def test_thresholds_out_of_reach_and_zero_steps():
    flat = table([2.0], [0.0], levels=3)  # all levels at 2: a membrane >= 2 reaches all 3
    assert target_count(column([1.0, 2.0, 9.0]), flat).flatten().tolist() == [0, 3, 3]
    short = table([0.0], [1.0], levels=None)._replace(size=torch.tensor([5]))
    assert target_count(column([100.0]), short).flatten().tolist() == [5]
    assert float(threshold(short, 5, column([0.0]))) == BIG


def test_prepared_tables_give_every_threshold_the_table_gives():
    """threshold() through the prepared lookup equals the table's own rule at every level
    from far below -1 to beyond the width: per-channel sizes, a constant channel, the
    ends at +-BIG; on a batch of maps and on a single map."""
    th = Thresholds.linear([3, -5, 0, 7], [4, 2, 0, 9], 3, [5, 2, 1, 5], [-1, -1, 2, -1])
    prepared = th.prepared()
    generator = torch.Generator().manual_seed(0)
    for shape in ((6, 4, 3, 3), (4,)):
        like = torch.zeros(shape, dtype=torch.float64)
        levels = torch.randint(-4, 9, shape, generator=generator)
        assert torch.equal(threshold(prepared, levels, like), threshold(th, levels, like))
        for level in (-2, -1, 0, 1, 4, 5, 7):
            assert torch.equal(threshold(prepared, level, like), threshold(th, level, like))
    assert prepared.lookup[2].tolist() == [-BIG, -BIG, -BIG, BIG, BIG, BIG, BIG]  # (constant count 2)
    assert prepared.lookup[1].tolist() == [-BIG, -1.0, -1.0, BIG, BIG, BIG, BIG]  # (size 2: ceil(-5/3), ceil(-3/3))
    state = nsd_init(torch.zeros(4, dtype=torch.float64))
    current = torch.tensor([4.0, -1.0, 0.0, 30.0], dtype=torch.float64)
    assert torch.equal(nsd_step(state, current, prepared)[1], nsd_step(state, current, th)[1])
