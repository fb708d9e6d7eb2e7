"""The qsnn-int package (contents, dtypes, thresholds, refusals) and the NIR export."""

import hashlib
import json
import os
import stat
import sys

import numpy as np
import pytest
import torch

from qsnn.deploy import runner as deploy
from qsnn.deploy.export import (
    NIR_HUGE,
    export_nir,
    export_package,
    nir_thresholds,
    package_contents,
    smallest_int_dtype,
)
from qsnn.errors import QsnnError
from qsnn.sim.stepwise import simulate_batch
from qsnn.snn.convert import convert
from qsnn.snn.neurons import BIG, threshold
from tests.helpers import random_net, random_pixels
from tests.mnist_net import mnist_test_pixels, trained_mnist_model
from tests.nir_interpreter import run_one_step

nir = pytest.importorskip("nir")


def read_package(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "weights.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return manifest, arrays


def test_manifest_describes_every_layer_with_the_smallest_dtypes(tmp_path):
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=0), "int")
    net.source = {"dataset": "mnist", "sha256": "abc"}
    manifest, arrays = read_package(export_package(net, tmp_path / "pkg", steps=6))
    assert manifest["format"] == "qsnn-int" and manifest["schema_version"] == 1
    assert manifest["scheme"] == "int" and manifest["time_steps"] == 6
    assert manifest["input"]["shape"] == [1, 28, 28] and manifest["input"]["dtype"] == "uint8"
    assert manifest["input"]["range"] == [0, 255]
    assert manifest["source"] == {"dataset": "mnist", "sha256": "abc"}
    assert manifest["sentinels"] == {"plus_infinity": 2**63 - 1, "minus_infinity": -(2**63)}
    assert [layer["role"] for layer in manifest["layers"]] == ["encoding", "hidden", "hidden", "hidden"]
    assert [layer["kind"] for layer in manifest["layers"]] == ["conv", "conv", "conv", "dense"]
    for entry, layer in zip(manifest["layers"], net.layers, strict=True):
        key = entry["weight"]["key"]
        assert arrays[key].dtype.name == entry["weight"]["dtype"]
        assert np.array_equal(arrays[key], layer.weight)
        assert entry["levels"] == 4 and entry["B"] == 2 and entry["k"] == 1
        assert entry["in_shape"] == list(layer.in_shape) and entry["out_shape"] == list(layer.out_shape)
        th = entry["thresholds"]
        for name in ("offset", "step", "size", "constant"):
            assert arrays[th[name]].dtype == np.int64
            assert np.array_equal(arrays[th[name]], getattr(layer, name))
        assert th["divisor"] == layer.divisor == int(arrays[th["divisor_key"]])
        assert arrays[th["table"]].shape == (layer.channels, 4)
    hidden = [arrays[entry["weight"]["key"]].dtype for entry in manifest["layers"][1:]]
    assert hidden == [np.int8] * 3  # ternary
    assert arrays["output.weight"].dtype.itemsize >= 4
    assert manifest["output"]["classes"] == 10 and manifest["output"]["in_features"] == 12


def test_the_package_is_sealed_over_its_manifest_and_every_array(tmp_path):
    """docs/EXPORT.md's seal: sha256 of the manifest without "sha256" (json.dumps, keys
    sorted), then of each array's "name|dtype.str|shape|" and bytes, in name order."""
    net = convert(random_net("20-16", k=1, B=2, ternary=True, seed=7), "sg")
    net.source = {"dataset": "mnist", "path": tmp_path / "net.npz"}  # (a Path: written as text)
    folder = export_package(net, tmp_path / "pkg")
    manifest, arrays = read_package(folder)
    digest = hashlib.sha256(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode() + array.tobytes())
    assert manifest["sha256"] == digest.hexdigest() == deploy.package_digest(manifest, arrays)
    assert manifest["source"]["path"] == str(tmp_path / "net.npz")
    assert package_contents(net)[0] == manifest  # the sealed manifest is what is written
    assert deploy.load(folder).manifest == manifest
    changed = dict(arrays, **{"layer2.weight": arrays["layer2.weight"].view(np.uint8)})  # same bytes
    assert deploy.package_digest(manifest, changed) != manifest["sha256"]
    assert deploy.package_digest(dict(manifest, time_steps=2), arrays) != manifest["sha256"]
    assert deploy.package_digest(dict(manifest, sha256="other"), arrays) == manifest["sha256"]


def test_tables_equal_the_simulator_thresholds(tmp_path):
    net = convert(random_net("6C5-P2-8C3-12", k=2, B=4, ternary=True, seed=1), "sg")
    manifest, arrays = read_package(export_package(net, tmp_path / "pkg"))
    assert manifest["time_steps"] == 1
    for index, entry in enumerate(manifest["layers"]):
        table = arrays[entry["thresholds"]["table"]]
        th = net.thresholds(index)
        for level in range(entry["levels"]):
            like = torch.zeros(1, len(th.offset), dtype=torch.float64)
            expected = threshold(th, level, like)[0].numpy()
            ours = np.clip(table[:, level], -BIG, BIG).astype(np.float64)  # sentinels -> +-BIG
            assert np.array_equal(ours, expected)
    constant = arrays["layer1.thresholds"][0]  # channel 0 has gamma = 0 (a constant count)
    assert set(constant.tolist()) <= {2**63 - 1, -(2**63)}


