"""The simulator's bookkeeping: SOPs with exact fan-out, spikes, T_lossless, auto steps, files."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qsnn.errors import QsnnError
from qsnn.measure.fanout import ann_macs, fanout_map, layer_costs, total_macs
from qsnn.report.summary import summarize
from qsnn.report.tables import summary_table, write_simulation
from qsnn.sim import engine, events, stepwise, verify
from qsnn.sim import run as sim_run
from qsnn.sim.noise import NoiseDraws
from qsnn.sim.run import SimulationResult, simulate
from qsnn.sim.stepwise import simulate_batch
from qsnn.snn import counting, reference
from qsnn.snn.convert import convert
from qsnn.snn.reference import reference_counts
from tests.helpers import linear_tables, random_net, random_pixels


def brute_force_fanout(layer, sender_shape):
    """Fan-out of every input position: ones through the transposed convolution."""
    out_channels, out_h, out_w = layer.out_shape
    ones_out = torch.ones(1, out_channels, out_h, out_w, dtype=torch.float64)
    kernel = torch.ones(out_channels, sender_shape[0], layer.kernel, layer.kernel, dtype=torch.float64)
    cover = F.conv_transpose2d(ones_out, kernel, stride=layer.stride, padding=layer.padding)[0]
    full = torch.zeros(sender_shape, dtype=torch.float64)  # inputs no window reaches: 0
    full[:, : cover.shape[1], : cover.shape[2]] = cover[:, : sender_shape[1], : sender_shape[2]]
    return full


@pytest.mark.parametrize("notation", ["6C5-P2-8C3-12", "4C3s-P2-6C3s-P2-10", "5C4-P3-9"])
def test_fanout_is_exact_at_the_borders(notation):
    padding = "same" if "s" in notation else "valid"
    model = random_net(notation, k=1, B=2, input_shape=(1, 13, 13), padding=padding)
    net = convert(model, "nsd")
    for index, layer in enumerate(net.layers[:-1]):
        receiver = net.layers[index + 1]
        got = fanout_map(receiver, layer.out_shape, net.classes)
        if receiver.kind == "conv":
            expected = brute_force_fanout(receiver, layer.out_shape)
            assert torch.equal(got.double(), expected)
        else:
            assert bool((got == receiver.neurons).all())
    plan = model.plan
    assert ann_macs(net) == plan.macs - plan.layers[0].macs
    assert total_macs(net) == plan.macs


def test_sops_count_each_spike_times_its_fanout():
    model = random_net("5-4", k=1, B=2, input_shape=(1, 4, 4), seed=3)
    net = convert(model, "nsd")
    pixels = random_pixels(6, shape=(1, 4, 4), seed=1)
    record = simulate_batch(net, pixels, 8)
    # layer 1 (5 neurons) feeds a dense layer of 4; layer 2 feeds 10 classes
    assert record.sops[0].tolist() == [4 * int(v) for v in (record.positive[0] + record.negative[0])]
    assert record.sops[1].tolist() == [10 * int(v) for v in (record.positive[1] + record.negative[1])]


def test_spikes_add_up_to_the_final_counts():
    model = random_net("6C5-P2-8C3-12", k=2, B=None, seed=4)
    net = convert(model, "nsd")
    record = simulate_batch(net, random_pixels(16, seed=4), None)
    for layer, counts in enumerate(record.counts):
        assert int((record.positive[layer] - record.negative[layer]).sum()) == int(counts.sum())
    assert int(record.negative.sum()) > 0  # the random net does need negative spikes


def test_auto_steps_stop_when_nothing_is_in_flight():
    model = random_net("6C5-P2-8C3-12", k=1, B=4, seed=5)
    net = convert(model, "nsd")
    pixels = random_pixels(12, seed=5)
    auto = simulate_batch(net, pixels, None)
    steps = auto.predictions.shape[0]
    assert int(auto.positive[:, -1].sum() + auto.negative[:, -1].sum()) > 0  # last step still active
    longer = simulate_batch(net, pixels, steps + 6)
    assert torch.equal(longer.predictions[:steps], auto.predictions)
    assert bool((longer.predictions[steps:] == auto.predictions[-1]).all())
    assert int(longer.positive[:, steps:].sum() + longer.negative[:, steps:].sum()) == 0
    assert all(torch.equal(a, b) for a, b in zip(auto.counts, longer.counts, strict=True))


def test_int_encoding_is_a_thermometer_and_matches_nsd_spike_for_spike():
    model = random_net("6C5-P2-8C3-12", k=0, B=None, ternary=True, seed=6, encoding_k=0, encoding_B=4)
    pixels = random_pixels(10, seed=6)
    nsd = simulate_batch(convert(model, "nsd"), pixels, 12)
    integer = simulate_batch(convert(model, "int"), pixels, 12)
    assert torch.equal(nsd.positive, integer.positive)
    assert torch.equal(nsd.negative, integer.negative)
    assert torch.equal(nsd.predictions, integer.predictions)
    assert int(integer.positive[0, 4:].sum()) == 0 and int(integer.negative[0].sum()) == 0


def test_t_lossless_is_the_first_step_of_the_final_agreement():
    def result(agree):
        return SimulationResult("nsd", len(agree), 10, 0.0, agree, agree, 10, 10, [[0]], [[0]], [[0]], [0], [0])

    assert result([3, 10, 9, 10, 10]).t_lossless == 4
    assert result([10, 10]).t_lossless == 1
    assert result([10, 9]).t_lossless is None


def test_the_papers_t_is_the_first_step_of_the_final_accuracy():
    """The papers' T: from it on the number of correct images stays at its final value,
    even while predictions still change (agreement below 100%)."""

    def result(correct, agree):
        return SimulationResult("nsd", len(correct), 10, 0.0, correct, agree, 9, 9, [[0]], [[0]], [[0]], [0], [0])

    swapped = result([2, 9, 9, 9], [2, 8, 9, 10])  # steps 2-3: one image right, another wrong
    assert (swapped.t_paper, swapped.t_lossless) == (2, 4)
    assert result([5, 9, 8, 9], [5, 9, 9, 10]).t_paper == 4
    assert result([9], [10]).t_paper == 1
    assert result([3, 4], [6, 7]).t_paper == 2 and result([3, 4], [6, 7]).t_lossless is None


def test_dataset_simulation_is_independent_of_the_batch_size(tmp_path):
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=7)
    net = convert(model, "nsd")
    pixels, labels = random_pixels(30, seed=7), torch.randint(0, 10, (30,))
    one = simulate(net, pixels, labels, steps=None, batch_size=30)
    three = simulate(net, pixels, labels, steps=None, batch_size=7)
    assert one.steps == three.steps
    for name in ("correct", "agree", "positive", "negative", "sops", "spiking_neurons", "count_mismatches"):
        assert getattr(one, name) == getattr(three, name), name
    assert one.agree[-1] == 30 and one.count_mismatches == [0, 0, 0, 0]
    assert len(three.batches["correct"]) == 5
    assert all(len(layer) == three.steps for batch in three.batches["sops"] for layer in batch)
    summary = summarize(three, net, dataset="random")
    assert summary["lossless"] and summary["t_lossless"] == three.t_lossless
    assert summary["per_image"]["ann_ops"] == 3 * ann_macs(net)
    assert summary["per_image"]["sops"] == sum(map(sum, three.sops)) / 30
    out = write_simulation(tmp_path / "sim", summary, three)
    lines = (out / "accuracy.txt").read_text().splitlines()  # a line per (batch, step)
    assert len(lines) == 5 * three.steps
    assert sum(int(lines[b * three.steps + three.steps - 1]) for b in range(5)) == three.correct[-1]
    spike_num = (out / "spike_num.txt").read_text().splitlines()  # accumulated since t = 0
    assert sum(int(spike_num[b * three.steps + three.steps - 1]) for b in range(5)) == (
        sum(map(sum, three.positive)) + sum(map(sum, three.negative))
    )
    saved = json.loads((out / "result.json").read_text())
    assert saved["agreement"] == 30 and saved["provenance"]["seed"] == 0
    assert (out / "per_step.csv").read_text().splitlines()[0].startswith("step,accuracy,correct,agree")
    assert "LOSSLESS" not in summary_table([summary]) and "30/30" in summary_table([summary])


def test_noise_keeps_nsd_lossless_against_the_noisy_ann_and_sg_drops_spikes():
    model = random_net("6C5-P2-8C3-12", k=1, B=2, seed=8)
    pixels, labels = random_pixels(20, seed=8), torch.randint(0, 10, (20,))
    noisy = simulate(convert(model, "nsd"), pixels, labels, steps=None, noise=0.3, seed=1)
    assert noisy.agree[-1] == 20 and noisy.count_mismatches == [0, 0, 0, 0]
    sg = convert(model, "sg")
    clean = simulate(sg, pixels, labels, steps=1)
    none_dropped = simulate(sg, pixels, labels, steps=1, noise=0.0)
    dropped = simulate(sg, pixels, labels, steps=1, noise=0.5, seed=2)
    assert clean.positive == none_dropped.positive
    assert sum(map(sum, dropped.positive)) < sum(map(sum, clean.positive))
    assert dropped.sg_drop == "encoding" and clean.sg_drop is None


def test_sg_drops_spikes_in_the_encoding_layer_only_unless_asked_for_every_layer():
    """The SG paper's noise reaches conv1 only (its noise_ratio is given to the first
    Conv2d alone); dropping in every layer is the named alternative. Both draw the
    encoding layer's drops from the same streams."""
    from qsnn.sim.noise import dropped_spikes as _dropped

    model = random_net("6C5-P2-8C3-12", k=1, B=2, seed=8)
    pixels, labels = random_pixels(20, seed=8), torch.randint(0, 10, (20,))
    sg = convert(model, "sg")
    paper = simulate(sg, pixels, labels, steps=1, noise=0.5, seed=2)
    every = simulate(sg, pixels, labels, steps=1, noise=0.5, seed=2, sg_drop="every-layer")
    clean = simulate(sg, pixels, labels, steps=1)
    assert paper.positive[0] == every.positive[0] and paper.positive[0][0] < clean.positive[0][0]
    later = [sum(map(sum, run.positive[1:])) for run in (every, paper)]
    assert later[0] < later[1]
    counts = torch.full((2, 3), 4)
    assert _dropped(counts, 0.5, NoiseDraws(1), 1) is counts  # hidden layers keep their spikes
    assert not torch.equal(_dropped(counts, 0.5, NoiseDraws(1, sg_drop="every-layer"), 1), counts)
    with pytest.raises(QsnnError, match="sg_drop must be one of encoding, every-layer, got 'all'"):
        simulate(sg, pixels, labels, steps=1, noise=0.5, sg_drop="all")


