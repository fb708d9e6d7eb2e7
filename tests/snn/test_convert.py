"""Losslessness, proven by exact equality: every scheme, every layer, every image."""

import math

import numpy as np
import pytest
import torch

from qsnn.errors import QsnnError
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.quantization import Precision
from qsnn.sim.stepwise import simulate_batch
from qsnn.snn import counting
from qsnn.snn.convert import applicable_schemes, convert
from qsnn.snn.model import SpikingNet
from qsnn.snn.reference import reference_counts
from tests.helpers import random_net, random_pixels, with_linear_tables

CASES = [
    # (k, B, ternary, seed)
    (0, 1, False, 0),
    (0, 4, True, 1),
    (1, 1, False, 2),
    (1, 2, True, 3),
    (1, None, False, 4),
    (2, 4, False, 5),
    (2, None, True, 6),
    (3, 2, False, 7),
    (3, None, False, 8),
]


def assert_lossless(model, pixels, scheme, steps=None):
    """SNN final counts == exact reference counts == the float64 model's counts."""
    net = convert(model, scheme)
    ann = model.double().counts(pixels.double() / 255)
    model.float()
    tables = reference_counts(net, pixels)
    reference, logits = tables.counts, tables.logits
    record = simulate_batch(net, pixels, steps)
    for layer, (a, r, s) in enumerate(zip(ann, reference, record.counts, strict=True)):
        assert torch.equal(a, r), f"{scheme}: reference differs from the model in layer {layer + 1}"
        assert torch.equal(s, r), f"{scheme}: SNN differs from the ANN in layer {layer + 1}"
    assert torch.equal(record.predictions[-1], logits.argmax(dim=1))
    return net, record


@pytest.mark.parametrize(("k", "B", "ternary", "seed"), CASES)
def test_random_conv_nets_are_lossless_under_every_scheme(k, B, ternary, seed):
    model = random_net("6C5-P2-8C3-12", k=k, B=B, ternary=ternary, seed=seed)
    pixels = random_pixels(24, seed=seed)
    for scheme in applicable_schemes(model):
        assert_lossless(model, pixels, scheme)


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_and_same_padding_nets_are_lossless(seed):
    mlp = random_net("20-16", k=1, B=4, ternary=True, seed=seed)
    assert_lossless(mlp, random_pixels(32, seed=seed), "int")
    same = random_net("4C3s-P2-6C3s-P2-10", k=2, B=1, seed=seed, input_shape=(3, 12, 12), padding="same")
    pixels = random_pixels(16, shape=(3, 12, 12), seed=seed)
    for scheme in ("nsd", "sg"):
        assert_lossless(same, pixels, scheme)


def test_int_net_with_its_own_encoding_precision_is_lossless():
    model = random_net("6C5-P2-8C3-12", k=0, B=None, ternary=True, seed=11, encoding_k=0, encoding_B=4)
    assert model.blocks[0].bound == 4 and model.blocks[1].bound is None
    net, _ = assert_lossless(model, random_pixels(32, seed=3), "int")
    assert net.layers[0].levels == 4 and net.layers[1].levels is None
    assert [layer.exponent for layer in net.layers[1:]] == [0, 0, 0]  # ternary: plain integers


def exact_tie_net(k: int, gamma_sign: float) -> QuantizedNet:
    """Ternary net whose hidden thresholds are exactly the integers: sigma = |gamma| = 1
    (eps 0), beta = 1/2^(k+1), mu = 0, so count level i is reached at V >= i and integer
    membranes sit exactly on thresholds all the time. (The encoding layer keeps random
    float weights: on pixels p / 255 a float model could not decide a tie exactly.)"""
    precision = Precision(k=k, B=2, ternary=True)
    model = QuantizedNet(NetSpec("4C3-P2-6", (1, 10, 10), 3, "valid", precision))
    with torch.no_grad():
        for index, block in enumerate(model.blocks):
            block.norm.eps = 0.0
            block.norm.running_var.fill_(1.0)
            block.norm.running_mean.zero_()
            block.norm.weight.fill_(gamma_sign if index else 1.0)
            block.norm.bias.fill_(1.0 / 2 ** (k + 1))
    return model.eval()