def test_unbounded_layers_carry_their_exact_table_and_nsd_needs_integer_hidden_weights(tmp_path):
    ternary = convert(random_net("6C5-P2-8C3-12", k=1, B=None, ternary=True, seed=2), "nsd")
    manifest, arrays = read_package(export_package(ternary, tmp_path / "pkg"))
    for entry, layer in zip(manifest["layers"], ternary.layers, strict=True):
        table = arrays[entry["thresholds"]["table"]]
        assert table.shape == (layer.channels, layer.count_limit + 1)  # every level up to the count limit
        live = layer.constant < 0
        assert np.array_equal(table[live, : layer.table.shape[1]][:, :1], layer.table[live, :1])
    assert manifest["time_steps"] is None
    real = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=False, seed=2), "nsd")
    with pytest.raises(QsnnError, match=r"--ternary.*--format nir"):
        export_package(real, tmp_path / "real")
    sg = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=False, seed=2), "sg")
    export_package(sg, tmp_path / "sg")  # SG: integer membranes whatever the weights
    with pytest.raises(QsnnError, match="steps"):
        export_package(ternary, tmp_path / "bad", steps=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(QsnnError, match="folder"):
        export_package(ternary, tmp_path / "file")


def test_smallest_dtype_and_nir_thresholds():
    assert smallest_int_dtype(np.array([-1, 0, 1])) == np.int8
    assert smallest_int_dtype(np.array([-129, 5])) == np.int16
    assert smallest_int_dtype(np.array([2**31])) == np.int64
    table = np.array([2**63 - 1, -(2**63), 5, -3, 2**52 + 1, 2**53])
    theta = nir_thresholds(table)
    assert theta.tolist() == [NIR_HUGE, -NIR_HUGE, 4.5, -3.5, float(2**52), NIR_HUGE]


def assert_nir_matches(net, pixels, path):
    """Run the exported graph for one step with the standard-node interpreter."""
    export_nir(net, path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask  # as every file qsnn writes
    graph = nir.read(path)
    assert graph.metadata["portable"] and graph.metadata["scheme"] == "sg"
    logits, spikes = run_one_step(graph, pixels.numpy().astype(np.float64))
    record = simulate_batch(net, pixels, None)
    assert np.array_equal(logits.argmax(axis=1), record.predictions[-1].numpy())
    for index, (layer, counts) in enumerate(zip(net.layers, record.counts, strict=True)):
        fired = spikes[f"if{index + 1}"]
        gathered = fired.reshape(len(pixels), layer.channels, layer.levels, *layer.out_shape[1:]).sum(axis=2)
        assert np.array_equal(gathered, counts.numpy()), f"layer {index + 1}"


@pytest.mark.parametrize(
    ("notation", "k", "B", "shape", "padding"),
    [
        ("6C5-P2-8C3-12", 1, 2, (1, 28, 28), "valid"),
        ("20-16", 2, 1, (1, 28, 28), "valid"),
        ("4C3s-P2-6C3s-P2-10", 0, 4, (3, 12, 12), "same"),
    ],
)
def test_sg_nir_graph_is_exact_with_standard_nodes(tmp_path, notation, k, B, shape, padding):
    model = random_net(notation, k=k, B=B, ternary=True, seed=3, input_shape=shape, padding=padding)
    assert_nir_matches(convert(model, "sg"), random_pixels(20, shape=shape, seed=3), tmp_path / "net.nir")


def test_sg_nir_graph_is_exact_on_mnist(tmp_path, shared_datasets):
    model = trained_mnist_model(str(shared_datasets))
    pixels, _ = mnist_test_pixels(str(shared_datasets), 300)
    assert_nir_matches(convert(model, "sg"), pixels[:24], tmp_path / "mnist.nir")


@pytest.mark.parametrize("scheme", ["nsd", "int"])
def test_nsd_and_int_nir_graphs_carry_their_scheme_in_metadata(tmp_path, scheme):
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=4), scheme)
    graph = nir.read(export_nir(net, tmp_path / "net.nir"))
    assert not graph.metadata["portable"] and "NOT portable" in graph.metadata["note"]
    for index, layer in enumerate(net.layers):
        node = graph.nodes[f"if{index + 1}"]
        assert np.array(node.v_threshold).shape == layer.out_shape
        meta = node.metadata
        assert meta["qsnn_scheme"] == scheme and not meta["qsnn_portable"]
        assert np.array_equal(meta["qsnn_offset"], layer.offset)
        assert int(meta["qsnn_divisor"]) == layer.divisor
        assert meta["qsnn_thresholds"].shape == (layer.channels, 4)
    assert np.array_equal(graph.nodes["linear_out"].weight, net.output.weight.astype(np.float64))


def test_nir_export_without_nir_installed_says_how_to_install(tmp_path, monkeypatch):
    net = convert(random_net("20-16", k=1, B=2, ternary=True, seed=5), "sg")
    monkeypatch.setitem(sys.modules, "nir", None)  # makes `import nir` raise ImportError
    with pytest.raises(QsnnError, match=r"pip install 'qsnn\[nir\]'"):
        export_nir(net, tmp_path / "net.nir")


def test_export_dispatches_on_the_format(tmp_path):
    from qsnn.deploy.export import export

    net = convert(random_net("20-16", k=1, B=2, ternary=True, seed=6), "sg")
    assert (export(net, "qsnn-int", tmp_path / "pkg") / "manifest.json").is_file()
    assert export(net, "nir", tmp_path / "net.nir").is_file()
    with pytest.raises(QsnnError, match="--steps"):
        export(net, "nir", tmp_path / "other.nir", steps=3)
    with pytest.raises(QsnnError, match="qsnn-int, nir"):
        export(net, "onnx", tmp_path / "net.onnx")