def test_sg_neurons_and_synapses_are_multiplied():
    model = random_net("6C5-P2-8C3-12", k=1, B=2, seed=9)
    sg, nsd = convert(model, "sg"), convert(model, "nsd")
    for a, b in zip(layer_costs(sg), layer_costs(nsd), strict=True):
        assert a.neurons == 4 * b.neurons
    costs = layer_costs(sg)
    assert costs[-1].synapses_out == 4 * costs[-1].ann_macs  # output accumulator is not copied
    assert costs[0].synapses_out == 16 * costs[0].ann_macs
    record = simulate_batch(sg, random_pixels(5, seed=9), None)
    counts = reference_counts(sg, random_pixels(5, seed=9)).counts
    assert int(record.sops[0, 0]) == 4 * int((counts[0] * fanout_map(sg.layers[1], sg.layers[0].out_shape, 10)).sum())


def test_bad_simulation_input_is_explained():
    net = convert(random_net(k=1, B=2), "nsd")
    with pytest.raises(QsnnError, match=r"expects images of shape \(1, 28, 28\), got \(1, 24, 24\)"):
        simulate(net, random_pixels(2, shape=(1, 24, 24)), torch.zeros(2, dtype=torch.int64), steps=3)
    with pytest.raises(QsnnError, match="--noise must be between 0 and 1, got 1.5"):
        simulate(net, random_pixels(2), torch.zeros(2, dtype=torch.int64), steps=3, noise=1.5)


