"""The NumPy reference runner of a qsnn-int package equals the simulator, bit for bit."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qsnn import deploy
from qsnn.conversion import convert, reference_counts
from qsnn.errors import QsnnError
from qsnn.export import export_package
from qsnn.simulation import simulate_batch
from tests.helpers import random_net, random_pixels
from tests.mnist_net import mnist_test_pixels, trained_mnist_model

CASES = [
    # (notation, k, B, encoding_k, encoding_B, seed, scheme)
    ("6C5-P2-8C3-12", 1, 2, "same", "same", 0, "int"),
    ("6C5-P2-8C3-12", 1, 2, "same", "same", 0, "sg"),
    ("6C5-P2-8C3-12", 0, 1, "same", "same", 1, "int"),
    ("6C5-P2-8C3-12", 0, 4, 0, 4, 2, "sg"),
    ("6C5-P2-8C3-12", 0, None, 0, 4, 3, "int"),
    ("6C5-P2-8C3-12", 2, 4, "same", "same", 4, "sg"),
    ("6C5-P2-8C3-12", 2, 4, "same", "same", 4, "nsd"),
    ("6C5-P2-8C3-12", 1, None, "same", "same", 5, "nsd"),
    ("20-16", 1, 4, "same", "same", 6, "int"),
]


def assert_same(record, result):
    """Predictions per step, spikes per layer and step, final counts: all equal."""
    assert np.array_equal(record.predictions.numpy(), result.predictions)
    assert np.array_equal(record.positive.numpy(), result.positive)
    assert np.array_equal(record.negative.numpy(), result.negative)
    assert len(record.counts) == len(result.counts)
    for layer, (expected, got) in enumerate(zip(record.counts, result.counts, strict=True)):
        assert np.array_equal(expected.numpy(), got), f"layer {layer + 1}: counts differ"


@pytest.mark.parametrize(("notation", "k", "B", "encoding_k", "encoding_B", "seed", "scheme"), CASES)
def test_runner_equals_the_simulator_on_random_ternary_nets(
    tmp_path, notation, k, B, encoding_k, encoding_B, seed, scheme
):
    model = random_net(notation, k=k, B=B, ternary=True, seed=seed, encoding_k=encoding_k, encoding_B=encoding_B)
    net = convert(model, scheme)
    pixels = random_pixels(12 if scheme == "nsd" else 24, seed=seed)
    package = deploy.load(export_package(net, tmp_path / "pkg"))
    record = simulate_batch(net, pixels, None)
    for engine in deploy.ENGINES:
        assert_same(record, deploy.run(package, pixels.numpy(), engine=engine))
    if scheme == "int" and seed == 0:  # a fixed number of steps, fewer and more than "auto"
        for steps in (2, record.predictions.shape[0] + 3):
            assert_same(simulate_batch(net, pixels, steps), deploy.run(package, pixels.numpy(), steps=steps))


def test_same_padding_net_and_steps_from_the_manifest(tmp_path):
    model = random_net("4C3s-P2-6C3s-P2-10", k=1, B=2, ternary=True, seed=7, input_shape=(3, 12, 12), padding="same")
    pixels = random_pixels(16, shape=(3, 12, 12), seed=7)
    for scheme in ("sg", "int"):
        net = convert(model, scheme)
        folder = export_package(net, tmp_path / scheme, steps=None if scheme == "sg" else 5)
        expected = simulate_batch(net, pixels, 1 if scheme == "sg" else 5)
        assert_same(expected, deploy.run(folder, pixels.numpy()))
    with pytest.raises(QsnnError, match=r"--steps does not apply to SG \(it takes one step\); drop it"):
        export_package(convert(model, "sg"), tmp_path / "sg-5", steps=5)


def test_streaming_in_batches_pads_shorter_batches(tmp_path):
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=8), "int")
    pixels = random_pixels(30, seed=8)
    folder = export_package(net, tmp_path / "pkg")
    whole = deploy.run(folder, pixels.numpy(), batch_size=30)
    parts = deploy.run(folder, pixels.numpy(), batch_size=7)
    assert parts.steps == whole.steps  # every image is silent from the last step on
    assert np.array_equal(parts.predictions, whole.predictions)
    assert np.array_equal(parts.positive, whole.positive)
    assert np.array_equal(parts.negative, whole.negative)
    assert np.array_equal(parts.logits, whole.logits)
    for a, b in zip(parts.counts, whole.counts, strict=True):
        assert np.array_equal(a, b)
    assert deploy.run(folder, pixels.numpy(), counts=False).counts is None


@pytest.fixture(scope="module")
def mnist_model(shared_datasets):
    return trained_mnist_model(str(shared_datasets))


@pytest.mark.parametrize("scheme", ["int", "sg"])
def test_runner_equals_the_simulator_on_mnist(tmp_path, shared_datasets, mnist_model, scheme):
    pixels, labels = mnist_test_pixels(str(shared_datasets), 300)
    net = convert(mnist_model, scheme)
    result = deploy.run(export_package(net, tmp_path / "pkg"), pixels.numpy(), batch_size=150)
    assert_same(simulate_batch(net, pixels, None), result)
    _, logits = reference_counts(net, pixels)
    assert np.array_equal(result.final_predictions, logits.argmax(dim=1).numpy())  # lossless
    assert (result.final_predictions == labels.numpy()).mean() > 0.1


def test_the_runner_needs_no_torch(tmp_path):
    """qsnn.deploy and what it imports run in a process that never loads PyTorch
    (the package's public API is imported lazily)."""
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=9), "int")
    pixels = random_pixels(12, seed=9)
    folder = export_package(net, tmp_path / "pkg")
    np.save(tmp_path / "images.npy", pixels.numpy())
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import qsnn.deploy as deploy
        result = deploy.run({str(folder)!r}, np.load({str(tmp_path / "images.npy")!r}))
        np.save({str(tmp_path / "predictions.npy")!r}, result.predictions)
        torch = sorted(name for name in sys.modules if name.split(".")[0] == "torch")
        assert not torch, torch
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = simulate_batch(net, pixels, None).predictions.numpy()
    assert np.array_equal(np.load(tmp_path / "predictions.npy"), expected)