@pytest.mark.parametrize("k", [0, 1, 2])
def test_ties_at_a_threshold_fire_in_ann_and_snn(k):
    torch.manual_seed(k)
    model = exact_tie_net(k, 1.0)
    pixels = random_pixels(40, shape=(1, 10, 10), seed=k)
    net = convert(model, "int")
    hidden = net.layers[1]
    assert np.all(hidden.offset == 0) and np.all(hidden.step == hidden.divisor)  # T(i) = i
    reference = reference_counts(net, pixels).counts
    # the hidden membrane is an integer V and the count is min(V + 1, N) for V >= 0: every
    # neuron with V = T(i) exactly must have fired level i
    membrane = torch.nn.functional.conv2d(reference[0].double(), torch.from_numpy(net.layers[1].weight).double(), stride=2)
    expected = (membrane + 1).clamp(0, net.layers[1].levels)
    assert torch.equal(reference[1], expected.to(torch.int64))
    for scheme in ("nsd", "sg", "int"):
        assert_lossless(model, pixels, scheme)


def test_negative_gamma_negates_the_channel():
    torch.manual_seed(0)
    model = exact_tie_net(1, -1.0)
    net = convert(model, "int")
    trained = model.blocks[1].effective_weight().detach().numpy()
    assert np.array_equal(net.layers[1].weight, -trained.astype(np.int64))
    assert_lossless(model, random_pixels(40, shape=(1, 10, 10)), "nsd")


def test_zero_gamma_gives_a_constant_count_and_no_input():
    model = random_net("6C5-P2-8C3-12", k=1, B=2, seed=2)
    with torch.no_grad():
        model.blocks[1].norm.bias[0] = 0.8  # constant count floor(0.8 * 2 + 1/2) = 2
        model.blocks[2].norm.bias[0] = -0.3  # relu -> 0
    net = convert(model, "nsd")
    assert net.layers[1].constant[0] == 2 and net.layers[2].constant[0] == 0
    assert not net.layers[1].weight[0].any()
    assert all(c == -1 for c in net.layers[1].constant[1:])
    _, record = assert_lossless(model, random_pixels(16), "nsd")
    assert bool((record.counts[1][:, 0] == 2).all())


def test_unbounded_layers_get_an_exactness_limit_and_refuse_beyond_it():
    model = random_net("6C5-P2-8C3-12", k=2, B=None, seed=3)
    net = convert(model, "nsd")
    for layer in net.layers:
        assert layer.input_limit > 0
        assert 1 <= layer.count_limit <= 2**24
    net.layers[2].input_limit = 1.0
    with pytest.raises(QsnnError, match="reached .* beyond 1, the largest for which its integer membrane is exact"):
        reference_counts(net, random_pixels(8))


def test_float_weights_are_held_exactly_on_the_grid():
    model = random_net("6C5-P2-8C3-12", k=1, B=2, seed=4)
    net = convert(model, "nsd")
    for layer, block in zip(net.layers, model.blocks, strict=True):
        real = layer.weight.astype(np.float64) * 2.0**-layer.exponent
        trained = block.weight.detach().double().numpy()
        folded = np.where(
            (block.norm.weight.detach().numpy() < 0).reshape(-1, *[1] * (trained.ndim - 1)), -trained, trained
        )
        folded[0] = 0.0  # gamma = 0 channel
        assert not layer.snapped
        assert np.array_equal(real, folded)