FAST_CASES = [
    # notation, k, B, ternary, encoding_B, scheme, steps
    ("6C5-P2-8C3-12", 1, 2, False, "same", "nsd", None),
    ("6C5-P2-8C3-12", 2, None, False, "same", "nsd", None),
    ("6C5-P2-8C3-12", 2, None, False, "same", "nsd", 40),  # three windows of steps
    ("6C5-P2-8C3-12", 0, None, True, 4, "int", None),
    ("6C5-P2-8C3-12", 1, 4, True, "same", "int", 5),
    ("4C3s-P2-6C3s-P2-10", 3, 1, True, "same", "nsd", 3),
    ("20-16", 1, None, True, 2, "int", None),
    ("30", 2, None, False, "same", "nsd", None),  # the encoding layer drives the output
    ("30", 1, 4, True, 2, "int", 20),  # ... over two windows of steps
    ("6C5-P2-8C3-12", 1, 2, False, "same", "sg", None),
    ("4C3s-P2-6C3s-P2-10", 2, 4, True, "same", "sg", 1),
]


@pytest.mark.parametrize(("notation", "k", "B", "ternary", "encoding_B", "scheme", "steps"), FAST_CASES)
def test_event_engine_equals_the_reference_count_for_count(notation, k, B, ternary, encoding_B, scheme, steps):
    from qsnn.sim.events import EventSimulator

    shape = (3, 12, 12) if "s" in notation else (1, 28, 28)
    model = random_net(
        notation, k=k, B=B, ternary=ternary, seed=k + 10, input_shape=shape,
        encoding_B=encoding_B, padding="same" if "s" in notation else "valid",
    )
    net = convert(model, scheme)
    pixels = random_pixels(9, shape=shape, seed=k)
    fast = EventSimulator(net)(net, pixels, steps)
    slow = simulate_batch(net, pixels, steps)
    if scheme == "sg":  # spike drop draws the same numbers from the same generator
        noisy_fast = EventSimulator(net)(net, pixels, 1, noise=0.3, draws=NoiseDraws(5))
        noisy_slow = simulate_batch(net, pixels, 1, noise=0.3, draws=NoiseDraws(5))
        assert torch.equal(noisy_fast.positive, noisy_slow.positive)
        assert torch.equal(noisy_fast.predictions, noisy_slow.predictions)
    for name in ("predictions", "positive", "negative", "sops", "spiking_neurons"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert all(torch.equal(a, b) for a, b in zip(fast.counts, slow.counts, strict=True))


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("steps", [None, 7])
def test_event_engine_is_the_same_over_any_window_of_steps(monkeypatch, window, steps):
    """The engine runs each layer over a window of steps before the next layer: windows
    of 1 (step by step) and 3 (a window ending mid-run, quiescence inside a window) give
    the reference simulator's records and counts, fixed steps or until quiescent."""
    from qsnn.sim.events import EventSimulator

    monkeypatch.setattr(engine, "WINDOW", window)
    net = convert(random_net("6C5-P2-8C3-12", k=2, B=None, seed=12), "nsd")
    pixels = random_pixels(9, seed=2)
    fast = EventSimulator(net)(net, pixels, steps)
    slow = simulate_batch(net, pixels, steps)
    assert fast.predictions.shape[0] > window  # the run spans several windows
    for name in ("predictions", "positive", "negative", "sops", "spiking_neurons"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert all(torch.equal(a, b) for a, b in zip(fast.counts, slow.counts, strict=True))


def test_event_engine_picks_int32_only_when_every_membrane_fits():
    from qsnn.sim.engine import compile_program

    ternary = convert(random_net(k=1, B=2, ternary=True), "nsd")
    floats = convert(random_net(k=1, B=2, ternary=False), "nsd")
    assert compile_program(ternary).dtype == np.int32
    assert compile_program(ternary).weights.dtype == np.int8  # ternary weights: one byte each
    # float32 weights on a 2^-s grid: float32 holds them, float64 membranes add them exactly
    assert compile_program(floats).dtype == np.float64
    assert compile_program(floats).weights.dtype == np.float32


def test_event_engine_with_weights_float32_cannot_hold():
    """Integer weights with more than 24 significant bits keep int64 membranes, and the
    engine still equals the reference simulator count for count."""
    from dataclasses import replace

    from qsnn.sim.engine import compile_program
    from qsnn.sim.events import EventSimulator

    net = convert(random_net("6C5-P2-8C3-12", k=1, B=None, seed=5), "nsd")
    wide = net.layers[2].weight * 3 + np.sign(net.layers[2].weight)  # odd: more than 24 significant bits
    assert not np.array_equal(wide.astype(np.float32).astype(np.int64), wide)
    net = replace(net, layers=[*net.layers[:2], replace(net.layers[2], weight=wide), *net.layers[3:]])
    program = compile_program(net)
    assert program.dtype == np.int64 and program.weights.dtype == np.int64
    pixels = random_pixels(9, seed=5)
    fast = EventSimulator(net)(net, pixels, 6)
    slow = simulate_batch(net, pixels, 6)
    for name in ("predictions", "positive", "negative", "sops", "spiking_neurons"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert all(torch.equal(a, b) for a, b in zip(fast.counts, slow.counts, strict=True))
    assert int(fast.positive[2].sum()) > 0  # the wide layer did spike


def test_event_engine_under_noise_and_through_simulate():
    model = random_net("6C5-P2-8C3-12", k=1, B=None, seed=12)
    net = convert(model, "nsd")
    pixels, labels = random_pixels(20, seed=12), torch.randint(0, 10, (20,))
    fast = simulate(net, pixels, labels, steps=None, noise=0.2, seed=3, batch_size=8)
    slow = simulate(net, pixels, labels, steps=None, noise=0.2, seed=3, batch_size=8, simulator=simulate_batch)
    for name in ("steps", "correct", "agree", "positive", "negative", "sops", "spiking_neurons", "count_mismatches"):
        assert getattr(fast, name) == getattr(slow, name), name


@pytest.mark.parametrize(("k", "B", "ternary", "scale"), [(1, 2, False, None), (2, None, False, None), (0, None, True, 10000), (3, 1, False, None)])
def test_the_three_count_implementations_agree(k, B, ternary, scale):
    """target_count (torch, the definition), the reference ANN's kernel (estimate + exact
    correction) and the spiking side's kernel (scan of the binary neurons) give the same
    count for every neuron, including membranes far outside the thresholds and noisy ones."""
    from qsnn.snn.neurons import target_count
    from qsnn.snn.reference import apply_layer, layer_weight

    model = random_net("6C5-P2-8C3-12", k=k, B=B, ternary=ternary, seed=3, encoding_B=4 if ternary else "same")
    net = convert(model, "int" if ternary else "nsd", threshold_scale=scale)
    x = random_pixels(30).to(torch.float64)
    generator = torch.Generator().manual_seed(0)
    for index, layer in enumerate(net.layers):
        membrane = apply_layer(layer, x, layer_weight(layer, "cpu"))
        probe = membrane.clone()
        if index == 0:
            probe += torch.rand(probe.shape, generator=generator, dtype=torch.float64) * 3
        probe[:2] *= -1e6
        probe[2:4] *= 1e6
        expected = target_count(probe, net.thresholds(index)).numpy()
        assert np.array_equal(counting.counts(net.thresholds(index), probe.numpy()), expected)
        assert np.array_equal(counting.gathered_counts(net.thresholds(index), probe.numpy()), expected)
        found, differing = counting.checked_counts(net.thresholds(index), probe.numpy())
        assert np.array_equal(found, expected) and differing == 0
        x = target_count(membrane, net.thresholds(index)).to(torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dense", [False, True])
def test_count_kernels_at_every_threshold_tie(dtype, dense):
    """Membranes exactly at, just below and just above every threshold T(i), for tables
    with 1, 4, 16, 17 and 40 levels, a zero step, a negative offset and a constant
    channel: the estimate-and-correct kernel, the binary neurons' kernel and the torch
    definition agree on every neuron, for float32 and float64 membranes, in the per-channel
    (convolution) and the one-neuron-per-channel (dense) layouts."""
    from qsnn.snn.neurons import Thresholds, target_count, threshold

    th = Thresholds.linear(
        offset=torch.tensor([5, -9, 0, 13, 7, 3, 21], dtype=torch.int64),
        step=torch.tensor([7, 3, 0, 11, 5, 2, 9], dtype=torch.int64),
        divisor=7,
        size=torch.tensor([1, 4, 16, 17, 40, 16, 3], dtype=torch.int64),
        constant=torch.tensor([-1, -1, -1, -1, -1, 2, -1], dtype=torch.int64),
    )
    channels = len(th.size)
    levels = torch.arange(-1, 42, dtype=torch.int64)
    table = threshold(th, levels[None, None, :].expand(1, channels, -1), torch.zeros(1, channels, len(levels)))[0]
    table = table.clamp(-1000, 1000)  # the sentinels stand for values far outside the table
    values = torch.cat([table - 1, table, table + 1, table + 0.5, torch.full((channels, 2), 0.0)], dim=1)
    values = torch.cat([values, -values], dim=1)  # (C, P): every tie, on both sides
    if dense:
        membrane = values.T.contiguous()  # (P images, C neurons): one neuron per channel
    else:
        membrane = torch.stack([values, values.flip(1)])  # (2 images, C, P)
    membrane = membrane.to(dtype)
    expected = target_count(membrane.to(torch.float64), th).numpy()
    assert np.array_equal(counting.counts(th, membrane.numpy()), expected)
    assert np.array_equal(counting.gathered_counts(th, membrane.numpy()), expected)
    found, differing = counting.checked_counts(th, membrane.numpy())
    assert np.array_equal(found, expected) and differing == 0
    assert expected.max() == 40 and expected.min() == 0  # the longest table is run through
    assert (expected[..., 5, :] == 2).all() if not dense else (expected[:, 5] == 2).all()


@pytest.mark.parametrize("dense", [False, True])
def test_checked_counts_report_every_neuron_the_binary_neurons_count_otherwise(dense):
    """The ANN's count kernel with the binary neurons' count in the same pass: given the
    tables of other thresholds for the binary neurons, it returns the ANN's counts and
    reports exactly the neurons where the two differ, image by image."""
    from qsnn.snn.neurons import Thresholds, target_count

    th = Thresholds.linear(
        offset=torch.tensor([5, -9, 0, 13], dtype=torch.int64), step=torch.tensor([7, 3, 0, 11], dtype=torch.int64),
        divisor=7, size=torch.tensor([1, 4, 16, 9], dtype=torch.int64), constant=torch.tensor([-1, -1, -1, -1]),
    )
    other = Thresholds.linear(th.offset + torch.tensor([0, 1, 7, -3]), th.step, th.divisor, th.size, th.constant)  # ties move on three channels
    generator = torch.Generator().manual_seed(2)
    membrane = torch.randint(-20, 40, (5, 4, 1 if dense else 30), generator=generator).to(torch.float64)
    if dense:
        membrane = membrane[:, :, 0]
    table = np.empty((4, counting.TABLED_LEVELS))
    counting.fill_table(table, *counting._kernel_tables(other))
    differing = np.zeros(5, np.int64)
    found = counting._run_counts(counting._counts, th, membrane.numpy(), extra=(table, differing))
    expected, binary = target_count(membrane, th), target_count(membrane, other)
    assert np.array_equal(found, expected.numpy())
    assert differing.tolist() == (expected != binary).flatten(1).sum(1).tolist()
    assert differing.sum() > 0


def test_sg_skips_its_own_pass_only_where_the_binary_neurons_agree_with_the_ann(monkeypatch):
    """SG's spiking counts come from the ANN's pass when every layer's binary neurons,
    counted by their own algorithm there, agree with the ANN; where one layer does not,
    the simulation counts its own spikes again from that pass's membranes, and both ways
    equal the reference simulator."""
    from qsnn.sim.events import EventSimulator

    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=False, seed=8), "sg")
    pixels, labels = random_pixels(12, seed=8), torch.randint(0, 10, (12,))
    slow = simulate(net, pixels, labels, steps=None, verify="sample", batch_size=5, simulator=simulate_batch)
    second_passes = []
    original = EventSimulator._scatter_gather
    monkeypatch.setattr(EventSimulator, "_scatter_gather", lambda self, *a: second_passes.append(1) or original(self, *a))
    fast = simulate(net, pixels, labels, steps=None, verify="sample", batch_size=5)
    assert second_passes == []
    checked = counting.checked_counts
    monkeypatch.setattr(counting, "checked_counts", lambda th, m: (checked(th, m)[0], 1 if m.shape[1] == 8 else 0))
    again = simulate(net, pixels, labels, steps=None, verify="sample", batch_size=5)
    assert second_passes == [1, 1, 1]  # one per batch
    for run in (fast, again):
        for name in ("correct", "agree", "positive", "negative", "sops", "spiking_neurons", "count_mismatches"):
            assert getattr(run, name) == getattr(slow, name), name


def test_sg_counts_where_it_departs_from_the_ann_as_it_counts():
    """When an SG layer's counts differ from the ANN's (here: the ANN given other tables for
    one layer), the fast path's in-kernel comparison reports the same mismatches, and the
    layers after it recompute their membranes from the SNN's own counts, exactly as the
    reference simulator does."""
    from dataclasses import replace

    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=4), "sg")
    hidden = net.layers[1]
    shifted = replace(hidden, ann_thresholds=linear_tables(hidden, hidden.offset + hidden.step // 2 + 1, hidden.step))
    net = replace(net, layers=[net.layers[0], shifted, *net.layers[2:]])
    pixels, labels = random_pixels(30, seed=4), torch.randint(0, 10, (30,))
    fast = simulate(net, pixels, labels, steps=None, verify="sample", batch_size=7)
    slow = simulate(net, pixels, labels, steps=None, verify="sample", batch_size=7, simulator=simulate_batch)
    assert fast.count_mismatches == slow.count_mismatches
    assert fast.count_mismatches[0] == 0 and fast.count_mismatches[1] > 0
    for name in ("correct", "agree", "positive", "negative", "sops", "spiking_neurons"):
        assert getattr(fast, name) == getattr(slow, name), name


@pytest.mark.parametrize("scheme", ["nsd", "sg"])
def test_noise_does_not_depend_on_the_batch_size(scheme):
    """Each image draws its noise (pixel noise, SG spike drop) from its own stream, named by
    the seed and its index in the dataset: the same seed gives the same run whatever the
    batch size, and another seed another run."""
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=6)
    net = convert(model, scheme)
    pixels, labels = random_pixels(23, seed=6), torch.randint(0, 10, (23,))
    runs = [simulate(net, pixels, labels, steps=None, noise=0.3, seed=4, batch_size=size) for size in (23, 5, 8)]
    other = simulate(net, pixels, labels, steps=None, noise=0.3, seed=5, batch_size=8)
    fields = ("correct", "agree", "ann_correct", "positive", "negative", "sops", "spiking_neurons", "count_mismatches")
    for run in runs[1:]:
        for name in fields:
            assert getattr(run, name) == getattr(runs[0], name), name
    assert any(getattr(other, name) != getattr(runs[0], name) for name in ("positive", "sops"))


ENCODING_CASES = [
    # notation, k, B, ternary, input shape, padding
    ("6C5-P2-8C3-12", 1, 2, False, (1, 28, 28), "valid"),
    ("6C5-P2-8C3-12", 3, None, False, (1, 28, 28), "valid"),  # counts up to 31: beyond the table
    ("4C3s-P2-6C3s-P2-10", 2, 4, True, (3, 12, 12), "same"),  # padding, 3 input channels, int32 state
    ("20-16", 1, None, True, (1, 28, 28), "valid"),  # a dense encoding layer
    ("P2-6C3-10", 2, None, False, (3, 12, 12), "valid"),  # stride 2: one weight per reach
]


@pytest.mark.parametrize(("notation", "k", "B", "ternary", "shape", "padding"), ENCODING_CASES)
def test_the_engine_encodes_raw_pixels_into_the_exact_ann_counts(notation, k, B, ternary, shape, padding):
    """The engine's own encoding pass (weights times pixels in float64, counted by its
    table) gives the exact ANN's counts of the encoding layer, for every neuron, with
    zero and negative gammas (random_net), levels beyond the 16 tabled ones and padding."""

    model = random_net(notation, k=k, B=B, ternary=ternary, seed=3, input_shape=shape, padding=padding)
    net = convert(model, "nsd")
    pixels = random_pixels(6, shape=shape, seed=3)
    expected = reference_counts(net, pixels).counts
    program = engine.compile_program(net)
    found = engine.encode(program, pixels.numpy())
    assert found.shape == (6, net.layers[0].neurons)
    assert engine.encode(program, pixels.numpy()[:0]).shape == (0, net.layers[0].neurons)
    assert np.array_equal(found, expected[0].reshape(6, -1).numpy())
    if B is None and k == 3:
        assert int(expected[0].max()) > counting.TABLED_LEVELS


ANN_CASES = [
    # notation, k, B, ternary, encoding_B, scheme, threshold_scale, noise
    ("6C5-P2-8C3-12", 1, 2, False, "same", "nsd", None, 0.0),
    ("6C5-P2-8C3-12", 2, None, False, "same", "nsd", None, 0.2),
    ("6C5-P2-8C3-12", 0, None, True, 4, "int", 10000, 0.0),
    ("4C3s-P2-6C3s-P2-10", 3, 1, True, "same", "nsd", None, 0.0),
    ("5C4-P3-9", 1, 4, True, "same", "int", None, 0.0),
    ("20-16", 1, None, True, 2, "int", None, 0.3),
    # encoding counts of at most 1: the encoding layer is the ANN's after one step, while
    # the layers above (counts up to 4) are still climbing: settled upstream, not here
    ("6C5-P2-8C3-12", 0, 4, False, 1, "nsd", None, 0.0),
]


@pytest.mark.parametrize(("notation", "k", "B", "ternary", "encoding_B", "scheme", "scale", "noise"), ANN_CASES)
def test_the_ann_read_off_the_simulation_is_the_exact_ann(notation, k, B, ternary, encoding_B, scheme, scale, noise):
    """NSD and INT read the quantized ANN off the engine's final membranes where the
    spiking counts upstream are the ANN's, and convolve the ANN's counts elsewhere: after
    1, 2, 4 steps (counts still far from the ANN's) and until quiescent, every count of
    every layer and every logit equal the ANN evaluated from scratch, and the reported
    mismatches equal those of the reference simulator's counts; also with rounded
    thresholds (the ANN keeps the exact ones) and noisy pixels."""
    from qsnn.sim.engine import differences
    from qsnn.sim.events import EventSimulator
    from qsnn.sim.noise import noisy_pixels

    shape = (3, 12, 12) if "s" in notation else (1, 28, 28)
    model = random_net(
        notation, k=k, B=B, ternary=ternary, seed=k + 20, input_shape=shape,
        encoding_B=encoding_B, padding="same" if "s" in notation else "valid",
    )
    net = convert(model, scheme, threshold_scale=scale)
    pixels = random_pixels(13, shape=shape, seed=k + 1)
    if noise:
        pixels = noisy_pixels(pixels, noise, NoiseDraws(7))
    tables = reference_counts(net, pixels)
    expected, expected_logits = tables.counts, tables.logits
    departed = 0
    for steps in (1, 2, 4, None):
        record, counts, logits = EventSimulator(net).against_ann(net, pixels, steps)
        for found, wanted in zip(counts, expected, strict=True):
            assert torch.equal(found.to(torch.int64), wanted)
        assert torch.equal(logits, expected_logits)
        slow = simulate_batch(net, pixels, steps)
        assert record.mismatches == [differences(a.numpy(), b.numpy()) for a, b in zip(slow.counts, expected, strict=True)]
        departed += sum(record.mismatches[:-1])
    assert departed > 0  # some images took the convolution path


def test_the_images_kept_for_the_final_check_do_not_hold_their_batches():
    """What a batch leaves for the check at the end is one image's worth of memory, not
    a view that keeps the whole batch's pixels, counts and logits alive (memory would
    otherwise grow with the test set)."""
    from qsnn.sim.events import EventSimulator

    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, seed=8), "nsd")
    pixels = random_pixels(6, seed=8)
    checks: list = []
    EventSimulator(net).against_ann(net, pixels, 3, checks=checks)
    (image, counts, logits), = checks
    assert len(image) == len(logits) == 1 and all(len(c) == 1 for c in counts)
    for tensor in (image, logits, *counts):
        assert tensor.untyped_storage().nbytes() == tensor.nbytes


