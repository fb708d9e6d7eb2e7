"""The event engine for spiking graphs (qsnn.sim.graph_engine) against the step-by-step
simulation: the same record, step for step, population for population."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qsnn.errors import QsnnError
from qsnn.nn import QuantAct
from qsnn.sim import graph as simulation
from qsnn.sim import graph_engine
from qsnn.sim.graph import simulate_graph
from qsnn.snn.convert import convert
from tests.snn.test_graph import _Concat, tie_pixels, tiny_residual


def _record(result) -> tuple:
    return (result.steps, result.positive, result.negative, result.sops, result.correct, result.agree,
            result.count_mismatches, result.ann_correct, result.ann_ops)


def _both(graph, pixels, labels, **options):
    events = simulate_graph(graph, pixels, labels, engine="events", **options)
    stepwise = simulate_graph(graph, pixels, labels, engine="stepwise", **options)
    return events, stepwise


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("B", [1, 2, None])
def test_the_engine_records_what_the_step_by_step_simulation_records(k, B):
    """Ties at every level, negative spikes, the residual sum; until quiescent and for a
    fixed number of steps (fewer than the images need)."""
    model = tiny_residual(k, B, seed=10 * k + (B or 0))
    pixels = tie_pixels(16, seed=k)
    labels = torch.arange(16) % 4
    for scheme in ("nsd", "int"):
        graph = convert(model, pixels[:1] / 255, scheme)
        events, stepwise = _both(graph, pixels, labels, batch_size=7)
        assert _record(events) == _record(stepwise), (scheme, k, B)
        assert events.lossless
        fixed, fixed_stepwise = _both(graph, pixels, labels, steps=2)
        assert _record(fixed) == _record(fixed_stepwise) and fixed.steps == 2


def test_images_that_spike_beyond_the_first_run_are_run_again():
    model = tiny_residual(2, None, seed=20)
    pixels = tie_pixels(16, seed=2)
    graph = convert(model, pixels[:1] / 255, "nsd")
    events, stepwise = _both(graph, pixels, torch.zeros(16, dtype=torch.int64))
    assert events.steps > simulation.ENGINE_STEPS  # (the first run stops there; the rest run again)
    assert _record(events) == _record(stepwise) and events.lossless


class _Strided(nn.Module):
    """Fed by populations: a grouped conv, a strided conv, a dilated conv and a strided 1x1
    conv; then a batch norm on a population (a scale node), concatenation and global pooling."""

    def __init__(self):
        super().__init__()
        self.a, self.qa = nn.Conv2d(2, 6, 3, padding=1), QuantAct(1, 2)
        self.g, self.qg = nn.Conv2d(6, 6, 3, padding=1, groups=3), QuantAct(1, 2)
        self.s, self.qs = nn.Conv2d(6, 6, 3, stride=2, padding=1), QuantAct(2, 1)
        self.b, self.qb = nn.Conv2d(2, 4, 3, padding=1), QuantAct(1, 2)
        self.d, self.qd = nn.Conv2d(4, 4, 3, padding=2, dilation=2), QuantAct(1, 2)
        self.p, self.qp = nn.Conv2d(4, 6, 1, stride=2), QuantAct(1, 2)
        self.norm, self.qn = nn.BatchNorm2d(6), QuantAct(1, 2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        a = self.qs(self.s(self.qg(self.g(self.qa(self.a(x))))))
        b = self.qp(self.p(self.qd(self.d(self.qb(self.b(x))))))
        joined = torch.cat([self.qn(self.norm(a)), b], dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(joined, 1), 1))


@pytest.mark.parametrize("scheme", ["nsd", "int"])
def test_strides_dilation_groups_concatenation_and_pooling(scheme):
    torch.manual_seed(4)
    model = _Strided().eval()
    with torch.no_grad():
        model.norm.running_var.uniform_(0.3, 2.0)
        model.norm.weight.uniform_(-1.0, 1.0)
    pixels = torch.randint(0, 256, (20, 2, 10, 10), generator=torch.Generator().manual_seed(4)).float()
    graph = convert(model, pixels[:1] / 255, scheme)
    kinds = [node.kind for node in graph.nodes]
    assert kinds.count("cat") == 1 and kinds.count("scale") == 1
    events, stepwise = _both(graph, pixels, torch.zeros(20, dtype=torch.int64))
    assert _record(events) == _record(stepwise) and events.lossless
    assert sum(map(sum, events.positive)) > 0 and sum(events.sops) > 0
    concat = _Concat(nn.AvgPool2d(2)).eval()
    small = pixels[:, :1, :, :].repeat(1, 1, 2, 2)[:, :, :12, :12]
    graph = convert(concat, small[:1] / 255, scheme)
    events, stepwise = _both(graph, small, torch.zeros(20, dtype=torch.int64))
    assert _record(events) == _record(stepwise) and events.lossless


def test_a_nir_graph_runs_on_the_engine(tmp_path):
    """A sum pool (a grouped convolution of stride 2), two edges into one IF node (an
    addition, then a scale of 1 carrying the threshold)."""
    nir = pytest.importorskip("nir")
    from tests.snn.test_from_nir import TinyNIR

    tiny = TinyNIR(unit=False, seed=3)
    nir.write(str(tmp_path / "tiny.nir"), tiny.graph())
    for scheme in ("nsd", "int"):
        graph = convert(tmp_path / "tiny.nir", scheme, nir_input="raw")
        events, stepwise = _both(graph, tiny.pixels, torch.zeros(len(tiny.pixels), dtype=torch.int64))
        assert _record(events) == _record(stepwise) and events.lossless


def test_the_engine_lays_out_weights_and_neurons_channel_last():
    conv = nn.Conv2d(2, 3, (2, 3), bias=False)
    graph = convert(nn.Sequential(conv, QuantAct(1, 2), nn.Flatten(), nn.Linear(3 * 3 * 2, 2)).eval(),
                    torch.zeros(1, 2, 4, 4), "nsd")
    program = graph_engine.compile_graph(graph, {}, {graph.populations[0].name: "negative-spike"})
    node = graph.nodes[1]
    laid = program.weights[: node.weight.size].reshape(2, 2, 3, 3)  # (in, kh, kw reversed, out)
    assert np.array_equal(laid, node.weight[:, :, :, ::-1].transpose(1, 2, 3, 0))
    values = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).double()
    last = graph_engine.channel_last(values).reshape(2, -1).numpy()
    assert last[1, 1] == values[1, 1, 0, 0] and last[1, 3] == values[1, 0, 0, 1]
    assert np.array_equal(graph_engine.channel_first(last, (3, 4, 5)), values.numpy())


def test_the_engine_is_chosen_where_it_runs_and_refused_where_it_cannot():
    model = tiny_residual(1, 2, seed=1)
    pixels = tie_pixels(4, seed=1)
    labels = torch.zeros(4, dtype=torch.int64)
    sg = convert(model, pixels[:1] / 255, "sg")
    with pytest.raises(QsnnError, match=r"^the event engine runs NSD and INT graphs; simulate this SG graph with "
                       r"engine='stepwise'$"):
        simulate_graph(sg, pixels, labels, engine="events")
    assert simulate_graph(sg, pixels, labels).lossless  # (auto: SG's single step)
    with pytest.raises(QsnnError, match=r"^engine is one of auto, events, stepwise, got 'fast'$"):
        simulate_graph(sg, pixels, labels, engine="fast")


def test_under_pixel_noise_the_engines_agree_and_match_the_tables_on_the_noisy_pixels():
    """NSD and INT under pixel noise: both simulations give the same record whatever the
    batch size (each image draws its own noise), every count equals the converted model's
    tables on the noisy pixels, and the clean accuracy is the exact evaluation's."""
    from qsnn.snn.graph import exact_ann, tables_ann

    model = tiny_residual(1, 2, seed=3)
    pixels = torch.randint(0, 256, (20, 1, 6, 6), generator=torch.Generator().manual_seed(1)).float()
    labels = torch.arange(20) % 4
    for scheme in ("nsd", "int"):
        graph = convert(model, pixels[:1] / 255, scheme)
        assert all(torch.equal(tables_ann(graph, pixels).counts[name], counts)  # (integer pixels: the same)
                   for name, counts in exact_ann(graph, pixels).counts.items())
        events = simulate_graph(graph, pixels, labels, noise=0.4, seed=3, engine="events", batch_size=7)
        stepwise = simulate_graph(graph, pixels, labels, noise=0.4, seed=3, engine="stepwise", batch_size=20)
        assert _record(events) == _record(stepwise) and events.lossless
        assert events.reference == "the converted model's tables on the noisy pixels"
        clean = simulate_graph(graph, pixels, labels)
        assert events.ann_correct_clean == clean.ann_correct and events.sops != clean.sops
        other = simulate_graph(graph, pixels, labels, noise=0.4, seed=4)
        assert other.sops != events.sops
        saved = events.to_dict()
        assert (saved["noise"], saved["sg_drop"]) == (0.4, None)


