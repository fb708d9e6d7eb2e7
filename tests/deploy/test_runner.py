"""The NumPy reference runner of a qsnn-int package equals the simulator, bit for bit."""

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qsnn.deploy import runner as deploy
from qsnn.deploy.export import export_package
from qsnn.errors import QsnnError
from qsnn.sim.stepwise import simulate_batch
from qsnn.snn.convert import convert
from qsnn.snn.reference import reference_counts
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
    logits = reference_counts(net, pixels).logits
    assert np.array_equal(result.final_predictions, logits.argmax(dim=1).numpy())  # lossless
    assert (result.final_predictions == labels.numpy()).mean() > 0.1


def test_the_runner_needs_no_torch(tmp_path):
    """qsnn.deploy.runner and what it imports run in a process that never loads PyTorch
    (the package's public API is imported lazily)."""
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=9), "int")
    pixels = random_pixels(12, seed=9)
    folder = export_package(net, tmp_path / "pkg")
    np.save(tmp_path / "images.npy", pixels.numpy())
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import qsnn.deploy.runner as deploy
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
    with pytest.raises(QsnnError, match=r"^steps must be an integer from 1 to 100000 or None, got 1000000000000$"):
        deploy.run(folder, pixels, steps=10**12)
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
    (folder / "manifest.json").write_text("[1]")
    with pytest.raises(QsnnError, match=r"manifest.json is not a qsnn-int manifest \(not a JSON object\)"):
        deploy.load(folder)
    manifest["schema_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "weights.npz").write_bytes(b"")
    assert_refused(folder, "weights.npz cannot be read (EOFError: No data left in file)")


# --- the seal and the checks on load ----------------------------------------------------


def seal_of(manifest, arrays):
    """The seal as docs/EXPORT.md defines it, written out here independently of qsnn."""
    digest = hashlib.sha256()
    digest.update(json.dumps({key: value for key, value in manifest.items() if key != "sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_package(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "weights.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return manifest, arrays


def write_package(folder, manifest, arrays, *, seal=True):
    """Write a (changed) package back; ``seal``: recompute the seal, as an attacker could."""
    if seal:
        manifest["sha256"] = seal_of(manifest, arrays)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    np.savez(folder / "weights.npz", **arrays)


def refusal(folder, what):
    return f"{folder} is damaged: {what}; re-export it with `qsnn export NET.npz --format qsnn-int -o {folder}`"


def assert_refused(folder, what, *, exact=None):
    with pytest.raises(QsnnError) as caught:
        deploy.load(folder)
    message = str(caught.value)
    assert message == (exact if exact is not None else refusal(folder, what))
    assert "\n" not in message


@pytest.fixture(scope="module")
def small_int_net():
    """6C5-P2-8C3-12, INT, k = 1, B = 2: conv layers with kernel 5, 2 and 3, a dense layer."""
    return convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=12), "int")


@pytest.fixture
def package(tmp_path, small_int_net):
    return export_package(small_int_net, tmp_path / "pkg", steps=5)


def test_an_untouched_package_is_sealed_loads_and_runs(package, small_int_net):
    manifest, arrays = read_package(package)
    assert manifest["sha256"] == seal_of(manifest, arrays) == deploy.package_digest(manifest, arrays)
    pixels = random_pixels(8, seed=12)
    loaded = deploy.load(package)
    assert loaded.time_steps == 5 and [layer.table.shape for layer in loaded.layers] == [(6, 4), (6, 4), (8, 4), (12, 4)]
    assert_same(simulate_batch(small_int_net, pixels, 5), deploy.run(loaded, pixels.numpy()))


def test_a_flipped_weight_or_field_breaks_the_seal(package):
    manifest, arrays = read_package(package)
    flipped = dict(arrays)
    flipped["layer2.weight"] = arrays["layer2.weight"].copy()
    flipped["layer2.weight"].flat[0] = -flipped["layer2.weight"].flat[0] if flipped["layer2.weight"].flat[0] else 1
    write_package(package, dict(manifest), flipped, seal=False)
    broken = "its contents do not match the sha256 seal in manifest.json (a weight or a field was changed)"
    assert_refused(package, broken)
    edited = dict(manifest, time_steps=6)  # a valid value, but not the one sealed
    write_package(package, edited, arrays, seal=False)
    assert_refused(package, broken)
    write_package(package, dict(manifest, sha256="0" * 64), arrays, seal=False)
    assert_refused(package, broken)
    write_package(package, dict(manifest, sha256=7), arrays, seal=False)
    assert_refused(package, broken)
    write_package(package, manifest, arrays, seal=False)  # the original contents: accepted again
    deploy.load(package)


def test_a_flipped_byte_in_the_weights_file_is_refused(package):
    raw = bytearray((package / "weights.npz").read_bytes())
    raw[raw.index(b"\x93NUMPY", raw.index(b"layer2.weight.npy")) + 130] ^= 1  # a weight of layer 2
    (package / "weights.npz").write_bytes(bytes(raw))
    assert_refused(package, "weights.npz cannot be read (BadZipFile: Bad CRC-32 for file 'layer2.weight.npy')")


def test_a_package_without_its_seal_is_refused(package):
    manifest, arrays = read_package(package)
    del manifest["sha256"]
    write_package(package, manifest, arrays, seal=False)
    assert_refused(
        package,
        None,
        exact=f"{package} is not sealed: manifest.json has no 'sha256' seal over the package's contents "
        f"(it was edited, or written before packages were sealed); re-export it with "
        f"`qsnn export NET.npz --format qsnn-int -o {package}`",
    )


def _set(path, value):
    """An edit of the manifest: set the field at ``path`` (keys and list indices)."""

    def edit(manifest, arrays):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _delete(path):
    def edit(manifest, arrays):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


def _array(name, change, shape_in_manifest=None):
    """An edit of the arrays: replace ``name`` by ``change(old)`` (and its listed shape)."""

    def edit(manifest, arrays):
        arrays[name] = change(arrays[name])
        if shape_in_manifest is not None:
            shape_in_manifest(manifest)[:] = list(arrays[name].shape)

    return edit


RESEALED = [
    ("stride 0", _set(["layers", 1, "stride"], 0), "layers[1].stride is 0 (must be an integer from 1 to 65536)"),
    ("padding -1", _set(["layers", 0, "padding"], -1), "layers[0].padding is -1 (must be an integer from 0 to 4)"),
    ("kernel 0", _set(["layers", 2, "kernel"], 0), "layers[2].kernel is 0 (must be an integer from 1 to 65536)"),
    ("stride as text", _set(["layers", 1, "stride"], "2"), 'layers[1].stride is "2" (must be an integer from 1 to 65536)'),
    ("no layers", _set(["layers"], []), "layers is [] (must be a non-empty list of layers)"),
    ("layers not a list", _set(["layers"], {}), "layers is an object (must be a non-empty list of layers)"),
    ("huge time_steps", _set(["time_steps"], 10**12), "time_steps is 1000000000000 (must be an integer from 1 to 100000 or null)"),
    ("zero time_steps", _set(["time_steps"], 0), "time_steps is 0 (must be an integer from 1 to 100000 or null)"),
    ("boolean time_steps", _set(["time_steps"], True), "time_steps is true (must be an integer from 1 to 100000 or null)"),
    ("unknown scheme", _set(["scheme"], "ann"), 'scheme is "ann" (must be "nsd" or "sg" or "int")'),
    ("unknown kind", _set(["layers", 1, "kind"], "pool"), 'layers[1].kind is "pool" (must be "conv" or "dense")'),
    ("missing thresholds", _delete(["layers", 1, "thresholds"]), "layers[1].thresholds is missing"),
    (
        "input shape of rank 4",
        _set(["input", "shape"], [1, 28, 28, 1]),
        "input.shape is [1, 28, 28, 1] (must be a list of 3 integers from 1 to 65536, 67,108,864 values at most)",
    ),
    (
        "input shape too large",
        _set(["input", "shape"], [1, 65536, 65536]),
        "input.shape is [1, 65536, 65536] (must be a list of 3 integers from 1 to 65536, 67,108,864 values at most)",
    ),
    (
        "input shape that does not chain",
        _set(["input", "shape"], [1, 28, 27]),
        "layers[0].in_shape [1, 28, 28] does not match input.shape [1, 28, 27]",
    ),
    (
        "in_shape that does not chain",
        _set(["layers", 2, "in_shape"], [6, 12, 13]),
        "layers[2].in_shape [6, 12, 13] does not match layers[1].out_shape [6, 12, 12]",
    ),
    (
        "out_shape against the geometry",
        _set(["layers", 0, "out_shape"], [6, 24, 25]),
        "layers[0].out_shape [6, 24, 25] does not match its geometry "
        "(kernel 5, stride 1, padding 0 on [1, 28, 28] gives 6 x 24 x 24)",
    ),
    (
        "kernel beyond the input",
        lambda m, a: m["layers"][2].update(kernel=40, padding=0),
        "layers[2].kernel 40 is larger than its input 12 x 12 padded by 0",
    ),
    (
        "a dense layer with a kernel",
        _set(["layers", 3, "kernel"], 3),
        "layers[3] is dense but has kernel 3, stride 1, padding 0 (must be 1, 1, 0)",
    ),
    (
        "wrong weight shape",
        _array("layer3.weight", lambda w: w[..., :2], lambda m: m["layers"][2]["weight"]["shape"]),
        "the array 'layer3.weight' has shape (8, 6, 3, 2), expected (8, 6, 3, 3)",
    ),
    (
        "listed weight shape differs from the array",
        _set(["layers", 2, "weight", "shape"], [8, 6, 3, 2]),
        "layers[2].weight.shape is [8, 6, 3, 2] but the array 'layer3.weight' has shape (8, 6, 3, 3)",
    ),
    (
        "float weights",
        _array("layer2.weight", lambda w: w.astype(np.float64)),
        "the array 'layer2.weight' is float64, not a signed integer type",
    ),
    (
        "NaN weights",
        _array("layer1.weight", lambda w: np.full(w.shape, np.nan)),
        "the array 'layer1.weight' is float64, not a signed integer type",
    ),
    (
        "unsigned weights",
        _array("output.weight", lambda w: np.abs(w).astype(np.uint64)),
        "the array 'output.weight' is uint64, not a signed integer type",
    ),
    (
        "a weight dtype that is not the array's",
        _set(["layers", 1, "weight", "dtype"], "int64"),
        "layers[1].weight.dtype is 'int64' but the array 'layer2.weight' is int8",
    ),
    (
        "a missing array",
        _set(["layers", 1, "thresholds", "table"], "layer9.thresholds"),
        "layers[1].thresholds.table names the array 'layer9.thresholds', which weights.npz lacks",
    ),
    (
        "float thresholds",
        _array("layer2.thresholds", lambda t: t.astype(np.float64)),
        "the array 'layer2.thresholds' is float64, not a signed integer type",
    ),
    (
        "a threshold table of the wrong shape",
        _array("layer2.thresholds", lambda t: t[:, :3]),
        "the array 'layer2.thresholds' has shape (6, 3), expected (6, 4)",
    ),
    (
        "a decreasing threshold table",
        _array("layer3.thresholds", lambda t: np.sort(t, axis=1)[:, ::-1].copy()),
        "the threshold table 'layer3.thresholds' is not non-decreasing along its levels",
    ),
    (
        "levels that are not 2^k B",
        _set(["layers", 1, "levels"], 5),
        "layers[1].levels is 5, but 2^k * B = 4",
    ),
    (
        "divisor 0",
        _set(["layers", 1, "thresholds", "divisor"], 0),
        "layers[1].thresholds.divisor is 0 (must be an integer from 1 to 9223372036854775807)",
    ),
    (
        "classes that are not the output weights'",
        _set(["output", "classes"], 9),
        "the array 'output.weight' has shape (10, 12), expected (9, 12)",
    ),
    (
        "output features",
        _set(["output", "in_features"], 13),
        "output.in_features is 13, but the last layer gives 12",
    ),
    (
        "weights that could overflow int64",
        _array("output.weight", lambda w: np.full(w.shape, 2**58, np.int64)),
        "output.weight times its largest input (4) reaches 1.38e+19, beyond 2^62 (int64 membranes could overflow)",
    ),
    (
        "a negative input limit",
        _set(["layers", 2, "input_limit"], -1.0),
        "layers[2].input_limit is -1.0 (must be a number >= 0 or null)",
    ),
    (
        "other sentinels",
        _set(["sentinels", "plus_infinity"], 2**53),
        "sentinels are not int64 max and int64 min",
    ),
]


@pytest.mark.parametrize(("edit", "what"), [case[1:] for case in RESEALED], ids=[case[0] for case in RESEALED])
def test_a_resealed_package_with_bad_fields_is_refused(package, edit, what):
    manifest, arrays = read_package(package)
    edit(manifest, arrays)
    write_package(package, manifest, arrays)
    assert_refused(package, what)


def test_sg_packages_take_one_step(tmp_path):
    net = convert(random_net("20-16", k=1, B=2, ternary=True, seed=13), "sg")
    folder = export_package(net, tmp_path / "sg")
    manifest, arrays = read_package(folder)
    manifest["time_steps"] = None
    write_package(folder, manifest, arrays)
    assert_refused(folder, "time_steps is null (SG takes exactly 1 step)")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("[" * 100_000, "manifest.json is nested too deeply to be a package manifest"),
        ("[" * 50 + "]" * 50, "manifest.json is nested more than 32 levels deep, deeper than a package manifest"),
        ('{"format": "qsnn-int", "time_steps": NaN}', "manifest.json holds the number NaN, which a package never holds"),
        ('{"format": "qsnn-int", "time_steps": 1e999}', "manifest.json holds the number 1e999, beyond float64"),
        ('{"format": "qsnn-int", ', "manifest.json is not valid JSON (Expecting property name enclosed in double quotes, line 1)"),
    ],
    ids=["deep", "nested", "nan", "overflow", "truncated"],
)
def test_a_manifest_that_does_not_parse_is_refused_in_one_line(package, text, what):
    (package / "manifest.json").write_text(text)
    assert_refused(package, what)


def test_int_net_with_the_papers_rounded_thresholds(tmp_path):
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=11, encoding_k=0, encoding_B=4)
    net = convert(model, "int", threshold_scale=10000)
    pixels = random_pixels(16, seed=11)
    folder = export_package(net, tmp_path / "pkg")
    assert json.loads((folder / "manifest.json").read_text())["threshold_scale"] == 10000
    assert_same(simulate_batch(net, pixels, None), deploy.run(folder, pixels.numpy()))