@pytest.mark.parametrize("batch_size", [200, 4])
@pytest.mark.parametrize("corruption", ["membranes", "counts"])
def test_the_ann_read_off_the_simulation_is_checked(monkeypatch, corruption, batch_size):
    """A simulation whose final state was wrong would give a wrong ANN: wrong membranes
    where the read-off counts them (neurons not settled between their thresholds), or
    wrong counts where it takes the settled counts as they are. The from-scratch
    evaluation of each batch's first image (all of them in one go at the end) catches
    both, also when only the last batch went wrong."""

    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, seed=8), "nsd")
    pixels, labels = random_pixels(6, seed=8), torch.randint(0, 10, (6,))
    original = engine.run
    calls = []

    def corrupted(*args, **options):
        *outputs, counts, used, membranes, logits, unsettled = original(*args, **options)
        assert not unsettled.any()  # quiescent: every count settled
        calls.append(1)
        if len(calls) < -(-len(pixels) // batch_size):  # only the last batch goes wrong
            return (*outputs, counts, used, membranes, logits, unsettled)
        if corruption == "membranes":
            membranes[0] = -membranes[0]  # the first image's hidden membranes ...
            unsettled[0] = 1  # ... read where its counts are said not to be settled
        else:
            counts[0, net.layers[0].neurons] += 1  # the first neuron of the first hidden layer
        return (*outputs, counts, used, membranes, logits, unsettled)

    monkeypatch.setattr(engine, "run", corrupted)
    with pytest.raises(QsnnError, match="internal error: the ANN read off the simulation differs from the exact ANN in layer 2"):
        simulate(net, pixels, labels, steps=None, verify="sample", batch_size=batch_size)
    assert len(calls) == -(-len(pixels) // batch_size)


def _engine_switched_off(monkeypatch):
    """Run what a GPU runs, on the CPU: every CPU-kernel branch answers "not on the CPU",
    each numba entry point raises if it is reached all the same, and the device's
    convolution insists on integer inputs (the one float stage, noisy pixels, must run on
    the CPU by one operation whatever the device, see qsnn.snn.reference.float_stage)."""
    for module in (reference, stepwise, events, sim_run, verify):
        if hasattr(module, "cpu_kernels"):
            monkeypatch.setattr(module, "cpu_kernels", lambda tensor: False)
    on_device = reference.conv_as_matmul

    def integer_inputs_only(layer, inputs, weight):  # noisy pixels round on the CPU, by one operation
        assert torch.equal(inputs, inputs.round()), "a non-integer stage ran on the device's path"
        return on_device(layer, inputs, weight)

    monkeypatch.setattr(reference, "conv_as_matmul", integer_inputs_only)

    def refuse(*args, **kwargs):
        raise AssertionError("a CPU kernel ran on the device-generic path")

    public = {module: [name for name, value in vars(module).items()
                       if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module.__name__]
              for module in (engine, counting)}
    assert {"encode", "run", "compile_program"} <= set(public[engine])
    assert {"counts", "gathered_counts", "certify"} <= set(public[counting])
    for module, names in public.items():
        for name in names:
            monkeypatch.setattr(module, name, refuse)


DEVICE_CASES = [
    ("6C5-P2-8C3-12", "nsd", 1, 2, 0.0),
    ("4C3s-P2-6C3s-P2-10", "nsd", 1, None, 0.1),  # (3, 12, 12) inputs, padded convolutions
    ("4C3s-P2-6C3s-P2-10", "sg", 1, 2, 0.0),
    ("6C5-P2-8C3-12", "nsd", 2, None, 0.2),
    ("6C5-P2-8C3-12", "sg", 1, 2, 0.0),
    ("6C5-P2-8C3-12", "sg", 2, 1, 0.3),
    ("6C5-P2-8C3-12", "int", 0, None, 0.0),
    ("6C5-P2-8C3-12", "int", 3, 1, 0.1),
]


def _device_case(notation, scheme, k, B, model_only=False):
    ternary, padded = scheme == "int", "s" in notation
    model = random_net(
        notation, k=k, B=B, ternary=ternary, seed=20 + k, encoding_B=4 if ternary else "same",
        input_shape=(3, 12, 12) if padded else (1, 28, 28), padding="same" if padded else "valid",
    )
    if model_only:
        return model
    pixels = random_pixels(20, shape=model.spec.input_shape, seed=k)
    return convert(model, scheme), pixels, torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(k))


@pytest.mark.parametrize(("notation", "scheme", "k", "B", "noise"), DEVICE_CASES)
def test_the_device_generic_path_gives_the_engines_results(monkeypatch, notation, scheme, k, B, noise):
    """What --device cuda runs (float64 torch definitions, convolutions as one matrix
    product, target_count, the step-by-step simulator), run here on the CPU with the CPU
    kernels switched off, gives every statistic of the CPU engine exactly: per step, per
    layer and per batch, under noise too."""
    from dataclasses import asdict

    net, pixels, labels = _device_case(notation, scheme, k, B)
    on_engine = simulate(net, pixels, labels, steps=None, noise=noise, seed=3, batch_size=8)
    _engine_switched_off(monkeypatch)
    generic = simulate(net, pixels, labels, steps=None, noise=noise, seed=3, batch_size=8)  # (picks its simulator)
    assert asdict(generic) == asdict(on_engine)
    dropped = scheme == "sg" and noise > 0  # SG's dropped spikes make counts differ from the ANN's
    assert (sum(generic.count_mismatches) > 0) == dropped
    assert sum(map(sum, generic.positive)) > 0


def test_the_device_generic_path_is_refused_the_engine(monkeypatch):
    """The switch above does reach the CPU kernels: with it, the engine's simulator fails."""
    from qsnn.sim.events import EventSimulator

    net = convert(random_net(k=1, B=2), "nsd")
    simulator = EventSimulator(net)
    _engine_switched_off(monkeypatch)
    with pytest.raises(AssertionError, match="a CPU kernel ran on the device-generic path"):
        simulate(net, random_pixels(4), torch.zeros(4, dtype=torch.int64), steps=None, simulator=simulator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("notation", "scheme", "k", "B", "noise"), DEVICE_CASES)
def test_simulation_on_cuda_is_the_cpus_bit_for_bit(notation, scheme, k, B, noise):
    from dataclasses import asdict

    net, pixels, labels = _device_case(notation, scheme, k, B)
    model = _device_case(notation, scheme, k, B, model_only=True)
    on_gpu = convert(model.cuda(), scheme)  # a model on the GPU converts alike
    for ours, theirs in zip([*net.layers, net.output], [*on_gpu.layers, on_gpu.output], strict=True):
        assert all(np.array_equal(getattr(ours, name), getattr(theirs, name)) for name in vars(ours)
                   if isinstance(getattr(ours, name), np.ndarray))
    on_cpu = simulate(net, pixels, labels, steps=None, noise=noise, seed=3, batch_size=8)
    on_cuda = simulate(net, pixels, labels, steps=None, noise=noise, seed=3, batch_size=8, device="cuda")
    assert asdict(on_cuda) == asdict(on_cpu)


def test_simulate_refuses_inputs_it_would_get_wrong():
    """Pixels scaled to [0, 1], out of 0..255 or fractional, labels that do not fit, no
    images, bad steps or batch sizes: one clear error each, never a simulation."""
    net = convert(random_net(k=1, B=2), "nsd")
    pixels, labels = random_pixels(6), torch.arange(6)

    def refused(pixels=pixels, labels=labels, **options) -> str:
        with pytest.raises(QsnnError) as error:
            simulate(net, pixels, labels, steps=options.pop("steps", None), **options)
        return str(error.value)

    assert refused(pixels.float() / 255) == (
        "pixels must be raw values 0..255, got torch.float32 in [0, 1]: multiply by 255 and round, "
        "or pass the uint8 images"
    )
    assert refused(pixels.long() - 300) == "pixels must be raw integer values 0..255, got torch.int64 values from -300 to -45"
    assert refused(pixels.double() + 0.5).startswith("pixels must be raw integer values 0..255, got torch.float64")
    nan = pixels.double()
    nan[0, 0, 0, 0] = float("nan")
    assert refused(nan) == "pixels must be raw integer values 0..255, got NaN among them"
    assert refused(pixels.bool()) == "pixels must be raw values 0..255 (uint8), got torch.bool"
    assert refused(pixels.numpy()) == (
        "pixels and labels must be torch tensors, got ndarray and Tensor; use torch.as_tensor"
    )
    assert refused(pixels[:, :, :20]) == (
        "the network expects images of shape (1, 28, 28), got (1, 20, 28); use the dataset it was trained on"
    )
    assert refused(pixels[:0], labels[:0]) == "no images to simulate"
    assert refused(labels=labels[:5]) == "6 images but labels of shape (5,); give one label per image"
    assert refused(labels=labels + 5) == "labels must be class indices 0..9, got values from 5 to 10"
    assert refused(labels=labels.float()) == "labels must be integer class indices, got torch.float32"
    assert refused(steps=0) == "steps must be a positive integer or None (until nothing is in flight), got 0"
    assert refused(batch_size=0) == "batch_size must be a positive integer, got 0"
    # integer values in other dtypes are the same pixels
    same = simulate(net, pixels.double(), labels, steps=None)
    assert same == simulate(net, pixels, labels, steps=None)


def test_convert_takes_a_network_or_a_checkpoint_only():
    model = random_net(k=1, B=2)
    with pytest.raises(QsnnError) as refused:
        convert(model.state_dict(), "nsd")
    assert str(refused.value) == (
        "convert() takes a qsnn QuantizedNet or the path of a checkpoint, got OrderedDict; "
        "load a checkpoint with qsnn.load_checkpoint"
    )


def test_the_python_api_refuses_what_it_cannot_take_in_one_line(tmp_path):
    """simulate() and convert() name a missing GPU, an unknown device, a network that is
    not one and an unknown scheme; simulate() also takes the path of a converted file."""
    model = random_net("6C5-P2-8C3-12", k=1, B=2, seed=3)
    net = convert(model, "nsd")
    pixels, labels = random_pixels(3, seed=3), torch.zeros(3, dtype=torch.int64)
    cases = [
        (lambda: simulate(net, pixels, labels, steps=None, device="foo"), "unknown device 'foo': use cpu, cuda or cuda:N"),
        (lambda: simulate(None, pixels, labels, steps=None),
         "simulate() takes a converted network (qsnn.convert(...), or the path of a .npz that `qsnn convert` wrote), got NoneType"),
        (lambda: convert(model, None), "unknown scheme None: use one of nsd, sg, int"),
        (lambda: convert(str(tmp_path / "x.pt"), None), "unknown scheme None: use one of nsd, sg, int"),
    ]
    if not torch.cuda.is_available():
        cases.append((lambda: simulate(net, pixels, labels, steps=None, device="cuda"),
                      "device 'cuda' was asked but torch sees no CUDA GPU; use cpu"))
    for call, message in cases:
        with pytest.raises(QsnnError) as refused:
            call()
        assert str(refused.value) == message
    net.save(tmp_path / "net.npz")
    assert simulate(str(tmp_path / "net.npz"), pixels, labels, steps=None).agree == simulate(net, pixels, labels, steps=None).agree


def test_the_first_run_says_that_it_compiles_the_kernels(monkeypatch, capsys):

    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, seed=3), "nsd")
    pixels, labels = random_pixels(2, seed=3), torch.zeros(2, dtype=torch.int64)
    monkeypatch.setattr(engine, "compiled_on_disk", lambda: False)
    simulate(net, pixels, labels, steps=None, progress=True)
    assert "qsnn: compiling the simulator's kernels (first run only, about a minute)\n" in capsys.readouterr().err
    simulate(net, pixels, labels, steps=None, progress=False)  # quiet: nothing said
    assert "compiling" not in capsys.readouterr().err