def test_save_and_load_round_trip(tmp_path):
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=5)
    net = convert(model, "int", source={"checkpoint": "x.pt", "sha256": "ab" * 32})
    path = tmp_path / "net.snn.npz"
    net.save(path)
    loaded = SpikingNet.load(path)
    assert loaded.scheme == "int" and loaded.source["sha256"] == "ab" * 32
    assert loaded.spec == net.spec
    for a, b in zip(net.layers, loaded.layers, strict=True):
        for name in ("weight", "offset", "step", "size", "constant"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
        assert (a.exponent, a.levels, a.divisor, a.input_limit) == (b.exponent, b.levels, b.divisor, b.input_limit)
    pixels = random_pixels(8)
    one, two = simulate_batch(net, pixels, 6), simulate_batch(loaded, pixels, 6)
    assert torch.equal(one.predictions, two.predictions)
    assert all(torch.equal(x, y) for x, y in zip(one.counts, two.counts, strict=True))


def test_loading_something_else_is_a_clear_error(tmp_path):
    missing = tmp_path / "none.npz"
    with pytest.raises(QsnnError, match="no converted network at .*none.npz: create one with `qsnn convert"):
        SpikingNet.load(missing)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(QsnnError, match="junk.npz is not a converted qsnn network"):
        SpikingNet.load(junk)


def _rewritten(path, change, reseal: bool = False) -> None:
    """Rewrite the .npz at ``path`` with ``change(arrays, manifest)`` applied (a hand edit);
    with ``reseal``, the checksum recomputed over the edit (a forger's edit)."""
    import json

    from qsnn.io import content_digest

    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    manifest = json.loads(str(arrays["manifest"]))
    change(arrays, manifest)
    if reseal:
        manifest["sha256"] = content_digest(manifest, {k: v for k, v in arrays.items() if k != "manifest"})
    arrays["manifest"] = np.array(json.dumps(manifest))
    np.savez(path, **arrays)


def test_a_damaged_network_file_is_caught_by_its_checksum_and_its_shapes(tmp_path):
    from dataclasses import replace

    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, seed=5), "nsd")
    path = tmp_path / "net.npz"
    net.save(path)

    def flip(arrays, manifest):
        arrays["layer2.weight"] = arrays["layer2.weight"].copy()
        arrays["layer2.weight"].flat[0] += 1

    _rewritten(path, flip)
    with pytest.raises(QsnnError) as refused:
        SpikingNet.load(path)
    assert str(refused.value) == (
        f"{path} is damaged: its contents do not match the checksum written with them; re-create it with `qsnn convert`"
    )

    net.save(path)

    def halve(arrays, manifest):  # the manifest is sealed too
        manifest["layers"][1]["divisor"] *= 2

    _rewritten(path, halve)
    with pytest.raises(QsnnError, match="its contents do not match the checksum"):
        SpikingNet.load(path)

    def unsealed(arrays, manifest):  # an edit that takes the seal away with it
        del manifest["sha256"]
        arrays["layer2.weight"] = arrays["layer2.weight"] * 2

    _rewritten(path, unsealed)
    with pytest.raises(QsnnError) as refused:
        SpikingNet.load(path)
    assert str(refused.value) == (
        f"{path} has no checksum (it was not written by qsnn convert, or was edited); re-create it with `qsnn convert`"
    )
    cut = replace(net, output=replace(net.output, weight=net.output.weight[:, :-1]))
    cut.save(path)
    with pytest.raises(QsnnError) as refused:
        SpikingNet.load(path)
    assert str(refused.value) == (
        f"{path} is damaged: the output layer's weights have shape (10, 11), expected (10, 12); "
        "re-create it with `qsnn convert`"
    )
    wrong = replace(net, layers=[*net.layers[:2], replace(net.layers[2], weight=net.layers[2].weight[:, :-1]),
                                 *net.layers[3:]])
    wrong.save(path)
    with pytest.raises(QsnnError, match=r"layer 3's weights have shape \(8, 5, 3, 3\), expected \(8, 6, 3, 3\)"):
        SpikingNet.load(path)
    other = replace(net, scheme="xyz")
    other.save(path)
    with pytest.raises(QsnnError, match="is damaged: unknown scheme 'xyz'"):
        SpikingNet.load(path)
    net.save(path)

    def flat(arrays, manifest):  # hand edits that would break arithmetic, resealed
        manifest["layers"][0]["in_shape"] = [1, 28]

    _rewritten(path, flat, reseal=True)
    with pytest.raises(QsnnError, match=r"is damaged: its manifest or arrays are incomplete \(ValueError"):
        SpikingNet.load(path)
    net.save(path)

    def no_stride(arrays, manifest):
        manifest["layers"][1]["stride"] = 0

    _rewritten(path, no_stride, reseal=True)
    with pytest.raises(QsnnError, match="is damaged: layer 2 has kernel 2, stride 0, padding 0"):
        SpikingNet.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a, m: a.__setitem__("layer2.weight", a["layer2.weight"].astype(np.float64)), "its layer 3's weight is not an integer array"),
        (lambda a, m: a.__setitem__("layer1.table", a["layer1.table"].astype(str)), "its layer 2's table is not an integer array"),
        (lambda a, m: m["layers"][1].__setitem__("divisor", 0), "layer 2 has k 1, B 2, divisor 0"),
        (lambda a, m: m["layers"][2].__setitem__("count_limit", -3), "layer 3 has k 1, B 2"),
        (lambda a, m: m["layers"][0].__setitem__("input_limit", float("nan")), "layer 1 has k 1, B 2"),
        (lambda a, m: m.__setitem__("threshold_scale", "abc"), "its threshold scale 'abc' is not a positive integer"),
        (lambda a, m: m["net"].__setitem__("num_classes", 7), "it names 7 classes but its output layer has 10"),
        (lambda a, m: a.__setitem__("model.blocks.0.norm.running_var", a["model.blocks.0.norm.running_var"] * np.nan),
         "the trained model's parameter blocks.0.norm.running_var is not finite"),
        (lambda a, m: a.pop("model.classifier"), "the trained model's parameters it carries are incomplete"),
        (lambda a, m: a.__setitem__("layer1.size", a["layer1.size"] - 10), "layer 2 has negative table sizes"),
    ],
)
def test_a_resealed_forgery_is_still_refused(tmp_path, edit, message):
    """Edits whose checksum was recomputed: types, ranges and consistency are checked too."""
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, seed=5), "nsd")
    path = tmp_path / "net.npz"
    net.save(path)
    _rewritten(path, edit, reseal=True)
    with pytest.raises(QsnnError) as refused:
        SpikingNet.load(path)
    assert str(refused.value).startswith(f"{path} is damaged: ") and message in str(refused.value)


