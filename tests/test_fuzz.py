"""Fuzzing what a user types and what a file holds: every outcome is a result or one clear
line (a QsnnError, exit status 2), never a traceback. Bounded: a few hundred cases."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsnn.cli import main
from qsnn.errors import QsnnError
from qsnn.io import content_digest
from qsnn.sim.run import simulate
from qsnn.snn.convert import convert
from qsnn.snn.model import SpikingNet
from tests.helpers import random_net, random_pixels

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

notation_text = st.text(alphabet="0123456789CPsvx*- \nc", max_size=40)
number_text = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "inf", "-inf", "nan", "1e999", "0.5", "none", "None", "", "abc",
                     "99999999999999999999", "1" * 400, "\n", "2\n"]),
    st.text(alphabet="0123456789.-e", max_size=12),
)


def _one_line_or_success(capsys, argv) -> int:
    try:
        status = main(argv)
    except SystemExit as done:  # argparse's own refusal (a value that looks like an option)
        status = done.code
    err = capsys.readouterr().err
    assert status in (0, 2), argv
    if status == 2:
        lines = [line for line in err.splitlines() if line.startswith("qsnn: error: ") or line.startswith("usage:")]
        assert lines and "Traceback" not in err, (argv, err)
    return status


@FUZZ
@given(text=notation_text)
def test_any_notation_gives_a_table_or_one_line(capsys, text):
    _one_line_or_success(capsys, ["nets", text])


@FUZZ
@given(option=st.sampled_from(["--k", "--B", "--lr", "--epochs", "--batch-size", "--seed", "--encoding-k",
                               "--encoding-B", "--train-limit"]), value=number_text)
def test_any_training_option_value_is_refused_in_one_line_or_reaches_the_data(capsys, tmp_path_factory, option, value):
    out = tmp_path_factory.mktemp("fuzz")
    argv = ["train", "--net", "64", "--dataset", "mnist", "--data-dir", str(out / "no-data"), "--out", str(out / "run"),
            "--quiet", option, value]
    try:
        status = main(argv)
    except SystemExit as done:  # argparse's own refusal: usage and one error line
        assert done.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("qsnn train: error: ") and "Traceback" not in err
        return
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("qsnn: error: ") and err.count("\n") == 1, (argv, err)


_SEALED: dict = {}


def _sealed(tmp_path_factory) -> tuple[bytes, SpikingNet]:
    """A converted file's bytes and the network it holds (made once)."""
    if not _SEALED:
        net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=11), "int")
        path = tmp_path_factory.mktemp("net") / "net.npz"
        net.save(path)
        _SEALED["bytes"], _SEALED["net"] = path.read_bytes(), SpikingNet.load(path)
    return _SEALED["bytes"], _SEALED["net"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10**9), value=st.integers(0, 255))
def test_a_flipped_byte_is_refused_or_changes_nothing(tmp_path_factory, position, value):
    """A byte changed anywhere in a converted file: refused in one line, or (a byte of the
    zip's own bookkeeping that no content depends on) the very same network loads."""
    original, net = _sealed(tmp_path_factory)
    data = bytearray(original)
    at = position % len(data)
    if data[at] == value:
        return
    data[at] = value
    path = tmp_path_factory.mktemp("flip") / "net.npz"
    path.write_bytes(bytes(data))
    try:
        loaded = SpikingNet.load(path)
    except QsnnError as error:
        assert "\n" not in str(error)
        return
    for mine, theirs in zip(loaded.layers, net.layers, strict=True):
        assert np.array_equal(mine.weight, theirs.weight) and np.array_equal(mine.table, theirs.table)
    assert all(np.array_equal(loaded.model_state[k], v) for k, v in net.model_state.items())


def test_a_zip_version_this_python_cannot_read_is_refused(tmp_path_factory):
    """A central-directory entry that asks for zip version 6.4 (zipfile: NotImplementedError)."""
    original, _ = _sealed(tmp_path_factory)
    data = bytearray(original)
    entry = data.index(b"PK\x01\x02")  # the first central-directory header
    data[entry + 6] = 64  # version needed to extract: 6.4
    path = tmp_path_factory.mktemp("version") / "net.npz"
    path.write_bytes(bytes(data))
    try:
        SpikingNet.load(path)
    except QsnnError as error:
        assert "damaged" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError("a zip entry of version 6.4 was read")


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path


replacement = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.integers(0, 10**6), new=replacement)
def test_a_forged_manifest_field_loads_and_simulates_or_is_refused(tmp_path_factory, choice, new):
    """Any one manifest value replaced and the seal recomputed (a forger): load() either
    refuses it in one line, or the network simulates (or refuses its inputs) in one line."""
    folder = tmp_path_factory.mktemp("forged")
    original = folder / "net.npz"
    original.write_bytes(_sealed(tmp_path_factory)[0])
    with np.load(original) as data:
        arrays = {key: data[key] for key in data.files}
    manifest = json.loads(str(arrays.pop("manifest")))
    leaves = [leaf for leaf in _leaves(manifest) if leaf != ("sha256",)]
    target = leaves[choice % len(leaves)]
    holder = manifest
    for key in target[:-1]:
        holder = holder[key]
    holder[target[-1]] = new
    try:
        manifest["sha256"] = content_digest(manifest, arrays)
        text = json.dumps(manifest)
    except (TypeError, ValueError):  # (not JSON: no file could hold it)
        return
    arrays["manifest"] = np.array(text)
    path = folder / "forged.npz"
    np.savez(path, **arrays)
    try:
        net = SpikingNet.load(path)
    except QsnnError as error:
        assert "\n" not in str(error)
        return
    try:
        result = simulate(net, random_pixels(2, seed=1), torch.zeros(2, dtype=torch.int64), steps=None, verify="none")
    except QsnnError as error:
        assert "\n" not in str(error)
        return
    assert result.images == 2


@FUZZ
@given(
    steps=st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3)),
    noise=st.one_of(st.floats(allow_nan=True), st.integers(-2, 2), st.text(max_size=3)),
    batch=st.one_of(st.integers(-2, 5), st.floats(allow_nan=True), st.none()),
    seed=st.one_of(st.integers(-5, 2**70), st.floats(allow_nan=True)),
    verify=st.one_of(st.sampled_from(["all", "sample", "none", "ALL", ""]), st.integers()),
)
def test_simulate_takes_its_arguments_or_names_the_bad_one(steps, noise, batch, seed, verify):
    net = _small_net()
    try:
        result = simulate(net, random_pixels(2, seed=2), torch.zeros(2, dtype=torch.int64), steps=steps, noise=noise,
                          batch_size=batch, seed=seed, verify=verify)
    except QsnnError as error:
        assert "\n" not in str(error)
        return
    assert result.images == 2 and math.isfinite(result.noise)


_NET = []


def _small_net():
    if not _NET:
        _NET.append(convert(random_net("6C5-P2-8C3-12", k=1, B=2, seed=12), "nsd"))
    return _NET[0]