@pytest.mark.parametrize(("name", "scheme", "noise"), [("nsd-lenet-k1", "nsd", "0"), ("sg-lenet-k1B2", "sg", "0.2")])
def test_two_processes_under_torchrun_write_the_one_process_result(tmp_path, name, scheme, noise):
    """`torchrun --nproc_per_node 2 -m qsnn.cli simulate ...` shards the batches between
    two CPU processes (gloo) and gathers them exactly: the same result.json (but for the
    command line it records) and the same text files, byte for byte, as one process."""
    import subprocess
    import sys

    from qsnn.pipeline import MODELS

    net = tmp_path / "net.npz"
    convert(MODELS / f"{name}.pt", scheme).save(net)
    options = ["simulate", str(net), "--limit", "300", "--batch-size", "40", "--noise", noise, "--quiet"]
    one = subprocess.run([sys.executable, "-m", "qsnn.cli", *options, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "qsnn.cli", *options, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("SNN agrees with") == 1  # (rank 0 reports)
    first, second = (json.loads((tmp_path / run / "result.json").read_text()) for run in ("one", "two"))
    first.pop("provenance"), second.pop("provenance")
    assert first == second and first["images"] == 300
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "two").iterdir())
    for file in (tmp_path / "one").glob("*.txt"):
        assert file.read_bytes() == (tmp_path / "two" / file.name).read_bytes(), file.name
    for file in ("per_step.csv", "layers.csv"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()


@pytest.mark.parametrize("scheme", ["nsd", "int"])
def test_a_batch_run_in_slices_writes_them_into_one_set_of_arrays(monkeypatch, scheme):
    """A batch larger than ENGINE_MEMORY allows runs in slices, each writing its rows of
    one set of arrays (no concatenation): the same records and counts as in one piece."""
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=5), scheme)
    pixels, labels = random_pixels(7, seed=5), torch.randint(0, 10, (7,))
    whole = simulate(net, pixels, labels, steps=None, verify="all", batch_size=7)
    calls = []
    original = engine.run

    def counted(*args, **kwargs):
        calls.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "run", counted)
    layers, steps = len(net.layers), 40
    per_image = 8 * (3 * layers + 1) * steps  # (at most the per-step records of 2 images at a time)
    monkeypatch.setattr(events, "ENGINE_MEMORY", 2 * per_image + 1)
    sliced = simulate(net, pixels, labels, steps=steps, verify="all", batch_size=7)
    assert calls and max(calls) <= 2 and sum(calls) >= 7
    fixed = simulate(net, pixels, labels, steps=steps, verify="all", batch_size=7, simulator=simulate_batch)
    for field in ("correct", "agree", "positive", "negative", "sops", "spiking_neurons", "count_mismatches",
                  "verified_count_mismatches", "verified_disagreements"):
        assert getattr(sliced, field) == getattr(fixed, field), field
    assert sliced.count_mismatches == whole.count_mismatches == [0] * layers


