"""Dataset loading, checking, downloading and preprocessing (qsnn.data)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qsnn import data
from qsnn.data.registry import ASSETS
from qsnn.errors import QsnnError

MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 28881),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 1648877),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 4542),
}


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def copy_files(source: Path, target: Path, names) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(source / name, target / name)
    return target


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".")]


# --------------------------------------------------------------------------- info and roots


def test_dataset_info_shapes_and_unknown_name():
    assert data.dataset_info("mnist").input_shape == (1, 28, 28)
    assert data.dataset_info("fashion-mnist").default_padding == "valid"
    cifar10, cifar100 = data.dataset_info("cifar10"), data.dataset_info("cifar100")
    assert (cifar10.input_shape, cifar10.stored_shape) == ((3, 24, 24), (3, 32, 32))
    assert (cifar10.num_classes, cifar100.num_classes) == (10, 100)
    assert cifar100.default_padding == "same"
    assert set(data.DATASETS) == {"mnist", "fashion-mnist", "cifar10", "cifar100"}
    with pytest.raises(QsnnError, match=r"unknown dataset 'svhn': choose one of mnist, "
                                        r"fashion-mnist, cifar10, cifar100"):
        data.dataset_info("svhn")


def test_official_checksums_are_the_published_ones():
    mnist = data.dataset_info("mnist")
    assert {spec.name: (spec.md5, spec.size) for spec in mnist.files} == MNIST_FILES
    assert data.dataset_info("cifar10").archive.md5 == "c58f30108f718f92721af3b95e74349a"
    assert data.dataset_info("cifar100").archive.md5 == "eb9058c3a382ffc7106e4002c42a8d85"


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("QSNN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data.data_root() == tmp_path / "env"
    monkeypatch.delenv("QSNN_DATA")
    assert data.data_root() == tmp_path / "xdg" / "qsnn" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_root() == tmp_path / "home" / ".cache" / "qsnn" / "data"


def test_unknown_split():
    with pytest.raises(QsnnError, match=r"unknown split 'valid' for mnist: use 'train' or 'test'"):
        data.load("mnist", "valid")


# --------------------------------------------------------------------------- MNIST-like


def test_mnist_test_set(shared_datasets):
    test = data.load("mnist", "test", shared_datasets)
    assert (test.name, test.split, len(test)) == ("mnist", "test", 10000)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.labels.shape == (10000,) and test.labels.dtype == torch.int64
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_HISTOGRAM
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert (int(test.images.min()), int(test.images.max())) == (0, 255)


def test_mnist_train_set(shared_datasets):
    train = data.load("mnist", "train", shared_datasets)
    assert train.images.shape == (60000, 1, 28, 28) and len(train) == 60000
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert int(train.labels.max()) == 9 and int(train.images.max()) == 255


def test_fashion_mnist(shared_datasets):
    train = data.load("fashion-mnist", "train", shared_datasets)
    test = data.load("fashion-mnist", "test", shared_datasets)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.images.shape == (10000, 1, 28, 28)
    mnist = data.load("mnist", "test", shared_datasets)
    assert not torch.equal(test.images, mnist.images)


def test_root_holding_the_files_directly(shared_datasets):
    nested = data.load("mnist", "test", shared_datasets)
    direct = data.load("mnist", "test", shared_datasets / "mnist")
    assert torch.equal(nested.images, direct.images)
    assert torch.equal(nested.labels, direct.labels)


def test_uncompressed_idx_files(shared_datasets, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((shared_datasets / "mnist" / f"{name}.gz").read_bytes())
        (folder / name).write_bytes(raw)
    raw_set = data.load("mnist", "test", tmp_path)
    gz_set = data.load("mnist", "test", shared_datasets)
    assert torch.equal(raw_set.images, gz_set.images)
    assert torch.equal(raw_set.labels, gz_set.labels)
    assert [check.status for check in data.verify("mnist", tmp_path)][2:] == ["ok", "ok"]

    images = folder / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(QsnnError) as error:
        data.load("mnist", "test", tmp_path)
    assert f"{images} is truncated (expected 7840016 bytes" in str(error.value)


def test_loaded_sets_are_cached_but_independent(shared_datasets):
    first = data.load("mnist", "test", shared_datasets)
    first.images.zero_()
    second = data.load("mnist", "test", shared_datasets)
    assert int(second.images.max()) == 255


def test_cache_notices_a_replaced_file(shared_datasets, tmp_path):
    folder = copy_files(shared_datasets / "mnist", tmp_path / "mnist", MNIST_FILES)
    assert len(data.load("mnist", "test", tmp_path)) == 10000
    shutil.copyfile(shared_datasets / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz",
                    folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(QsnnError, match=r"this is fashion-mnist's t10k-labels-idx1-ubyte\.gz"):
        data.load("mnist", "test", tmp_path)


def test_subset():
    images = torch.arange(5 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8)
    full = data.ImageSet("mnist", "test", images.reshape(5, 1, 28, 28), torch.arange(5))
    part = full.subset(3)
    assert len(part) == 3 and part.labels.tolist() == [0, 1, 2]
    assert torch.equal(part.images, full.images[:3])
    assert len(full.subset(10)) == 5
    with pytest.raises(QsnnError, match="subset size must be 0 or more, got -1"):
        full.subset(-1)


# --------------------------------------------------------------------------- packaged copy


def test_embedded_mnist_test_set(shared_datasets, tmp_path):
    embedded = data.embedded_mnist_test()
    official = data.load("mnist", "test", shared_datasets)
    assert torch.equal(embedded.images, official.images)
    assert torch.equal(embedded.labels, official.labels)
    assert {p.name: md5_of(p) for p in ASSETS.iterdir()} == {
        name: md5 for name, (md5, _) in MNIST_FILES.items() if name.startswith("t10k")
    }
    fallback = data.load("mnist", "test", tmp_path / "empty")
    assert torch.equal(fallback.images, official.images)
    checks = data.verify("mnist", tmp_path / "empty")
    assert [check.status for check in checks] == ["missing"] * 4
    assert "the packaged MNIST test set is used instead" in checks[3].message
    assert "packaged" not in checks[0].message
    partial = tmp_path / "partial"
    (partial / "mnist").mkdir(parents=True)
    labels = next(name for name in MNIST_FILES if name.startswith("t10k-labels"))
    (partial / "mnist" / labels).write_bytes((shared_datasets / "mnist" / labels).read_bytes())
    with pytest.raises(QsnnError, match="mnist test: .* is missing"):  # one test file there: no fallback
        data.load("mnist", "test", partial)
    assert not any("packaged" in check.message for check in data.verify("mnist", partial))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(QsnnError) as refused:
        data.load("mnist", "test", afile)
    assert str(refused.value) == f"data folder {afile} is a file; give the folder that holds the datasets"


def test_missing_train_set_has_no_fallback(tmp_path):
    with pytest.raises(QsnnError) as error:
        data.load("mnist", "train", tmp_path)
    message = str(error.value)
    expected = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    assert message == (
        f"mnist train: {expected} is missing (expected 9912422 bytes, md5 "
        f"f68b3c2dcbeaaa9fbdd348bbdeb94873; found no file); run `qsnn data download mnist "
        f"--data-dir {tmp_path}` or pass --data-dir to a folder that holds the original files"
    )


# --------------------------------------------------------------------------- damaged files


def test_truncated_gzip(shared_datasets, tmp_path):
    folder = copy_files(shared_datasets / "mnist", tmp_path / "mnist", MNIST_FILES)
    target = folder / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(QsnnError) as error:
        data.load("mnist", "test", tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"mnist test: {target} is truncated (expected 1648877 bytes, md5 "
                              "9fb629c4189551a2d022fa330f9573f3; found 1000 bytes, md5 ")
    assert message.endswith(f"run `qsnn data download mnist --data-dir {tmp_path}` or pass "
                            "--data-dir to a folder that holds the original files")
    checks = data.verify("mnist", tmp_path)
    assert [check.status for check in checks] == ["ok", "ok", "truncated", "ok"]
    assert checks[2].actual_size == 1000 and checks[2].expected_size == 1648877
    assert checks[2].message == "truncated: 1000 of 1648877 bytes"


def test_flipped_byte(shared_datasets, tmp_path):
    folder = copy_files(shared_datasets / "mnist", tmp_path / "mnist", MNIST_FILES)
    target = folder / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[500_000] ^= 0xFF
    target.write_bytes(bytes(raw))
    actual = hashlib.md5(bytes(raw)).hexdigest()
    with pytest.raises(QsnnError) as error:
        data.load("mnist", "test", tmp_path)
    assert str(error.value).startswith(
        f"mnist test: {target} is corrupt (expected 1648877 bytes, md5 "
        f"9fb629c4189551a2d022fa330f9573f3; found 1648877 bytes, md5 {actual}); "
        "run `qsnn data download mnist"
    )
    check = data.verify("mnist", tmp_path)[2]
    assert (check.status, check.actual_md5) == ("corrupt", actual)
    assert check.message == f"corrupt: md5 {actual}, expected 9fb629c4189551a2d022fa330f9573f3"


def test_missing_labels_file(shared_datasets, tmp_path):
    copy_files(shared_datasets / "mnist", tmp_path / "mnist", ["t10k-images-idx3-ubyte.gz"])
    with pytest.raises(QsnnError, match=r"t10k-labels-idx1-ubyte.gz is missing \(expected 4542 "
                                        r"bytes, md5 ec29112dd5afa0611ce80d1b7f02629c; found no "
                                        r"file\); run `qsnn data download mnist"):
        data.load("mnist", "test", tmp_path)


def test_default_root_fix_has_no_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("QSNN_DATA", str(tmp_path))
    with pytest.raises(QsnnError, match=r"run `qsnn data download fashion-mnist` or pass"):
        data.load("fashion-mnist", "test")


def test_verify_and_table(shared_datasets):
    checks = data.verify("fashion-mnist", shared_datasets)
    assert [check.status for check in checks] == ["ok"] * 4
    assert all(check.ok for check in checks)
    table = data.format_checks(checks).splitlines()
    assert table[0].split() == ["status", "file", "bytes", "md5", "note"]
    assert table[1].split() == [
        "ok", str(shared_datasets / "fashion-mnist" / "train-images-idx3-ubyte.gz"),
        "26421880", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ]
    assert table[-1] == "4 of 4 files ok"


# --------------------------------------------------------------------------- CIFAR


def write_pickle(path: Path, entry, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry, protocol=protocol))


def write_cifar(folder: Path, name: str, count: int = 3, seed: int = 0) -> dict:
    """Small batches in the original python-pickle format; returns the arrays written."""
    info = data.dataset_info(name)
    rng = np.random.default_rng(seed)
    written = {"train": ([], []), "test": ([], [])}
    for spec in info.files:
        if spec.name in ("batches.meta", "meta"):
            names = [f"class{i}".encode() for i in range(info.num_classes)]
            key = b"label_names" if name == "cifar10" else b"fine_label_names"
            write_pickle(folder / spec.name, {key: names, b"num_vis": 3072})
            continue
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, info.num_classes, count)]
        entry = {
            b"batch_label": spec.name.encode(),
            info.label_key.encode(): labels,
            b"data": pixels,
            b"filenames": [f"img{i}.png".encode() for i in range(count)],
        }
        if name == "cifar100":
            entry[b"coarse_labels"] = [label // 5 for label in labels]
        write_pickle(folder / spec.name, entry, protocol=2 if name == "cifar10" else 5)
        split = "test" if spec.name.startswith("test") else "train"
        written[split][0].append(pixels)
        written[split][1].extend(labels)
    return {
        split: (np.concatenate(images).reshape(-1, 3, 32, 32), np.array(labels))
        for split, (images, labels) in written.items()
    }


def accept_files(monkeypatch, name: str, folder: Path, archive: Path | None = None) -> None:
    """Make the test-written files 'official' by putting their md5s into DATASETS."""
    info = data.dataset_info(name)
    files = tuple(
        replace(spec, md5=md5_of(folder / spec.name)) if (folder / spec.name).is_file() else spec
        for spec in info.files
    )
    changes: dict = {"files": files}
    if archive is not None:
        changes["archive"] = replace(info.archive, md5=md5_of(archive),
                                     size=archive.stat().st_size)
    monkeypatch.setitem(data.DATASETS, name, replace(info, **changes))


@pytest.mark.parametrize("layout", ["nested", "folder", "direct"])
def test_cifar10_from_pickles(monkeypatch, tmp_path, layout):
    folder = {
        "nested": tmp_path / "cifar10" / "cifar-10-batches-py",
        "folder": tmp_path / "cifar-10-batches-py",
        "direct": tmp_path,
    }[layout]
    written = write_cifar(folder, "cifar10")
    accept_files(monkeypatch, "cifar10", folder)
    train = data.load("cifar10", "train", tmp_path)
    test = data.load("cifar10", "test", tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (3, 3, 32, 32) and test.labels.dtype == torch.int64
    assert np.array_equal(train.images.numpy(), written["train"][0])
    assert train.labels.tolist() == written["train"][1].tolist()
    assert np.array_equal(test.images.numpy(), written["test"][0])
    assert [check.status for check in data.verify("cifar10", tmp_path)] == ["ok"] * 7


def test_cifar100_from_pickles(monkeypatch, tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    written = write_cifar(folder, "cifar100", count=40)
    accept_files(monkeypatch, "cifar100", folder)
    train = data.load("cifar100", "train", tmp_path)
    assert train.images.shape == (40, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), written["train"][0])
    assert train.labels.tolist() == written["train"][1].tolist()
    assert int(train.labels.max()) > 9
    assert len(data.load("cifar100", "test", tmp_path)) == 40


def test_cifar_md5_is_checked(monkeypatch, tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(folder, "cifar10")
    with pytest.raises(QsnnError, match=r"test_batch is corrupt \(expected md5 "
                                        r"40351d587109b95175f43aff81a1287e; found \d+ bytes"):
        data.load("cifar10", "test", tmp_path)


def test_cifar_real_md5s_are_torchvisions():
    info = data.dataset_info("cifar100")
    assert info.file("train").md5 == "16019d7e3df5f24257cddd939b257f8d"
    assert data.dataset_info("cifar10").file("test_batch").md5 == "40351d587109b95175f43aff81a1287e"


BAD_BATCHES = {
    "float data": ({b"data": np.zeros((2, 3072)), b"labels": [0, 1]},
                   "b'data' must be a uint8 array of shape (N, 3072), found float64 (2, 3072)"),
    "wrong width": ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
                    "b'data' must be a uint8 array of shape (N, 3072), found uint8 (2, 100)"),
    "no labels": ({b"data": np.zeros((2, 3072), np.uint8)},
                  "needs keys b'data' and b'labels', found b'data'"),
    "label count": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]},
                    "b'labels' must be 2 integers, found int64 (1,)"),
    "label range": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
                    "labels in {path} range over 0..10 but cifar10 has classes 0..9"),
    "not a dict": ([1, 2, 3], "is not a cifar10 python batch (it holds a list, not a dict)"),
    "foreign global": (os.system, "cannot unpickle it: refusing to load posix.system"),
    "garbage": (b"not a pickle at all", "cannot unpickle it"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_cifar_wrong_structure(monkeypatch, tmp_path, case):
    entry, expected = BAD_BATCHES[case]
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir()
    if isinstance(entry, bytes):
        path.write_bytes(entry)
    else:
        write_pickle(path, entry)
    accept_files(monkeypatch, "cifar10", path.parent)
    with pytest.raises(QsnnError) as error:
        data.load("cifar10", "test", tmp_path)
    message = str(error.value)
    assert expected.format(path=path) in message
    assert message.startswith("cifar10 test: ") and "\n" not in message
    assert "qsnn data download cifar10" in message


# --------------------------------------------------------------------------- downloading


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www; records the paths asked for."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}/",
                          requests=requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def mirrors(server, shared_datasets):
    """good/: the real MNIST files; wrong/: a short train-images and a flipped train-labels."""
    (server.root / "good").symlink_to(shared_datasets / "mnist")
    wrong = server.root / "wrong"
    wrong.mkdir()
    (wrong / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"x" * 98)
    labels = bytearray((shared_datasets / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes())
    labels[100] ^= 0x01
    (wrong / "train-labels-idx1-ubyte.gz").write_bytes(bytes(labels))
    server.wrong_labels_md5 = hashlib.md5(bytes(labels)).hexdigest()
    return server


def test_download_falls_through_404_and_bad_bytes(mirrors, tmp_path):
    target = tmp_path / "data"
    where = data.download("mnist", target, progress=False,
                          mirrors=[mirrors.url + "missing/", mirrors.url + "wrong",
                                   mirrors.url + "good/"])
    assert where == target / "mnist"
    assert {p.name: md5_of(p) for p in where.iterdir()} == {
        name: md5 for name, (md5, _) in MNIST_FILES.items()
    }
    assert no_temp_files(target)
    assert mirrors.requests[:3] == [
        "/missing/train-images-idx3-ubyte.gz", "/wrong/train-images-idx3-ubyte.gz",
        "/good/train-images-idx3-ubyte.gz",
    ]
    assert len(data.load("mnist", "train", target)) == 60000

    mirrors.requests.clear()
    assert data.download("mnist", target, progress=False, mirrors=[mirrors.url]) == where
    assert mirrors.requests == []


def test_download_md5_mismatch_leaves_nothing(mirrors, shared_datasets, tmp_path):
    folder = copy_files(shared_datasets / "mnist", tmp_path / "data" / "mnist",
                        ["train-images-idx3-ubyte.gz"])
    with pytest.raises(QsnnError) as error:
        data.download("mnist", tmp_path / "data", progress=False, mirrors=[mirrors.url + "wrong/"])
    url = mirrors.url + "wrong/train-labels-idx1-ubyte.gz"
    assert str(error.value) == (
        f"could not download mnist's train-labels-idx1-ubyte.gz: {url}: md5 "
        f"{mirrors.wrong_labels_md5}, expected d53e105ee54ea40749a09fcbcd1e9432; check the "
        f"connection, give other mirrors (--mirror URL), or copy the file into {folder} by hand"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_download_all_mirrors_fail(mirrors, tmp_path):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()
    with pytest.raises(QsnnError) as error:
        data.download("mnist", tmp_path / "data", progress=False, mirrors=[
            mirrors.url + "missing/", mirrors.url + "wrong/", f"http://127.0.0.1:{port}/",
        ])
    message = str(error.value)
    assert message.startswith("could not download mnist's train-images-idx3-ubyte.gz: ")
    assert f"{mirrors.url}missing/train-images-idx3-ubyte.gz: HTTP 404 File not found; " in message
    assert f"{mirrors.url}wrong/train-images-idx3-ubyte.gz: sent 100 bytes, expected 9912422; " \
        in message
    assert f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz: " in message
    assert "\n" not in message
    assert not list((tmp_path / "data" / "mnist").iterdir())


def test_download_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(QsnnError, match=r"train-images-idx3-ubyte.gz: .*timed out"):
            data.download("mnist", tmp_path, progress=False, mirrors=[url], timeout=0.2)
    finally:
        silent.close()


def test_download_from_file_urls_and_repair(shared_datasets, tmp_path):
    folder = copy_files(shared_datasets / "mnist", tmp_path / "mnist",
                        ["t10k-images-idx3-ubyte.gz"])
    broken = folder / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:10])
    source = (shared_datasets / "mnist").as_uri()
    assert source.startswith("file:///")
    data.download("mnist", tmp_path, progress=False, mirrors=[str(tmp_path / "nowhere"), source])
    assert all(check.ok for check in data.verify("mnist", tmp_path))
    assert md5_of(broken) == MNIST_FILES["t10k-images-idx3-ubyte.gz"][0]
    assert no_temp_files(tmp_path)


def test_download_never_overwrites_another_datasets_files(shared_datasets, tmp_path, capsys):
    from qsnn.cli import main

    flat = copy_files(shared_datasets / "fashion-mnist", tmp_path / "flat", list(MNIST_FILES))
    before = {p.name: md5_of(p) for p in flat.iterdir()}
    source = (shared_datasets / "mnist").as_uri()
    with pytest.raises(QsnnError) as refused:
        data.download("mnist", flat, progress=False, mirrors=[source])
    assert str(refused.value) == (
        f"{flat / 'train-images-idx3-ubyte.gz'} is fashion-mnist's file, not mnist's; give --data-dir the folder "
        "above the datasets (mnist goes into its own mnist/ folder there)"
    )
    assert {p.name: md5_of(p) for p in flat.iterdir()} == before
    with pytest.raises(QsnnError, match="mirrors must be a list of base URLs, got the single string"):
        data.download("mnist", tmp_path / "other", progress=False, mirrors=source)
    # the command line takes mirrors too
    assert main(["data", "download", "mnist", "--data-dir", str(tmp_path / "cli"), "--mirror", source, "--quiet"]) == 0
    assert all(check.ok for check in data.verify("mnist", tmp_path / "cli"))
    assert f"mnist: ready in {tmp_path / 'cli' / 'mnist'}" in capsys.readouterr().out
    assert main(["data", "verify", "mnist", "--mirror", source]) == 2
    assert capsys.readouterr().err == "qsnn: error: --mirror is for `qsnn data download`, not `qsnn data verify`\n"
    assert main(["data", "list", "--mirror", source]) == 2
    assert capsys.readouterr().err == "qsnn: error: --mirror is for `qsnn data download`, not `qsnn data list`\n"
    raw = tmp_path / "raw"  # un-gzipped files of another dataset count as its files too
    raw.mkdir()
    for name in MNIST_FILES:
        (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress((shared_datasets / "mnist" / name).read_bytes()))
    with pytest.raises(QsnnError, match="is mnist's file, not fashion-mnist's"):
        data.download("fashion-mnist", raw, progress=False, mirrors=[(shared_datasets / "fashion-mnist").as_uri()])
    assert sorted(p.name for p in raw.iterdir()) == sorted(name.removesuffix(".gz") for name in MNIST_FILES)


def test_one_download_of_a_dataset_at_a_time(shared_datasets, tmp_path, monkeypatch):
    """A download waits while another process holds the dataset's folder, then finds the
    files that process fetched (and fetches nothing: here it has no mirror); with no time
    left to wait it says who holds the folder."""
    from qsnn.data import fetch
    from qsnn.io import folder_lock

    folder = tmp_path / "mnist"
    holding, proceed = threading.Event(), threading.Event()

    def other_process():  # (a lock is per process and not re-entrant: the thread stands for another one)
        with folder_lock(folder, option="--data-dir"):
            holding.set()
            proceed.wait(10)
            time.sleep(0.3)  # (the download below is waiting by now)
            copy_files(shared_datasets / "mnist", folder, list(MNIST_FILES))

    monkeypatch.setattr(fetch, "DOWNLOAD_WAIT", 0.0)
    thread = threading.Thread(target=other_process)
    thread.start()
    holding.wait(10)
    with pytest.raises(QsnnError) as refused:
        data.download("mnist", tmp_path, progress=False, mirrors=[])
    assert str(refused.value) == (
        f"{folder} is in use by another qsnn process (pid {os.getpid()}); wait for it to finish or choose another --data-dir"
    )
    monkeypatch.setattr(fetch, "DOWNLOAD_WAIT", 30.0)
    proceed.set()
    assert data.download("mnist", tmp_path, progress=False, mirrors=[]) == folder
    thread.join()
    assert all(check.ok for check in data.verify("mnist", tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_FILES)  # (no lock file left)


def test_download_skips_valid_files_in_read_only_root(shared_datasets):
    assert data.download("mnist", shared_datasets, mirrors=[], progress=False) == \
        shared_datasets / "mnist"


def make_archive(path: Path, folder: Path, extra: list[tarfile.TarInfo] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        for member in extra:
            tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)
    return path


def test_download_and_extract_cifar10(server, monkeypatch, tmp_path):
    source = tmp_path / "src" / "cifar-10-batches-py"
    written = write_cifar(source, "cifar10")
    archive = make_archive(server.root / "cifar-10-python.tar.gz", source)
    accept_files(monkeypatch, "cifar10", source, archive)
    target = tmp_path / "data"
    where = data.download("cifar10", target, progress=False,
                          mirrors=[server.url + "missing/", server.url])
    assert where == target / "cifar10" / "cifar-10-batches-py"
    assert md5_of(target / "cifar10" / "cifar-10-python.tar.gz") == md5_of(archive)
    assert sorted(p.name for p in (target / "cifar10").iterdir()) == [
        "cifar-10-batches-py", "cifar-10-python.tar.gz",
    ]
    test = data.load("cifar10", "test", target)
    assert np.array_equal(test.images.numpy(), written["test"][0])
    checks = data.verify("cifar10", target)
    assert len(checks) == 8 and all(check.ok for check in checks)
    assert checks[-1].path.name == "cifar-10-python.tar.gz"

    server.requests.clear()
    data.download("cifar10", target, progress=False, mirrors=[server.url])
    assert server.requests == []


def test_cifar_archive_present_but_not_extracted(monkeypatch, tmp_path):
    source = tmp_path / "src" / "cifar-100-python"
    write_cifar(source, "cifar100")
    archive = make_archive(tmp_path / "data" / "cifar100" / "cifar-100-python.tar.gz", source)
    accept_files(monkeypatch, "cifar100", source, archive)
    with pytest.raises(QsnnError, match=r"\(it extracts the archive .*cifar-100-python.tar.gz\)"):
        data.load("cifar100", "train", tmp_path / "data")
    data.download("cifar100", tmp_path / "data", mirrors=[], progress=False)
    assert len(data.load("cifar100", "train", tmp_path / "data")) == 3


@pytest.mark.parametrize(("member", "why"), [
    ("../evil", "path leaves the folder"),
    ("/tmp/evil", "absolute path"),
    ("cifar-10-batches-py/link", "not a plain file or folder"),
    ("elsewhere/file", "outside cifar-10-batches-py/"),
])
def test_unsafe_archive_is_refused(monkeypatch, tmp_path, member, why):
    source = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar(source, "cifar10")
    info = tarfile.TarInfo(member)
    if member.endswith("link"):
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        info.size = 4
    archive = make_archive(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz", source, [info])
    accept_files(monkeypatch, "cifar10", source, archive)
    with pytest.raises(QsnnError) as error:
        data.download("cifar10", tmp_path / "data", mirrors=[], progress=False)
    assert str(error.value) == (
        f"{archive}: refusing to extract {member!r} ({why}); delete {archive} and run "
        "`qsnn data download cifar10` again"
    )
    assert sorted(p.name for p in (tmp_path / "data" / "cifar10").iterdir()) == [
        "cifar-10-python.tar.gz"
    ]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "data" / "evil").exists()


def test_cifar_archive_with_wrong_member(monkeypatch, tmp_path):
    source = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar(source, "cifar10")
    accept_files(monkeypatch, "cifar10", source)
    write_cifar(source, "cifar10", seed=1)  # the archive now holds other batches
    archive = make_archive(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz", source)
    info = data.dataset_info("cifar10")
    monkeypatch.setitem(data.DATASETS, "cifar10", replace(
        info, archive=replace(info.archive, md5=md5_of(archive), size=archive.stat().st_size)))
    with pytest.raises(QsnnError, match=r"its cifar-10-batches-py/data_batch_1 is corrupt"):
        data.download("cifar10", tmp_path / "data", mirrors=[], progress=False)
    assert not (tmp_path / "data" / "cifar10" / "cifar-10-batches-py").exists()
    assert no_temp_files(tmp_path / "data")


# --------------------------------------------------------------------------- preprocessing


def random_cifar(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)


def test_prepare_mnist_is_identity():
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    assert data.prepare(images, "mnist", train=True) is images
    assert data.prepare(images, "fashion-mnist", train=False) is images


def test_prepare_cifar_test_is_centre_crop():
    images = random_cifar(8)
    out = data.prepare(images, "cifar10", train=False)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.uint8
    assert torch.equal(out, images[:, :, 4:28, 4:28])


def _documented_windows(source: torch.Tensor, seed: int, size: int) -> tuple:
    """The training windows prepare() draws with a generator seeded ``seed``, replayed from
    its documented draws (top rows, left columns, then flips; offsets 0..8): (the size x
    size windows of ``source``, flipped where drawn, top, left, flip)."""
    count = len(source)
    generator = torch.Generator().manual_seed(seed)
    top = torch.randint(0, 9, (count,), generator=generator)
    left = torch.randint(0, 9, (count,), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    windows = []
    for i in range(count):
        window = source[i, :, top[i]:top[i] + size, left[i]:left[i] + size]
        windows.append(window.flip(-1) if flip[i] else window)
    return windows, top, left, flip


def test_prepare_cifar_train_crop_and_flip():
    images = random_cifar(64)
    first = data.prepare(images, "cifar100", train=True, generator=torch.Generator().manual_seed(3))
    again = data.prepare(images, "cifar100", train=True, generator=torch.Generator().manual_seed(3))
    other = data.prepare(images, "cifar100", train=True, generator=torch.Generator().manual_seed(4))
    assert first.shape == (64, 3, 24, 24) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)

    windows, top, left, flip = _documented_windows(images, seed=3, size=24)
    for i in range(64):
        assert torch.equal(first[i], windows[i])
    assert 0 < int(flip.sum()) < 64 and len(set(top.tolist())) > 1 and len(set(left.tolist())) > 1


def test_prepare_cifar_train_outputs_are_windows():
    images = random_cifar(12, seed=5)
    out = data.prepare(images, "cifar10", train=True, generator=torch.Generator().manual_seed(0))
    for i in range(12):
        crops = [images[i, :, y:y + 24, x:x + 24] for y in range(9) for x in range(9)]
        windows = crops + [crop.flip(-1) for crop in crops]
        assert sum(torch.equal(out[i], window) for window in windows) == 1


def test_prepare_at_full_size_shifts_and_flips_cifar_and_keeps_test_images_whole():
    """A network that reads CIFAR's whole 32x32 images (a model of one's own): test images
    unchanged, training images shifted by up to 4 pixels (zero-filled) and flipped."""
    images = random_cifar(12, seed=6)
    assert data.prepare(images, "cifar10", train=False, shape=(3, 32, 32)) is images
    mnist = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    assert data.prepare(mnist, "mnist", train=True, shape=(1, 28, 28)) is mnist
    out = data.prepare(images, "cifar10", train=True, generator=torch.Generator().manual_seed(0), shape=(3, 32, 32))
    assert out.shape == (12, 3, 32, 32) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    windows, *_ = _documented_windows(padded, seed=0, size=32)
    for i in range(12):
        assert torch.equal(out[i], windows[i])
    with pytest.raises(QsnnError) as refused:
        data.prepare(images, "cifar10", train=False, shape=(3, 28, 28))
    assert str(refused.value) == (
        "cifar10's images go to networks of input 3x24x24 or 3x32x32, not 3x28x28; give a network made for them"
    )


def test_prepare_rejects_bad_input():
    with pytest.raises(QsnnError, match=r"prepare\('cifar10'\) needs uint8 images of shape "
                                        r"\(N, 3, 32, 32\), got torch.float32 \(2, 3, 32, 32\)"):
        data.prepare(torch.zeros(2, 3, 32, 32), "cifar10", train=False)
    with pytest.raises(QsnnError, match=r"got torch.uint8 \(2, 1, 32, 32\)"):
        data.prepare(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "mnist", train=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prepare_on_cuda_matches_cpu():
    images = random_cifar(16)
    cpu = data.prepare(images, "cifar10", train=True, generator=torch.Generator().manual_seed(1))
    gpu = data.prepare(images.cuda(), "cifar10", train=True,
                       generator=torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


def test_to_float():
    pixels = torch.tensor([0, 1, 128, 255], dtype=torch.uint8)
    x = data.to_float(pixels)
    assert x.dtype == torch.float32
    assert torch.equal(x, pixels.float() / 255)
    assert (float(x[0]), float(x[-1])) == (0.0, 1.0)


def test_batches_in_order():
    images = random_cifar(10)
    dataset = data.ImageSet("cifar10", "test", images, torch.arange(10))
    out = list(data.batches(dataset, 4))
    assert [len(labels) for _, _, labels in out] == [4, 4, 2]
    pixels = torch.cat([p for p, _, _ in out])
    assert torch.equal(pixels, images[:, :, 4:28, 4:28])
    assert all(torch.equal(x, p.float() / 255) and x.dtype == torch.float32 for p, x, _ in out)
    assert torch.cat([labels for _, _, labels in out]).tolist() == list(range(10))

    train_a = [p for p, _, _ in data.batches(dataset, 3, train=True,
                                             generator=torch.Generator().manual_seed(2))]
    train_b = [p for p, _, _ in data.batches(dataset, 3, train=True,
                                             generator=torch.Generator().manual_seed(2))]
    assert [p.shape[0] for p in train_a] == [3, 3, 3, 1]
    assert all(torch.equal(a, b) for a, b in zip(train_a, train_b))
    with pytest.raises(QsnnError, match="batch size must be a positive whole number, got 0"):
        next(data.batches(dataset, 0))