def test_a_relabelled_scheme_and_a_deep_manifest_are_refused(tmp_path):
    unbounded = convert(random_net("6C5-P2-8C3-12", k=1, B=None, seed=5), "nsd")
    path = tmp_path / "net.npz"
    unbounded.save(path)
    _rewritten(path, lambda a, m: m.__setitem__("scheme", "sg"), reseal=True)
    with pytest.raises(QsnnError, match="is damaged: it is labelled SG but has a layer without an upper bound B"):
        SpikingNet.load(path)
    real = convert(random_net("6C5-P2-8C3-12", k=1, B=2, seed=5), "nsd")
    real.save(path)
    _rewritten(path, lambda a, m: m.__setitem__("scheme", "int"), reseal=True)
    with pytest.raises(QsnnError, match="is damaged: it is labelled INT but its hidden weights are not ternary"):
        SpikingNet.load(path)
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["manifest"] = np.array("[" * 100000)
    np.savez(path, **arrays)
    with pytest.raises(QsnnError) as refused:
        SpikingNet.load(path)
    assert str(refused.value) == (
        f"{path} is not a converted qsnn network or is damaged (RecursionError); re-create it with `qsnn convert`"
    )


def test_a_diverged_network_is_not_converted():
    model = random_net(k=1, B=2)
    with torch.no_grad():
        model.blocks[1].weight.view(-1)[0] = float("nan")
    with pytest.raises(QsnnError) as refused:
        convert(model, "nsd")
    assert str(refused.value) == (
        "the network holds non-finite values in blocks.1.weight (a diverged training); "
        "retrain it with a lower --lr"
    )