@pytest.mark.parametrize("threads", ["one", "all"])
def test_row_differences_count_the_differing_entries_of_each_row(monkeypatch, threads):
    """engine.row_differences, on one thread or shared among them, across integer dtypes."""
    monkeypatch.setattr(engine, "SERIAL_ENTRIES", 2**62 if threads == "one" else 0)
    rng = np.random.default_rng(3)
    first = rng.integers(0, 4, (7, 3, 5, 5)).astype(np.int32)
    second = first.astype(np.int64)
    second[rng.random(second.shape) < 0.2] += 1
    wanted = (first != second).reshape(7, -1).sum(axis=1)
    assert engine.row_differences(first, second).tolist() == wanted.tolist()
    assert engine.differences(first, second) == int(wanted.sum())


@pytest.mark.parametrize("steps", [2, 40])
def test_the_engine_without_membranes_writes_the_same_records(steps):
    """engine.run(membranes=False), what a caller that reads no final membrane asks for:
    every other output as with them, and a membrane array without columns."""
    model = random_net("6C5-P2-8C3-12", k=2, B=None, seed=4)
    net = convert(model, "nsd")
    program = engine.compile_program(net)
    first = engine.encode(program, random_pixels(9, seed=4).numpy())
    kept = engine.run(program, first, steps, True, False)
    bare = engine.run(program, first, steps, True, False, membranes=False)
    assert bare.membranes.shape == (9, 0) and kept.membranes.shape[1] > 0
    if steps == 2:
        assert kept.unsettled.any()  # (membranes written for those images)
    for name in engine.EngineRun._fields:
        if name != "membranes":
            assert np.array_equal(getattr(kept, name), getattr(bare, name)), name
