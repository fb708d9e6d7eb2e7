"""Datasets read from their original distribution files: find, check, download, prepare.

* MNIST and Fashion-MNIST: the gzip IDX files (the un-gzipped IDX files are accepted too).
* CIFAR-10 and CIFAR-100: the python-pickle batches that ``cifar-*-python.tar.gz`` extracts to.

Layout under a data root (see :func:`data_root`)::

    <root>/mnist/train-images-idx3-ubyte.gz ...        (also fashion-mnist/)
    <root>/cifar10/cifar-10-batches-py/data_batch_1 ... (the archive may sit in cifar10/)
    <root>/cifar100/cifar-100-python/train ...

A root that holds a dataset's files (or its extracted CIFAR folder) directly works too.
Every file is checked against the official size and md5 before it is read (once per
process); a missing, truncated or corrupt file is a one-line :class:`QsnnError` that says
how to fix it. The MNIST test set also ships inside the package (``qsnn/assets/mnist``)
and is used when the data root does not hold it.

Images stay uint8 at their stored size; :func:`prepare` applies the papers' preprocessing
(CIFAR: a random 24x24 crop and horizontal flip for training, the centre crop for testing)
and :func:`to_float` maps pixels to [0, 1] without mean subtraction.
"""

from __future__ import annotations

from qsnn.data.fetch import download
from qsnn.data.files import FileCheck, check_file, clear_cache, format_checks, verify
from qsnn.data.readers import embedded_mnist_test, load
from qsnn.data.registry import (
    DATASETS,
    SPLITS,
    DatasetInfo,
    FileSpec,
    ImageSet,
    data_root,
    dataset_info,
)
from qsnn.data.transforms import (
    INPUT_STAGES,
    batches,
    model_input,
    paper_augment,
    prepare,
    spiking_input,
    standardized,
    to_float,
)

__all__ = [
    "DATASETS",
    "INPUT_STAGES",
    "SPLITS",
    "DatasetInfo",
    "FileCheck",
    "FileSpec",
    "ImageSet",
    "batches",
    "check_file",
    "clear_cache",
    "data_root",
    "dataset_info",
    "download",
    "embedded_mnist_test",
    "format_checks",
    "load",
    "model_input",
    "paper_augment",
    "prepare",
    "spiking_input",
    "standardized",
    "to_float",
    "verify",
]
