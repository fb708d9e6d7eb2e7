"""Models of one's own as spiking graphs (qsnn.snn.trace, qsnn.snn.graph, qsnn.sim.graph).

The reference is the model itself evaluated in exact rational arithmetic (``fractions``)
by the code below, straight from its parameters and its forward's definition: no tracing,
no folding, no integer grid. Its parameters are dyadic (and its batch norms' sigma exact),
so folding is exact and every count of the spiking graph must equal the reference's."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from qsnn.errors import QsnnError
from qsnn.nn import QuantAct, QuantConv2d, QuantLinear
from qsnn.sim.graph import simulate_graph
from qsnn.snn.convert import convert
from qsnn.snn.graph import SpikingGraph, convert_module, exact_ann

SIGMAS = {0.25: Fraction(1, 2), 1.0: Fraction(1), 4.0: Fraction(2)}  # exact sqrt(var) with eps = 0


class TinyResidual(nn.Module):
    """q1 = Q(BN(conv x)); q2 = Q(BN(conv q1 + bias)); q3 = Q(BN(conv q2) + q1); logits = fc(avgpool q3)."""

    def __init__(self, k: int, B: int | None) -> None:
        super().__init__()
        self.c1, self.n1, self.q1 = nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3, eps=0.0), QuantAct(k, B)
        self.c2, self.n2, self.q2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3, eps=0.0), QuantAct(k, B)
        self.c3, self.n3, self.q3 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3, eps=0.0), QuantAct(k, B)
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(27, 4)

    def forward(self, x):
        a = self.q1(self.n1(self.c1(x)))
        h = self.q2(self.n2(self.c2(a)))
        o = self.q3(self.n3(self.c3(h)) + a)
        return self.fc(torch.flatten(self.pool(o), 1))


def _dyadic(shape, generator, low, high, denominator):
    return torch.randint(low, high + 1, shape, generator=generator).double() / denominator


def tiny_residual(k: int, B: int | None, seed: int) -> TinyResidual:
    """Dyadic weights and biases, gammas of both signs and zero, sigma in {1/2, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    model = TinyResidual(k, B)
    with torch.no_grad():
        for conv in (model.c1, model.c2, model.c3):
            conv.weight.copy_(_dyadic(conv.weight.shape, g, -8, 8, 8))
            if conv.bias is not None:
                conv.bias.copy_(_dyadic(conv.bias.shape, g, -4, 4, 8))
        for norm in (model.n1, model.n2, model.n3):
            norm.weight.copy_(_dyadic((3,), g, -6, 6, 4))
            norm.bias.copy_(_dyadic((3,), g, -4, 6, 8))
            norm.running_mean.copy_(_dyadic((3,), g, -4, 4, 8))
            norm.running_var.copy_(torch.tensor(list(SIGMAS))[torch.randint(0, 3, (3,), generator=g)])
        model.fc.weight.copy_(_dyadic(model.fc.weight.shape, g, -8, 8, 8))
        model.fc.bias.copy_(_dyadic(model.fc.bias.shape, g, -4, 4, 8))
    return model.eval()


def _fractions(tensor) -> np.ndarray:
    values = [Fraction(v) for v in tensor.detach().double().reshape(-1).tolist()]
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(tuple(tensor.shape))


def _conv(x, conv):
    """conv (stride 1, padding 1, 3x3) on a (C, H, W) array of fractions."""
    w = _fractions(conv.weight)
    bias = _fractions(conv.bias) if conv.bias is not None else [Fraction(0)] * w.shape[0]
    channels, height, width = x.shape
    padded = np.full((channels, height + 2, width + 2), Fraction(0), dtype=object)
    padded[:, 1:-1, 1:-1] = x
    out = np.empty((w.shape[0], height, width), dtype=object)
    for o in range(w.shape[0]):
        for i in range(height):
            for j in range(width):
                out[o, i, j] = (padded[:, i : i + 3, j : j + 3] * w[o]).sum() + bias[o]
    return out


def _norm(z, norm):
    gamma, beta, mean = (_fractions(t) for t in (norm.weight, norm.bias, norm.running_mean))
    sigma = [SIGMAS[v] for v in norm.running_var.tolist()]
    return np.stack([gamma[c] * (z[c] - mean[c]) / sigma[c] + beta[c] for c in range(z.shape[0])])


def _quant(y, act, ties: set):
    """Counts n = min(floor(2^k y + 1/2), 2^k B) >= 0, and the levels at which y sits exactly on a boundary."""
    scale = 1 << act.k
    levels = None if act.B is None else scale * act.B
    counts = np.empty(y.shape, dtype=np.int64)
    for index, value in np.ndenumerate(y):
        u = scale * value + Fraction(1, 2)
        if u.denominator == 1 and u >= 1 and (levels is None or u <= levels):
            ties.add(int(u) - 1)
        n = max(0, math.floor(u))
        counts[index] = n if levels is None else min(n, levels)
    return counts


def fraction_forward(model: TinyResidual, pixels: torch.Tensor):
    """The model on raw pixels (x = p / 255), exactly: every population's counts and the prediction."""
    counts = {"q1": [], "q2": [], "q3": []}
    predictions, ties = [], set()
    for image in pixels:
        x = _fractions(image) / 255
        n1 = _quant(_norm(_conv(x, model.c1), model.n1), model.q1, ties)
        a = n1 / Fraction(1 << model.q1.k)
        n2 = _quant(_norm(_conv(a, model.c2), model.n2), model.q2, ties)
        h = n2 / Fraction(1 << model.q2.k)
        n3 = _quant(_norm(_conv(h, model.c3), model.n3) + a, model.q3, ties)
        o = n3 / Fraction(1 << model.q3.k)
        pooled = (o[:, 0::2, 0::2] + o[:, 1::2, 0::2] + o[:, 0::2, 1::2] + o[:, 1::2, 1::2]) / 4
        w, b = _fractions(model.fc.weight), _fractions(model.fc.bias)
        logits = [(w[c] * pooled.reshape(-1)).sum() + b[c] for c in range(4)]
        predictions.append(max(range(4), key=lambda c, lg=logits: (lg[c], -c)))
        for name, n in (("q1", n1), ("q2", n2), ("q3", n3)):
            counts[name].append(n)
    return {name: torch.from_numpy(np.stack(v)) for name, v in counts.items()}, torch.tensor(predictions), ties


def tie_pixels(count: int, seed: int) -> torch.Tensor:
    """Images of 0 and 255 (x in {0, 1}: pre-activations land on level boundaries), and a few of any value."""
    g = torch.Generator().manual_seed(seed)
    binary = torch.randint(0, 2, (count, 1, 6, 6), generator=g) * 255
    binary[-3:] = torch.randint(0, 256, (3, 1, 6, 6), generator=g)
    return binary.float()


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("B", [1, 2, None])
def test_every_scheme_counts_exactly_what_the_model_defines(k, B):
    """Per image and per neuron, every population's final count equals the model's own
    (fractions), ties at the level boundaries included; so do the predictions."""
    model = tiny_residual(k, B, seed=10 * k + (B or 0))
    pixels = tie_pixels(16, seed=k)
    labels = torch.zeros(16, dtype=torch.int64)
    counts, predictions, ties = fraction_forward(model, pixels)
    assert len(ties) >= min(2, (1 << k) * (B or 4)), ties  # (the test exercises ties at several levels)
    schemes = ["nsd", "int"] + (["sg"] if B is not None else [])
    for scheme in schemes:
        graph = convert(model, pixels[:1] / 255, scheme)
        ann = exact_ann(graph, pixels)
        assert all(torch.equal(ann.counts[name], counts[name]) for name in counts), scheme
        assert torch.equal(ann.predictions, predictions)
        result = simulate_graph(graph, pixels, labels, batch_size=7)
        assert result.count_mismatches == {"q1": 0, "q2": 0, "q3": 0}, scheme
        assert result.agree[-1] == 16 and result.lossless, scheme
        assert sum(result.positive[0]) - sum(result.negative[0]) == int(counts["q1"].sum())
        if scheme == "sg":
            assert result.steps == 1 and all(sum(n) == 0 for n in result.negative)


def test_the_residual_sum_makes_negative_spikes_and_they_are_counted(tmp_path):
    """q3's input falls when q2's spikes arrive after q1's: NSD sends negative spikes and
    its counts still end at the model's; the result's files say so."""
    model = tiny_residual(2, None, seed=3)
    pixels = tie_pixels(16, seed=4)
    counts, _, _ = fraction_forward(model, pixels)
    graph = convert(model, pixels[:1] / 255, "nsd")
    result = simulate_graph(graph, pixels, torch.zeros(16, dtype=torch.int64))
    assert result.lossless and sum(map(sum, result.negative)) > 0
    for index, name in enumerate(("q1", "q2", "q3")):
        assert sum(result.positive[index]) - sum(result.negative[index]) == int(counts[name].sum())
    result.write(tmp_path / "sim", graph, seed=0)
    saved = json.loads((tmp_path / "sim" / "result.json").read_text())
    assert (saved["scheme"], saved["lossless"], saved["agreement"], saved["provenance"]["seed"]) == ("nsd", True, 16, 0)
    assert saved["per_step"][-1]["agree"] == 16 and len(saved["per_step"]) == result.steps
    assert [row["step"] for row in saved["per_step"]] == list(range(1, result.steps + 1))
    assert saved["t_lossless"] == result.t_lossless and saved["t_paper"] == result.t_paper
    first = result.t_lossless  # (from it on every step agrees on all 16 images; the step before did not)
    assert all(agree == 16 for agree in result.agree[first - 1:]) and (first == 1 or result.agree[first - 2] < 16)
    last = result.t_paper
    assert all(c == result.correct[-1] for c in result.correct[last - 1:]) and (last == 1 or result.correct[last - 2] != result.correct[-1])
    assert saved["per_step"][-1]["accuracy"] == 100.0 * result.correct[-1] / 16
    header = (tmp_path / "sim" / "per_step.csv").read_text().splitlines()[0]
    assert header == "step,accuracy,correct,agree,agree_fraction,sops,positive,negative"
    rows = (tmp_path / "sim" / "populations.csv").read_text().splitlines()
    assert rows[0] == "population,positive,negative,count_mismatches" and rows[3].endswith(f",{sum(result.negative[2])},0")


def test_folding_and_grids():
    """Batch norms fold into the conv before them; the denominators are the grids the
    module docstring describes; the thresholds are T(i) = ceil(d (2 i + 1) / 2^(k+1))."""
    model = tiny_residual(1, 2, seed=1)
    graph = convert_module(model, torch.zeros(1, 1, 6, 6), "nsd")
    kinds = [(node.name, node.kind) for node in graph.nodes]
    assert kinds == [
        ("x", "input"), ("c1", "conv"), ("q1", "quant"), ("c2", "conv"), ("q2", "quant"), ("c3", "conv"),
        ("add", "add"), ("q3", "quant"), ("pool", "avgpool"), ("flatten", "flatten"), ("fc", "linear"),
        ("output", "output"),
    ]
    by_name = graph.by_name
    assert by_name["x"].denominator == 255 and by_name["q1"].denominator == 2
    assert by_name["pool"].denominator == 8  # (q3's grid, 2, times the window, 4)
    assert by_name["add"].multipliers[1] * by_name["q1"].denominator == by_name["add"].denominator
    assert [node.attrs["role"] for node in graph.populations] == ["encoding", "hidden", "hidden"]
    table = graph.thresholds(by_name["q2"]).table
    d = by_name["c2"].denominator
    assert table[0].tolist() == [-(-d * (2 * i + 1) // 4) for i in range(4)]


def test_a_batch_norm_after_an_addition_of_two_populations_becomes_their_scales():
    class Sum(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.q1, self.d, self.q2 = nn.Conv2d(1, 2, 3, padding=1), QuantAct(1, 1), nn.Conv2d(1, 2, 3, padding=1), QuantAct(1, 1)
            self.n, self.q3, self.fc = nn.BatchNorm2d(2), QuantAct(1, 2), nn.Linear(2 * 36, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.q3(self.n(self.q1(self.c(x)) + self.q2(self.d(x)))), 1))

    model = Sum().eval()
    with torch.no_grad():
        model.n.running_var.fill_(0.3)
        model.n.weight.copy_(torch.tensor([1.7, -0.4]))
    graph = convert_module(model, torch.zeros(1, 1, 6, 6), "nsd")
    assert [node.kind for node in graph.nodes].count("scale") == 2
    pixels = torch.randint(0, 256, (20, 1, 6, 6)).float()
    assert simulate_graph(graph, pixels, torch.zeros(20, dtype=torch.int64)).lossless


class _Concat(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.a, self.na, self.qa = QuantConv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), QuantAct(2, 1)
        self.b, self.qb = nn.Conv2d(1, 4, 3, stride=2, padding=1), QuantAct(1, 2)
        self.g, self.q = nn.Conv2d(8, 8, 3, padding=1, groups=2), QuantAct(1, 2)
        self.pool, self.fc = pool, QuantLinear(8 * (1 if isinstance(pool, nn.AdaptiveAvgPool2d) else 9), 5, ternary=True)

    def forward(self, x):
        y = torch.cat([self.qa(self.na(self.a(x))), self.qb(torch.relu(self.b(x)))], dim=1)
        return self.fc(self.pool(self.q(self.g(y))).flatten(1))


@pytest.mark.parametrize("scheme", ["nsd", "int", "sg"])
def test_concatenation_strides_groups_and_global_pooling(scheme):
    model = _Concat(nn.AdaptiveAvgPool2d(1)).eval()
    pixels = torch.randint(0, 256, (24, 1, 12, 12)).float()
    graph = convert(model, pixels[:1] / 255, scheme)
    assert [node.kind for node in graph.nodes].count("cat") == 1
    result = simulate_graph(graph, pixels, torch.zeros(24, dtype=torch.int64))
    assert result.lossless and result.count_mismatches == {"qa": 0, "qb": 0, "q": 0}


def test_max_pooling_is_exact_under_sg_and_refused_otherwise():
    model = _Concat(nn.MaxPool2d(2)).eval()
    pixels = torch.randint(0, 256, (16, 1, 12, 12)).float()
    assert simulate_graph(convert(model, pixels[:1], "sg"), pixels, torch.zeros(16, dtype=torch.int64)).lossless
    for scheme, title in (("nsd", "NSD"), ("int", "INT")):
        with pytest.raises(QsnnError) as caught:
            convert(model, pixels[:1], scheme)
        assert str(caught.value) == (
            f"node 'pool' is a max pool, exact only where counts arrive at once (SG); under {title} use AvgPool2d, "
            "or convert with scheme='sg'"
        )


def _refusal(model, scheme="nsd") -> str:
    with pytest.raises(QsnnError) as caught:
        convert(model.eval(), torch.zeros(1, 1, 8, 8), scheme)
    return str(caught.value)


def test_what_cannot_be_converted_is_named_in_one_line():
    supported = ("qsnn converts Conv2d, Linear, BatchNorm1d/2d, QuantAct, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d, "
                 "Flatten, Dropout, Identity, + and torch.cat")
    assert _refusal(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), QuantAct(1, 1), nn.Flatten(), nn.Linear(72, 3))) == (
        f"node '_1' (Sigmoid) cannot be converted; {supported}"
    )
    assert _refusal(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))) == (
        "node '_1' is a plain ReLU, which a spiking network does not compute exactly; use qsnn.nn.QuantAct(k, B) "
        "there (its quantizer includes the ReLU)"
    )
    assert _refusal(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))) == (
        "the model has no QuantAct: put qsnn.nn.QuantAct(k, B) after each layer that should spike"
    )
    assert _refusal(nn.Sequential(nn.Conv2d(1, 2, 3), QuantAct(1, None), nn.Flatten(), nn.Linear(72, 3)), "sg") == (
        "SG needs an upper bound B on every QuantAct; _1 has none"
    )
    with pytest.raises(QsnnError, match=r"^convert a model of your own as convert\(model, example_input, scheme\)"):
        convert(nn.Sequential(nn.Conv2d(1, 2, 3), QuantAct(1, 1)), "nsd")
    with pytest.raises(QsnnError, match="^the model does not run on example_input of shape"):
        convert(nn.Sequential(nn.Conv2d(3, 2, 3), QuantAct(1, 1)), torch.zeros(1, 1, 8, 8), "nsd")