def test_scheme_requirements_are_explained():
    unbounded = random_net("6C5-P2-8C3-12", k=1, B=None)
    with pytest.raises(QsnnError, match=r"SG needs an upper bound B on every block .* block\(s\) \[1, 2, 3, 4\] have B none"):
        convert(unbounded, "sg")
    with pytest.raises(QsnnError, match="INT needs ternary hidden weights .* train with --ternary"):
        convert(random_net(k=1, B=2), "int")
    with pytest.raises(QsnnError, match="unknown scheme 'snn': use one of nsd, sg, int"):
        convert(unbounded, "snn")
    with pytest.raises(QsnnError, match="--threshold-scale reproduces the INT paper's rounded thresholds"):
        convert(unbounded, "nsd", threshold_scale=10000)
    full = QuantizedNet(NetSpec("6C5-12", (1, 28, 28), 10, "valid", Precision(full_precision=True)))
    with pytest.raises(QsnnError, match="cannot convert a full-precision network"):
        convert(full, "nsd")


def test_threshold_scale_reproduces_the_original_small_loss(tmp_path):
    torch.manual_seed(0)
    model = exact_tie_net(0, 1.0)
    with torch.no_grad():  # thresholds at i + 3e-5: exact ceil says V >= i + 1
        model.blocks[1].norm.bias.fill_(0.5 - 3e-5)
    pixels = random_pixels(40, shape=(1, 10, 10))
    exact = convert(model, "int")
    rounded = convert(model, "int", threshold_scale=10000)
    rounded.save(tmp_path / "rounded.npz")
    rounded = SpikingNet.load(tmp_path / "rounded.npz")
    # the quantized ANN is the same exact one for both; only the rounded SNN departs from it
    ann = reference_counts(exact, pixels).counts
    ann_of_rounded = reference_counts(rounded, pixels).counts
    assert all(torch.equal(a, b) for a, b in zip(ann, ann_of_rounded, strict=True))
    exact_snn = simulate_batch(exact, pixels, None).counts
    rounded_snn = simulate_batch(rounded, pixels, None).counts
    assert all(torch.equal(a, s) for a, s in zip(ann, exact_snn, strict=True))
    assert torch.equal(rounded_snn[0], ann[0])  # the encoding layer keeps exact thresholds
    assert int((rounded_snn[1] != ann[1]).sum()) > 0
    hidden = rounded.layers[1]
    divisor = exact.layers[1].divisor
    assert hidden.divisor == 10000 and divisor & (divisor - 1) == 0 and divisor >= 2**30
    assert math.isclose(exact.layers[1].offset[1] / exact.layers[1].divisor, 3e-5, rel_tol=1e-3)
    assert hidden.offset[1] == 0  # round(3e-5 * 10^4) = 0: the threshold rounds down to V >= i
    assert hidden.ann_thresholds[2] == divisor and np.array_equal(hidden.ann_thresholds[0], exact.layers[1].offset)


@pytest.mark.parametrize("name", ["nsd-lenet-k1", "sg-lenet-k1B2", "int-lenet"])
def test_trained_mnist_nets_are_lossless_on_real_images(name):
    """The shipped MNIST nets (trained by qsnn) under every scheme they allow: per layer and
    per image, SNN counts == exact ANN counts == the float64 model's counts."""
    from qsnn.data.readers import embedded_mnist_test
    from qsnn.pipeline import MODELS
    from qsnn.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(MODELS / f"{name}.pt")
    pixels = embedded_mnist_test().subset(200).images
    schemes = applicable_schemes(model)
    assert schemes == {"nsd-lenet-k1": ["nsd"], "sg-lenet-k1B2": ["nsd", "sg", "int"], "int-lenet": ["nsd", "int"]}[name]
    for scheme in schemes:
        assert_lossless(model, pixels, scheme)


def test_the_gpu_convolution_path_equals_the_direct_one():
    """On GPUs qsnn convolves by unfold + float64 GEMM (cuDNN may round integers); checked here
    on the CPU against the direct convolution, bit for bit."""
    from qsnn.snn.reference import apply_layer, conv_as_matmul, layer_weight

    net = convert(random_net("4C3s-P2-6C5-10", k=2, B=None, input_shape=(3, 13, 13), padding="same"), "nsd")
    x = random_pixels(6, shape=(3, 13, 13)).to(torch.float64)
    for layer in net.layers[:3]:
        weight = layer_weight(layer, "cpu")
        direct = apply_layer(layer, x, weight)
        assert torch.equal(conv_as_matmul(layer, x, weight), direct)
        x = direct.clamp(0, 7).round()


