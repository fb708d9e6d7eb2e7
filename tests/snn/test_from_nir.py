"""Importing NIR graphs (qsnn.snn.from_nir, qsnn.snn.graph.convert_nir), checked against
NIR's own rules evaluated in fractions and against the exact ANN of a trained net."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from qsnn.deploy.export import export_nir
from qsnn.errors import QsnnError
from qsnn.pipeline import MODELS
from qsnn.sim.graph import simulate_graph
from qsnn.snn.convert import convert
from qsnn.snn.exact import ExactANN
from qsnn.snn.graph import SpikingGraph, exact_ann
from qsnn.train.checkpoint import load_checkpoint
from tests.helpers import random_net, random_pixels
from tests.mnist_net import mnist_test_pixels

nir = pytest.importorskip("nir")

SIDE = 6


# --- a small NIR graph and its meaning in fractions ----------------------------------------


def _dyadic(rng, shape, denominator: int, span: int = 4) -> np.ndarray:
    return rng.integers(-span, span + 1, size=shape).astype(np.float64) / denominator


def _conv_fractions(x, weight, bias, padding):
    """x: (C, H, W) of Fractions; weight (O, C, kh, kw) floats; stride 1."""
    channels, height, width = x.shape
    out, _, kh, kw = weight.shape
    padded = np.full((channels, height + 2 * padding, width + 2 * padding), Fraction(0), dtype=object)
    padded[:, padding:padding + height, padding:padding + width] = x
    oh, ow = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    result = np.empty((out, oh, ow), dtype=object)
    for o in range(out):
        for i in range(oh):
            for j in range(ow):
                window = padded[:, i:i + kh, j:j + kw]
                result[o, i, j] = sum(
                    (Fraction(w) * v for w, v in zip(weight[o].reshape(-1).tolist(), window.reshape(-1), strict=True)),
                    Fraction(bias[o]),
                )
    return result


def _median_per_channel(values) -> list[Fraction]:
    return [sorted(channel.reshape(-1))[channel.size // 2] for channel in values]


class TinyNIR:
    """Input (1, 6, 6) -> [conv 3x3 + conv 1x1, summed] -> IF (r per channel) -> SumPool2d 2
    -> Flatten -> Affine -> Threshold -> Linear -> Output, weights on small dyadic grids so
    that membranes meet the thresholds exactly (ties: NIR fires only strictly above)."""

    def __init__(self, unit: bool, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.unit = unit
        scale = 255.0 if unit else 1.0  # unit: x = p / 255, so weights 255 w keep the membranes dyadic
        self.w_a = _dyadic(rng, (3, 1, 3, 3), 4) * scale
        self.b_a = _dyadic(rng, (3,), 8, 40)
        self.w_b = _dyadic(rng, (3, 1, 1, 1), 2) * scale
        self.r = np.array([1.0, 2.0, 0.5])
        self.w_affine = _dyadic(rng, (5, 27), 2)
        self.b_affine = _dyadic(rng, (5,), 4)
        self.w_out = _dyadic(rng, (4, 5), 1)
        self.pixels = random_pixels(12, shape=(1, SIDE, SIDE), seed=seed)
        inputs = self._inputs()
        v1 = [self._membrane1(x) for x in inputs]
        self.theta1 = [r * m for r, m in zip(self.r.tolist(), _median_per_channel(np.stack(v1, axis=-1)), strict=True)]
        z1 = [self._fire1(v) for v in v1]
        u = np.stack([self._membrane2(z) for z in z1], axis=-1)
        self.theta2 = _median_per_channel(u)
        self.ties = (sum(int((Fraction(r) * v == t).sum()) for vs in v1 for r, v, t in zip(self.r.tolist(), vs, self.theta1,
                                                                                           strict=True)),
                     int(sum((u[i] == self.theta2[i]).sum() for i in range(5))))

    def _inputs(self):
        return [np.vectorize(lambda p: Fraction(int(p), 255 if self.unit else 1), otypes=[object])(image.numpy())
                for image in self.pixels]

    def _membrane1(self, x):
        return _conv_fractions(x, self.w_a, self.b_a, 1) + _conv_fractions(x, self.w_b, np.zeros(3), 0)

    def _fire1(self, v):
        return np.stack([(Fraction(r) * v[c] > self.theta1[c]).astype(np.int64) for c, r in enumerate(self.r.tolist())])

    def _membrane2(self, z):
        pooled = z.reshape(3, 3, 2, 3, 2).sum(axis=(2, 4)).reshape(-1)
        return np.array([sum((Fraction(w) * int(n) for w, n in zip(row.tolist(), pooled, strict=True)), Fraction(b))
                         for row, b in zip(self.w_affine, self.b_affine.tolist(), strict=True)], dtype=object)

    def reference(self):
        """Per image: the IF counts, the Threshold counts and the logits, in fractions."""
        z1 = [self._fire1(self._membrane1(x)) for x in self._inputs()]
        z2 = [np.array([int(value > t) for value, t in zip(self._membrane2(z), self.theta2, strict=True)]) for z in z1]
        logits = [self.w_out @ z.astype(np.float64) for z in z2]
        return np.stack(z1), np.stack(z2), np.stack(logits)

    def graph(self):
        full = (3, SIDE, SIDE)
        nodes = {
            "input": nir.Input(input_type=np.array([1, SIDE, SIDE])),
            "conv_a": nir.Conv2d(input_shape=(SIDE, SIDE), weight=self.w_a, stride=1, padding=1, dilation=1, groups=1,
                                 bias=self.b_a),
            "conv_b": nir.Conv2d(input_shape=(SIDE, SIDE), weight=self.w_b, stride=1, padding=0, dilation=1, groups=1,
                                 bias=np.zeros(3)),
            "if1": nir.IF(r=np.broadcast_to(self.r.reshape(3, 1, 1), full).copy(),
                          v_threshold=np.broadcast_to(np.array([float(t) for t in self.theta1]).reshape(3, 1, 1), full).copy(),
                          v_reset=np.zeros(full)),
            "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "flat": nir.Flatten(input_type={"input": np.array([3, 3, 3])}, start_dim=0, end_dim=-1),
            "affine": nir.Affine(weight=self.w_affine, bias=self.b_affine),
            "thr2": nir.Threshold(threshold=np.array([float(t) for t in self.theta2])),
            "out_linear": nir.Linear(weight=self.w_out),
            "output": nir.Output(output_type=np.array([4])),
        }
        edges = [("input", "conv_a"), ("input", "conv_b"), ("conv_a", "if1"), ("conv_b", "if1"), ("if1", "pool"),
                 ("pool", "flat"), ("flat", "affine"), ("affine", "thr2"), ("thr2", "out_linear"),
                 ("out_linear", "output")]
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata={}, type_check=False)


@pytest.mark.parametrize("unit", [False, True], ids=["raw", "unit"])
def test_a_nir_graph_converts_exactly_to_its_one_step_meaning(tmp_path, unit):
    tiny = TinyNIR(unit, seed=3)
    assert tiny.ties[0] > 0 and tiny.ties[1] > 0  # membranes exactly on a threshold, in both populations
    path = tmp_path / "tiny.nir"
    nir.write(str(path), tiny.graph())
    z1, z2, logits = tiny.reference()
    assert 0 < z1.mean() < 1 and 0 < z2.mean() < 1
    expected = torch.from_numpy(np.argmax(logits, axis=1))  # (the first among equal logits)
    for scheme in ("nsd", "int", "sg"):
        graph = convert(path, scheme, nir_input="unit" if unit else "raw")
        assert graph.source["input_range"] == ("unit" if unit else "raw")
        ann = exact_ann(graph, tiny.pixels)
        assert torch.equal(ann.counts["if1"], torch.from_numpy(z1)), scheme
        assert torch.equal(ann.counts["thr2"], torch.from_numpy(z2)), scheme
        assert torch.equal(ann.logits, torch.from_numpy(logits).to(torch.int64))
        assert torch.equal(ann.predictions, expected)
        result = simulate_graph(graph, tiny.pixels, torch.zeros(len(tiny.pixels), dtype=torch.int64))
        assert result.lossless and result.agree[-1] == len(tiny.pixels), scheme
        assert [node.kind for node in graph.nodes].count("add") == 1  # the two edges into if1, summed


def test_the_default_input_range_is_unit_for_other_tools(tmp_path):
    tiny = TinyNIR(True, seed=3)
    path = tmp_path / "tiny.nir"
    nir.write(str(path), tiny.graph())
    graph = convert(path, "nsd")
    assert graph.source["input_range"] == "unit" and graph.nodes[0].denominator == 255
    z1, _, _ = tiny.reference()
    assert torch.equal(exact_ann(graph, tiny.pixels).counts["if1"], torch.from_numpy(z1))


def test_qsnn_sg_export_imports_under_every_scheme_and_agrees_with_the_trained_net(tmp_path, shared_datasets):
    model, _ = load_checkpoint(MODELS / "sg-lenet-k1B2.pt")
    pixels, labels = mnist_test_pixels(str(shared_datasets), 200)
    net = convert(model, "sg")
    path = export_nir(net, tmp_path / "lenet.nir")
    truth = ExactANN(model)(pixels)  # the trained net's own parameters, in exact arithmetic
    assert (truth.predictions == labels).sum() >= 195
    for scheme in ("sg", "nsd", "int"):
        graph = convert(path, scheme)
        assert graph.source["input_range"] == "raw" and graph.nodes[0].denominator == 1
        ann = exact_ann(graph, pixels)
        assert torch.equal(ann.predictions, truth.predictions), scheme
        for index, (layer, counts) in enumerate(zip(net.layers, truth.counts, strict=True)):
            copies = ann.counts[f"if{index + 1}"]  # every level of a channel a binary neuron
            gathered = copies.reshape(len(pixels), layer.channels, layer.levels, *layer.out_shape[1:]).sum(dim=2)
            assert torch.equal(gathered, torch.as_tensor(counts).to(torch.int64)), (scheme, index)
        if scheme != "sg":
            result = simulate_graph(graph, pixels[:60], labels[:60])
            assert result.lossless and result.correct[-1] == int((truth.predictions[:60] == labels[:60]).sum())


def test_a_converted_nir_graph_survives_its_file(tmp_path):
    tiny = TinyNIR(False, seed=5)
    nir.write(str(tmp_path / "tiny.nir"), tiny.graph())
    graph = convert(tmp_path / "tiny.nir", "int", nir_input="raw")
    graph.save(tmp_path / "tiny.npz")
    again = SpikingGraph.load(tmp_path / "tiny.npz")
    assert torch.equal(exact_ann(again, tiny.pixels).logits, exact_ann(graph, tiny.pixels).logits)
    assert again.nodes[0].denominator == 1


# --- refusals ----------------------------------------------------------------------------


def _write(tmp_path, nodes, edges, name="g.nir"):
    path = tmp_path / name
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges, metadata={}, type_check=False))
    return path


def _chain(neuron):
    return {
        "input": nir.Input(input_type=np.array([1, 4, 4])),
        "flat": nir.Flatten(input_type={"input": np.array([1, 4, 4])}, start_dim=0, end_dim=-1),
        "fc": nir.Linear(weight=np.ones((3, 16))),
        "neuron": neuron,
        "output": nir.Output(output_type=np.array([3])),
    }, [("input", "flat"), ("flat", "fc"), ("fc", "neuron"), ("neuron", "output")]


def test_leaky_neurons_and_unknown_nodes_are_refused_in_one_line(tmp_path):
    lif = nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    with pytest.raises(QsnnError, match=r"^the NIR node 'neuron' is a LIF, which has no quantized meaning \(its output "
                       r"depends on time constants and the time step\); qsnn reads Input, Output, Conv2d"):
        convert(_write(tmp_path, *_chain(lif)), "nsd")
    delay = nir.Delay(delay=np.ones(3))
    with pytest.raises(QsnnError, match=r"^the NIR node 'neuron' is a Delay, which qsnn does not read; qsnn reads"):
        convert(_write(tmp_path, *_chain(delay), name="d.nir"), "nsd")


def test_thresholds_and_resistances_must_be_per_channel_and_positive(tmp_path):
    uneven = nir.IF(r=np.ones(3), v_threshold=np.array([0.5, 1.0, 1.5]), v_reset=np.zeros(3))
    assert convert(_write(tmp_path, *_chain(uneven)), "sg").populations[0].shape == (3,)  # per feature: fine
    nodes, edges = _chain(nir.IF(r=np.array([1.0, -1.0, 1.0]), v_threshold=np.ones(3), v_reset=np.zeros(3)))
    with pytest.raises(QsnnError, match=r"^the NIR node 'neuron' has a resistance r <= 0 or not finite"):
        convert(_write(tmp_path, nodes, edges, "r.nir"), "sg")
    conv_nodes = {
        "input": nir.Input(input_type=np.array([1, 4, 4])),
        "conv": nir.Conv2d(input_shape=(4, 4), weight=np.ones((2, 1, 3, 3)), stride=1, padding=1, dilation=1, groups=1,
                           bias=np.zeros(2)),
        "if": nir.IF(r=np.ones((2, 4, 4)), v_threshold=np.arange(32.0).reshape(2, 4, 4), v_reset=np.zeros((2, 4, 4))),
        "output": nir.Output(output_type=np.array([2, 4, 4])),
    }
    with pytest.raises(QsnnError, match=r"^the NIR node 'if' has thresholds that differ within a channel; qsnn imports "
                       r"per-channel thresholds$"):
        convert(_write(tmp_path, conv_nodes, [("input", "conv"), ("conv", "if"), ("if", "output")], "c.nir"), "sg")


def test_nsd_exports_missing_files_and_other_files_are_refused(tmp_path):
    net = convert(random_net("20-16", k=1, B=2, ternary=True, seed=5), "nsd")
    with pytest.raises(QsnnError, match=r"^this NIR file is qsnn's export of a NSD network, whose negative spikes and "
                       r"adapting thresholds standard NIR cannot hold; convert the qsnn network"):
        convert(export_nir(net, tmp_path / "nsd.nir"), "nsd")
    with pytest.raises(QsnnError, match=r"^no NIR file at .*nothing.nir; check the path$"):
        convert(tmp_path / "nothing.nir", "nsd")
    (tmp_path / "text.nir").write_text("not hdf5")
    with pytest.raises(QsnnError, match=r"^.*text.nir is not a readable NIR graph \(.*\); give an .nir file written by "
                       r"nir.write$"):
        convert(tmp_path / "text.nir", "nsd")
    with pytest.raises(QsnnError, match=r"^nir_input is for NIR files; give the path of an .nir file$"):
        convert(tmp_path / "model.pt", "nsd", nir_input="raw")


def test_a_cycle_and_an_unreached_node_are_refused(tmp_path):
    nodes, edges = _chain(nir.Threshold(threshold=np.zeros(3)))
    nodes["loop"] = nir.Linear(weight=np.eye(3))
    edges += [("neuron", "loop"), ("loop", "neuron")]
    with pytest.raises(QsnnError, match=r"^the NIR graph has a cycle or nodes not reached from its Input \(.*\); qsnn "
                       r"converts feed-forward graphs$"):
        convert(_write(tmp_path, nodes, edges), "nsd")


def test_a_graph_without_neurons_is_refused(tmp_path):
    nodes = {
        "input": nir.Input(input_type=np.array([1, 4, 4])),
        "flat": nir.Flatten(input_type={"input": np.array([1, 4, 4])}, start_dim=0, end_dim=-1),
        "fc": nir.Linear(weight=np.ones((3, 16))),
        "output": nir.Output(output_type=np.array([3])),
    }
    path = _write(tmp_path, nodes, [("input", "flat"), ("flat", "fc"), ("fc", "output")])
    with pytest.raises(QsnnError, match=r"has no IF or Threshold node: nothing in it spikes$"):
        convert(path, "nsd")


# --- from the command line ------------------------------------------------------------------


def test_qsnn_convert_reads_a_nir_file_and_qsnn_simulate_runs_it(capsys, tmp_path):
    from qsnn.cli import main

    net = tmp_path / "sg.npz"
    assert main(["convert", str(MODELS / "sg-lenet-k1B2.pt"), "--scheme", "sg", "-o", str(net)]) == 0
    assert main(["export", str(net), "--format", "nir", "-o", str(tmp_path / "lenet.nir")]) == 0
    capsys.readouterr()
    graph = tmp_path / "lenet.nsd.npz"
    assert main(["convert", str(tmp_path / "lenet.nir"), "--scheme", "nsd", "--dataset", "mnist"]) == 0
    assert capsys.readouterr().out == (
        "NSD spiking graph: 6 populations, 0 additions, 0 concatenations, 7 weighted layers, read for one time step "
        f"from NIR (input: raw pixels 0..255)\n  written to {graph}\n"
    )
    assert main(["simulate", str(graph), "--limit", "40", "--quiet", "--out", str(tmp_path / "sim")]) == 0
    assert capsys.readouterr().out.startswith(
        "LOSSLESS: the spiking graph agrees with the converted model's exact evaluation on 40 of 40 images, "
        "0 neuron counts differ; accuracy 100.00% at T = 1"
    )
    for argv, message in [
        (["convert", str(tmp_path / "lenet.nir"), "--scheme", "nsd", "--model", "a:b"],
         "--model does not apply to a NIR file (it holds its network and input shape); drop it"),
        (["convert", str(tmp_path / "lenet.nir"), "--scheme", "nsd", "--dataset", "cifar10"],
         f"{tmp_path / 'lenet.nir'} takes 1x28x28 inputs, but cifar10 gives 3x24x24; give the dataset it was made for"),
        (["convert", str(MODELS / "sg-lenet-k1B2.pt"), "--scheme", "nsd", "--nir-input", "raw"],
         f"--nir-input is for NIR files; {MODELS / 'sg-lenet-k1B2.pt'} is not one"),
    ]:
        assert main(argv) == 2
        assert capsys.readouterr().err == f"qsnn: error: {message}\n"