def test_a_graph_file_round_trips_and_a_damaged_one_is_refused(tmp_path):
    model = tiny_residual(1, 2, seed=2)
    pixels = tie_pixels(8, seed=2)
    graph = convert(model, pixels[:1], "nsd")
    graph.save(tmp_path / "g.npz")
    loaded = SpikingGraph.load(tmp_path / "g.npz")
    assert [(n.name, n.kind, n.inputs, n.shape, n.denominator, n.multipliers, n.attrs) for n in loaded.nodes] == [
        (n.name, n.kind, n.inputs, n.shape, n.denominator, n.multipliers, n.attrs) for n in graph.nodes
    ]
    labels = torch.zeros(8, dtype=torch.int64)
    first, second = simulate_graph(graph, pixels, labels), simulate_graph(loaded, pixels, labels)
    assert (first.positive, first.negative, first.sops, first.agree) == (second.positive, second.negative, second.sops, second.agree)
    data = dict(np.load(tmp_path / "g.npz"))
    data["node1.weight"] = data["node1.weight"] + 1
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(QsnnError, match="is damaged: its contents do not match their checksum"):
        SpikingGraph.load(tmp_path / "bad.npz")
    with pytest.raises(QsnnError, match="^no converted graph at"):
        SpikingGraph.load(tmp_path / "missing.npz")