def test_sg_drops_spikes_in_the_encoding_populations_or_everywhere():
    model = tiny_residual(1, 2, seed=3)
    pixels = torch.randint(0, 256, (20, 1, 6, 6), generator=torch.Generator().manual_seed(1)).float()
    labels = torch.arange(20) % 4
    graph = convert(model, pixels[:1] / 255, "sg")
    clean = simulate_graph(graph, pixels, labels)
    encoding = simulate_graph(graph, pixels, labels, noise=0.3, seed=3, batch_size=7)
    assert _record(encoding) == _record(simulate_graph(graph, pixels, labels, noise=0.3, seed=3, batch_size=20))
    assert encoding.sg_drop == "encoding" and not encoding.lossless
    assert encoding.positive[0][0] < clean.positive[0][0]  # (q1, the encoding population, lost spikes)
    assert encoding.reference == "the converted model's exact evaluation on the clean pixels"
    everywhere = simulate_graph(graph, pixels, labels, noise=0.3, seed=3, sg_drop="every-layer")
    assert everywhere.positive[0] == encoding.positive[0] and everywhere.positive[1] != encoding.positive[1]
    with pytest.raises(QsnnError, match=r"^noise must be between 0 and 1, got 1.5$"):
        simulate_graph(graph, pixels, labels, noise=1.5)
    with pytest.raises(QsnnError, match=r"^sg_drop is one of encoding, every-layer, got 'all'$"):
        simulate_graph(graph, pixels, labels, noise=0.3, sg_drop="all")