def test_membranes_far_beyond_the_thresholds_count_exactly():
    """Strongly inhibited neurons (V far below every threshold) and saturated ones (far
    above) must count 0 and N in every implementation: a product S * floor(V) must never
    overflow."""
    from qsnn.sim.events import EventSimulator

    model = random_net("3", k=0, B=1, input_shape=(1, 4, 4), zero_gamma=False)
    with torch.no_grad():
        block = model.blocks[0]
        block.weight.fill_(-1.0)  # z = -sum(x) <= 0: relu gives 0 everywhere
        block.norm.weight.fill_(1.0)
        block.norm.bias.fill_(0.0)
        block.norm.running_mean.fill_(0.0)
        block.norm.running_var.fill_(1.0)
    pixels = torch.arange(256, dtype=torch.uint8).reshape(256, 1, 1, 1).expand(256, 1, 4, 4).contiguous()
    truth = model.counts(pixels.float() / 255)[0]
    assert int(truth.sum()) == 0
    for scheme in ("nsd", "sg"):
        net = convert(model, scheme)
        ann = reference_counts(net, pixels).counts
        assert torch.equal(ann[0], truth)
        assert torch.equal(simulate_batch(net, pixels, None).counts[0], truth)
        assert torch.equal(EventSimulator(net)(net, pixels, None).counts[0].to(torch.int64), truth)
    with torch.no_grad():
        model.blocks[0].weight.fill_(1.0)  # now far above: saturates at the bound
    net = convert(model, "sg")
    ann = reference_counts(net, pixels[200:]).counts
    assert bool((ann[0] == 1).all())


@pytest.mark.parametrize(("notation", "index"), [("6C5-P2-8C3-12", 0), ("6C5-P2-8C3-12", 2), ("4C3s-P2-6C3s-P2-10", 3), ("20-16", 1)])
def test_counting_membrane_is_exact_at_every_threshold_tie(notation, index, monkeypatch):
    """The float32 estimate with its rounding bound gives every count exactly, also when
    thresholds sit exactly on membranes (ties fire) and one unit either side of them: the
    neurons near a threshold are recomputed exactly, for the spiking and the ANN tables."""

    from qsnn.snn.reference import (
        apply_layer,
        counting_membrane,
        input_bound,
        layer_counts,
        layer_weight,
    )

    shape = (3, 12, 12) if "s" in notation else (1, 28, 28)
    model = random_net(notation, k=2, B=None, seed=31, input_shape=shape, padding="same" if "s" in notation else "valid")
    net = convert(model, "nsd")
    pixels = random_pixels(6, shape=shape, seed=31)
    ann = reference_counts(net, pixels).counts
    inputs = pixels if index == 0 else ann[index - 1]
    layer = net.layers[index]
    largest = input_bound(net, index, inputs)
    exact = apply_layer(layer, inputs.to(torch.float64), layer_weight(layer, "cpu"))
    assert float(np.abs(layer.weight.reshape(layer.weight.shape[0], -1)).sum(axis=1).max()) * largest >= 2**24  # the float32 path
    # every channel's T(0) on a membrane of that channel (a tie), T(1) one unit above another
    values = exact.transpose(0, 1).reshape(layer.channels, -1)
    offset = (values[:, 3].to(torch.int64) * layer.divisor).numpy()
    step = ((values[:, 5].to(torch.int64) + 1 - values[:, 3].to(torch.int64)).abs() * layer.divisor + layer.divisor).numpy()
    ann_offset = offset - layer.divisor  # the ANN's tables one unit lower
    tied = with_linear_tables(layer, offset, step, ann=(ann_offset, step))
    recomputed = []
    original = counting.certify

    def recounting(*args):
        recomputed.append(original(*args))
        return recomputed[-1]

    monkeypatch.setattr(counting, "certify", recounting)
    membrane = counting_membrane(tied, inputs, largest)
    assert recomputed[0] >= layer.channels - int((layer.constant >= 0).sum())  # the tied neurons at least
    for ann_tables in (False, True):
        assert torch.equal(layer_counts(tied, membrane, ann=ann_tables), layer_counts(tied, exact, ann=ann_tables))