class _Viewed(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.c, self.q, self.fc = how, nn.Conv2d(1, 2, 3), QuantAct(1, 1), nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        y = self.q(self.c(x))
        return self.fc(y.view(y.size(0), -1) if self.how == "view" else y.reshape(y.shape[0], -1))


@pytest.mark.parametrize("how", ["view", "reshape"])
def test_flattening_by_view_or_reshape_of_the_batch_size(how):
    graph = convert(_Viewed(how).eval(), torch.zeros(1, 1, 8, 8), "nsd")
    assert [node.kind for node in graph.nodes] == ["input", "conv", "quant", "flatten", "linear", "output"]
    pixels = torch.randint(0, 256, (10, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float()
    assert simulate_graph(graph, pixels, torch.zeros(10, dtype=torch.int64)).lossless


def test_an_unbounded_population_beyond_its_count_limit_is_refused_not_clipped():
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), QuantAct(3, None), nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(200.0)  # (x = 1: 2^3 * 200 = 1600 levels, beyond the 1,023 an unbounded QuantAct may reach)
    graph = convert(model, torch.zeros(1, 1, 2, 2), "nsd")
    assert graph.populations[0].levels == 1023
    pixels = torch.full((1, 1, 2, 2), 255.0)
    with pytest.raises(QsnnError) as caught:
        simulate_graph(graph, pixels, torch.zeros(1, dtype=torch.int64))
    assert str(caught.value) == (
        "population '_1' counts up to 1600, beyond the 1023 an unbounded QuantAct may reach here; give it an upper bound B"
    )
    assert simulate_graph(graph, pixels / 255 * 100, torch.zeros(1, dtype=torch.int64)).lossless  # (x = 100/255: 627 levels)


def random_small_resnet(k: int, B: int | None, seed: int) -> nn.Module:
    """qsnn.nn.small_resnet with random weights and batch-norm statistics that make it fire."""
    from qsnn.nn import small_resnet

    torch.manual_seed(seed)
    model = small_resnet(k=k, B=B).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.2, 2.0)
                module.bias.uniform_(0.0, 0.6)
    return model


def test_float32_parts_give_the_float64_products_exactly(monkeypatch):
    """After the first step, conv and linear nodes fed by spikes multiply in float32 parts
    of their integer weights; every statistic equals the float64 path's."""
    from qsnn.sim import graph as simulation

    model = random_small_resnet(2, 1, seed=3)
    pixels = torch.randint(0, 256, (12, 1, 28, 28), generator=torch.Generator().manual_seed(3)).float()
    graph = convert(model, pixels[:1] / 255, "nsd")
    parts = simulation._float32_parts(graph, "cpu")
    assert len(parts) == 6 and all(bits >= 8 and len(p) >= 2 for p, bits in parts.values())  # (the 5 convs after the stem, fc)
    fast = simulate_graph(graph, pixels, torch.zeros(12, dtype=torch.int64))
    monkeypatch.setattr(simulation, "_float32_parts", lambda graph, device: {})
    slow = simulate_graph(graph, pixels, torch.zeros(12, dtype=torch.int64))
    assert fast.steps > 2 and fast.lossless
    assert (fast.positive, fast.negative, fast.sops, fast.agree, fast.count_mismatches) == (
        slow.positive, slow.negative, slow.sops, slow.agree, slow.count_mismatches)


# --- a notation net as a graph ------------------------------------------------------------


def _dyadic_net(notation: str, k: int, B: int | None, seed: int, shape=(1, 12, 12)):
    """A notation net whose folded batch norms are exact: eps = 0, sigma in {1/2, 1, 2},
    dyadic gammas (of both signs, and 0), betas, means and weights (ternary after the
    encoding block)."""
    from tests.helpers import random_net

    model = random_net(notation, k=k, B=B, ternary=True, seed=seed, input_shape=shape, padding="same")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.blocks[0].weight.copy_(_dyadic(model.blocks[0].weight.shape, g, -8, 8, 8))
        for block in model.blocks:
            channels = block.norm.num_features
            block.norm.eps = 0.0
            block.norm.weight.copy_(_dyadic((channels,), g, -6, 6, 4 if B is not None else 64))  # (B none: small counts)
            block.norm.bias.copy_(_dyadic((channels,), g, -4, 6, 8))
            block.norm.running_mean.copy_(_dyadic((channels,), g, -4, 4, 8))
            block.norm.running_var.copy_(torch.tensor(list(SIGMAS))[torch.randint(0, 3, (channels,), generator=g)])
    return model.eval()


@pytest.mark.parametrize(("notation", "k", "B"), [("6C3-P2-8C3-12", 1, 2), ("4C3-P2-10", 0, 1), ("6C3-8C3-P2-12", 2, None)])
def test_a_notation_net_is_one_way_of_building_a_graph(notation, k, B):
    """With batch norms that fold exactly, the graph's exact evaluation equals the chain's
    exact ANN of the net's own parameters, neuron for neuron; every scheme simulates it
    losslessly."""
    from qsnn.snn.exact import ExactANN

    model = _dyadic_net(notation, k, B, seed=k + 7)
    pixels = tie_pixels(24, seed=k).repeat(1, 1, 2, 2)  # (12x12 images of 0 and 255, and a few of any value)
    truth = ExactANN(model)(pixels.to(torch.uint8))
    for scheme in ("nsd", "int") + (("sg",) if B is not None else ()):
        graph = convert(model, scheme, graph=True)
        assert graph.source["net"] == model.spec.notation
        ann = exact_ann(graph, pixels)
        for index, counts in enumerate(truth.counts):
            assert torch.equal(ann.counts[f"layer{index + 1}"], torch.as_tensor(counts).to(torch.int64)), (scheme, index)
        assert torch.equal(ann.predictions, truth.predictions)
        result = simulate_graph(graph, pixels, torch.zeros(24, dtype=torch.int64))
        assert result.lossless, scheme


def test_a_trained_notation_net_as_a_graph_predicts_as_its_exact_ann(shared_datasets, tmp_path, capsys):
    """Folding the trained LeNet's batch norms (eps = 1e-5: irrational sigmas) moves a
    few counts and no prediction on these images; from the command line too."""
    from qsnn.cli import main
    from qsnn.pipeline import MODELS
    from qsnn.snn.exact import ExactANN
    from qsnn.train.checkpoint import load_checkpoint
    from tests.mnist_net import mnist_test_pixels

    model, _ = load_checkpoint(MODELS / "sg-lenet-k1B2.pt")
    pixels, _ = mnist_test_pixels(str(shared_datasets), 200)
    truth = ExactANN(model)(pixels)
    graph = convert(MODELS / "sg-lenet-k1B2.pt", "nsd", graph=True)
    assert graph.source["dataset"] == "mnist"
    ann = exact_ann(graph, pixels)
    assert torch.equal(ann.predictions, truth.predictions)
    moved = sum(int((ann.counts[f"layer{i + 1}"] != torch.as_tensor(c)).sum()) for i, c in enumerate(truth.counts))
    neurons = sum(torch.as_tensor(c).numel() for c in truth.counts)
    assert 0 < moved <= neurons // 10_000
    out = tmp_path / "lenet.npz"
    assert main(["convert", str(MODELS / "sg-lenet-k1B2.pt"), "--scheme", "int", "--graph", "-o", str(out)]) == 0
    assert capsys.readouterr().out == (
        "INT spiking graph: 6 populations, 0 additions, 0 concatenations, 7 weighted layers, from the net "
        f"16C5s-16C5-P2-32C5-P2-256 (batch norms folded)\n  written to {out}\n"
    )
    assert main(["simulate", str(out), "--limit", "50", "--quiet", "--out", str(tmp_path / "sim")]) == 0
    assert capsys.readouterr().out.startswith("LOSSLESS: the spiking graph agrees with the converted model's exact "
                                              "evaluation on 50 of 50 images, 0 neuron counts differ")
    assert main(["convert", str(MODELS / "sg-lenet-k1B2.pt"), "--scheme", "int", "--graph", "--threshold-scale", "10"]) == 2
    assert capsys.readouterr().err == "qsnn: error: --graph is for a qsnn checkpoint of a notation net; drop --threshold-scale\n"


def test_a_full_precision_net_has_no_graph():
    from tests.helpers import random_net

    model = random_net("6C3-10", input_shape=(1, 8, 8))
    fp = type(model)(type(model.spec)(model.spec.notation, model.spec.input_shape, 10, model.spec.padding,
                                      type(model.spec.precision)(full_precision=True)))
    with pytest.raises(QsnnError, match=r"^a full-precision network has no spiking populations; train it with --k$"):
        convert(fp, "nsd", graph=True)


def test_a_graph_names_its_source_and_precision():
    graph = convert(_Concat(nn.AvgPool2d(2)).eval(), torch.zeros(1, 1, 12, 12), "nsd")
    assert [(node.attrs["role"], node.attrs["k"], node.attrs["B"]) for node in graph.populations] == [
        ("encoding", 2, 1), ("encoding", 1, 2), ("hidden", 1, 2)]
    assert (graph.name(), graph.precision()) == ("_Concat", "k=1 B=2 (encoding k=2 B=1)")
    graph.source = {"nir": "/some/where/net.nir"}
    assert graph.name() == "net.nir"