def test_bad_inputs_and_damaged_packages_are_refused(tmp_path):
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=10), "sg")
    folder = export_package(net, tmp_path / "pkg")
    pixels = random_pixels(4, seed=10).numpy()
    with pytest.raises(QsnnError, match="uint8"):
        deploy.run(folder, pixels.astype(np.float32))
    with pytest.raises(QsnnError, match="shape"):
        deploy.run(folder, pixels[:, :, :20])
    with pytest.raises(QsnnError, match="steps"):
        deploy.run(folder, pixels, steps=0)
    with pytest.raises(QsnnError, match="batch_size"):
        deploy.run(folder, pixels, batch_size=0)
    with pytest.raises(QsnnError, match="engine"):
        deploy.run(folder, pixels, engine="float16")
    with pytest.raises(QsnnError, match="not a qsnn-int package"):
        deploy.load(tmp_path / "missing")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QsnnError, match="schema version 99"):
        deploy.load(folder)
    manifest["schema_version"] = 1
    del manifest["layers"][1]["thresholds"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QsnnError, match="incomplete"):
        deploy.load(folder)
    (folder / "manifest.json").write_text("[1]")
    with pytest.raises(QsnnError, match=r"manifest.json is not a qsnn-int manifest \(not a JSON object\)"):
        deploy.load(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "weights.npz").write_bytes(b"")
    with pytest.raises(QsnnError, match=r"holds a damaged package \(EOFError\)"):
        deploy.load(folder)


def test_int_net_with_the_papers_rounded_thresholds(tmp_path):
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=11, encoding_k=0, encoding_B=4)
    net = convert(model, "int", threshold_scale=10000)
    pixels = random_pixels(16, seed=11)
    folder = export_package(net, tmp_path / "pkg")
    assert json.loads((folder / "manifest.json").read_text())["threshold_scale"] == 10000
    assert_same(simulate_batch(net, pixels, None), deploy.run(folder, pixels.numpy()))
