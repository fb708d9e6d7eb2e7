"""Train a quantized (or full-precision) network: Adam, cross-entropy, the papers' schedule.

Two recipes (``TrainConfig.recipe``). "qsnn", the default: a short schedule, Adam with
lr 1e-3 divided by 10 after half the epochs, batch 200 for MNIST-like data and 128 for
CIFAR (random 24x24 crops and flips, done by :func:`qsnn.data.prepare`). "paper": the
original code's (:func:`paper_recipe`, ``TrainConfig.paper``), whose CIFAR nets also get
the colour augmentation and per-image standardization (:func:`qsnn.data.paper_augment`,
the input stage "standardize" of :func:`qsnn.data.model_input`).

Runs are reproducible bit for bit on the CPU: the weights are initialised from ``seed``,
and every epoch's shuffle and every step's augmentation come from generators seeded by
(seed, epoch[, step]), never from global random state. A run stopped anywhere (Ctrl-C,
SIGTERM, a crash between checkpoints) and resumed with ``resume=True`` skips the steps it
had done and ends with exactly the weights of a run that was never stopped.

Files in ``out_dir`` (only rank 0 writes them):

* ``config.json``   the configuration, the resolved network and provenance
* ``metrics.json``, ``metrics.csv``   one row per epoch
* ``last.pt``       a checkpoint at every epoch end, every ``checkpoint_interval`` seconds
                    and on interruption; ``resume=True`` continues from it
* ``best.pt``       the weights with the best test accuracy so far

An epoch's end is written in that order: ``best.pt`` (if it improved), ``last.pt``, then
the metrics, so the metrics never hold an epoch that ``last.pt`` lacks: a run whose
checkpoint could not be written (a full disk) resumes from the epoch the metrics end at.
The run holds ``out_dir`` locked (:func:`qsnn.io.folder_lock`, rank 0): a second run into
the same folder is refused while it lasts.

Distributed: run under ``torchrun`` (``torchrun --nproc_per_node 2 -m qsnn.training ...``);
each step's batch is split across the processes, which average their gradients
(DistributedDataParallel, gloo on the CPU, nccl on GPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import pickle
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from qsnn import data as qdata
from qsnn.distributed import Dist as _Dist
from qsnn.distributed import setup as _setup_distributed
from qsnn.errors import QsnnError, check_device, check_seed, integer_in
from qsnn.io import (
    RESUME,
    RUN_AGAIN,
    folder_lock,
    provenance,
    read_json,
    torch_save,
    write_csv,
    write_json,
)
from qsnn.models import NetSpec, QuantizedNet
from qsnn.notation import resolve_net
from qsnn.quantization import SAME, Precision, bound_text, parse_bound

CHECKPOINT_FORMAT = "qsnn-checkpoint"
CHECKPOINT_VERSION = 1

# Options that may change when a run is resumed; every other one must match the saved run.
RESUMABLE_CHANGES = ("epochs", "data_dir", "device", "checkpoint_interval")


# ----------------------------------------------------------------------------- config


RECIPES = ("qsnn", "paper")
NO_DECAY = 1_000_000  # an lr_decay_epoch no run reaches: a constant learning rate
CIFAR_DATA = ("cifar10", "cifar100")
# The original code's epochs per preset (their scripts and READMEs; ALGORITHMS.md §1)
PAPER_EPOCHS = {
    "nsd-lenet": 150, "nsd-fmnist-mlp": 150, "nsd-fmnist-lenet": 100, "nsd-cifar10-cnn1": 200,
    "nsd-cifar10-cnn2": 200, "sg-lenet": 200, "sg-vgg": 400, "int-lenet": 200, "int-cifar10-cnn1": 200,
}


def paper_recipe(net: str, dataset: str) -> dict[str, Any]:
    """How the original code trains ``net`` on ``dataset``: CIFAR with batch 200, Adam at
    1e-3 divided by 10 half-way, and the CIFAR input pipeline (random 24x24 crop, flip,
    brightness 63, contrast 0.2-1.8, per-image standardization; the test images centre-
    cropped and standardized); MNIST-like data with batch 200 (128 for SG's LeNet) and a
    constant Adam lr of 1e-4. Epochs: the preset's (200 for a net given in notation)."""
    _, preset = resolve_net(net)
    epochs = PAPER_EPOCHS.get(preset.name if preset else "", 200)
    if dataset in CIFAR_DATA:
        return {"epochs": epochs, "batch_size": 200, "lr": 1e-3}
    batch = 128 if preset is not None and preset.name == "sg-lenet" else 200
    return {"epochs": epochs, "batch_size": batch, "lr": 1e-4}


@dataclass
class TrainConfig:
    """What to train and how. ``net`` is notation (``20C5-P2-50C5-P2-500``) or a preset."""

    net: str
    dataset: str
    k: int = 1
    B: int | None = None
    ternary: bool = False
    full_precision: bool = False
    encoding_k: int | str = SAME
    encoding_B: int | str | None = SAME
    epochs: int = 3
    batch_size: int | None = None  # None: 200 for MNIST-like data, 128 for CIFAR
    lr: float = 1e-3
    lr_decay_epoch: int | None = None  # None: epochs // 2 (at least 1)
    seed: int = 0
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    device: str = "cpu"
    checkpoint_interval: float = 300.0
    recipe: str = "qsnn"  # "paper": trained as the original code trains (see paper_recipe)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise QsnnError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if isinstance(self.B, str):
            self.B = parse_bound(self.B)
        if isinstance(self.encoding_k, str) and self.encoding_k != SAME:
            try:
                self.encoding_k = int(self.encoding_k)
            except ValueError:
                raise QsnnError(
                    f"encoding k must be an integer from 0 to 4 or 'same', got {self.encoding_k!r}"
                ) from None
        if isinstance(self.encoding_B, str) and self.encoding_B != SAME:
            self.encoding_B = parse_bound(self.encoding_B)
        self.precision()  # checks k, B and the encoding values
        for name in ("epochs", "batch_size", "lr_decay_epoch", "train_limit", "test_limit"):
            value = getattr(self, name)
            minimum = 0 if name == "lr_decay_epoch" else 1
            if value is not None and not integer_in(value, minimum):
                raise QsnnError(f"{name} must be an integer >= {minimum}, got {value!r}")
        check_seed(self.seed)
        if not (isinstance(self.lr, int | float) and 0 < self.lr <= 10):
            raise QsnnError(f"lr must be a number above 0 and at most 10 (the papers: 1e-3), got {self.lr!r}")
        if self.batch_size is not None and self.batch_size > MAX_BATCH:
            raise QsnnError(f"batch_size must be at most {MAX_BATCH:,}, got {self.batch_size:,}")
        if not self.checkpoint_interval >= 0:
            raise QsnnError(
                f"checkpoint_interval must be >= 0 seconds, got {self.checkpoint_interval!r}"
            )

    def precision(self) -> Precision:
        return Precision(
            k=self.k,
            B=self.B,
            ternary=self.ternary,
            full_precision=self.full_precision,
            encoding_k=self.encoding_k,
            encoding_B=self.encoding_B,
        )

    def spec(self) -> NetSpec:
        """The network to build: notation resolved, input shape, classes and padding of the data."""
        notation, _ = resolve_net(self.net)
        info = qdata.dataset_info(self.dataset)
        spec = NetSpec(
            notation=notation,
            input_shape=tuple(info.input_shape),
            num_classes=info.num_classes,
            padding=info.default_padding,
            precision=self.precision(),
            input_stage="standardize" if self.recipe == "paper" and self.dataset in CIFAR_DATA else "pixels",
        )
        spec.plan()  # raises a QsnnError if the net does not fit the input
        return spec

    def check_memory(self, spec: NetSpec) -> None:
        """Refuse a batch whose activations alone would not fit in this machine's memory."""
        activations = sum(math.prod(layer.out_shape) for layer in spec.plan().layers)
        needed = 4 * 4 * activations * self.resolved_batch_size()  # float32: values, gradients, masks
        total = _physical_memory()
        if total and needed > total // 2:
            raise QsnnError(
                f"a batch of {self.resolved_batch_size():,} images of {spec.notation} needs about "
                f"{needed / 2**30:.1f} GB of activations, over half of this machine's {total / 2**30:.1f} GB; "
                "use a smaller --batch-size"
            )

    def resolved_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 200 if qdata.dataset_info(self.dataset).input_shape[0] == 1 else 128

    def resolved_lr_decay_epoch(self) -> int:
        if self.lr_decay_epoch is not None:
            return self.lr_decay_epoch
        return max(1, self.epochs // 2)

    def lr_at(self, epoch: int) -> float:
        """The papers' schedule: lr, then lr / 10 from epoch ``lr_decay_epoch`` (0-based) on."""
        return self.lr if epoch < self.resolved_lr_decay_epoch() else self.lr / 10

    @classmethod
    def paper(cls, net: str, dataset: str, **given: Any) -> TrainConfig:
        """A config with the original code's recipe (:func:`paper_recipe`) for what
        ``given`` leaves out (None values count as left out)."""
        chosen = {key: value for key, value in given.items() if value is not None}
        values = {**paper_recipe(net, dataset), **chosen}
        if "lr_decay_epoch" not in chosen:  # CIFAR: lr / 10 half-way; MNIST-like: never
            values["lr_decay_epoch"] = None if dataset in CIFAR_DATA else NO_DECAY
        return cls(net=net, dataset=dataset, recipe="paper", **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


# ----------------------------------------------------------------------------- checkpoints


def _unwrap(model: nn.Module) -> QuantizedNet:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _plain(value: Any) -> Any:
    """Plain containers and built-in scalars (str subclasses such as torch.__version__ become
    str), so that the checkpoint loads with ``torch.load(weights_only=True)``."""
    if isinstance(value, dict):
        return type(value)((key, _plain(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, str) and type(value) is not str:
        return str(value)
    return value


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, config: TrainConfig | None, *, retry: str = RUN_AGAIN,
    **state: Any,
) -> None:
    """Write a checkpoint atomically: format, NetSpec, config, weights, provenance and ``state``.

    ``state`` holds the rest (optimizer state, epoch, step, metrics...); it must be plain
    data and tensors so that the file loads with ``torch.load(weights_only=True)``.
    A failed write (a full disk...) is a one-line QsnnError naming ``path`` that ends in
    ``retry`` (what to do once the cause is fixed).
    """
    net = _unwrap(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": net.signature(),
        "config": None if config is None else config.to_dict(),
        "model": net.state_dict(),
        "provenance": _plain(provenance(None if config is None else config.seed)),
        **_plain(state),
    }
    torch_save(path, payload, retry=retry)


def _spec_key(spec: NetSpec) -> dict[str, Any]:
    """What makes two specs build the same network ('same' encoding values resolved)."""
    precision = spec.precision
    key: dict[str, Any] = {
        "net": spec.notation,
        "input": "x".join(str(s) for s in spec.input_shape),
        "classes": spec.num_classes,
        "padding": spec.padding,
        "full_precision": precision.full_precision,
        "ternary": precision.ternary,
    }
    if not precision.full_precision:
        encoding_k, encoding_b = precision.block(0)
        key.update(
            k=precision.k,
            B=bound_text(precision.B),
            encoding_k=encoding_k,
            encoding_B=bound_text(encoding_b),
        )
    return key


def _differences(saved: dict[str, Any], asked: dict[str, Any]) -> tuple[str, str]:
    keys = [key for key in {**saved, **asked} if saved.get(key) != asked.get(key)]
    return (
        ", ".join(f"{key}={saved[key]}" for key in keys if key in saved),
        ", ".join(f"{key}={asked[key]}" for key in keys if key in asked),
    )


def _read_checkpoint(path: Path, device: str | torch.device) -> dict[str, Any]:
    """torch.load with weights_only=True; every failure becomes a one-line QsnnError."""
    if not path.exists():
        raise QsnnError(f"checkpoint {path} does not exist; check the path or train a net first")
    if not path.is_file():
        raise QsnnError(f"checkpoint {path} is not a file; give the path of a .pt file")
    fix = "give a last.pt or best.pt written by qsnn's training"
    if not zipfile.is_zipfile(path):
        raise QsnnError(f"{path} is not a qsnn checkpoint (not a PyTorch archive); {fix}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise QsnnError(
            f"{path} is not a qsnn checkpoint (it holds Python objects that qsnn checkpoints "
            f"never contain, so it is not loaded); {fix}"
        ) from None
    except Exception as error:  # torch raises many types for damaged files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise QsnnError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {reason[:200]}); "
            f"the file is damaged or incomplete, {fix}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        what = f"a dict with keys {sorted(map(str, payload))[:6]}" if isinstance(
            payload, dict
        ) else f"a {type(payload).__name__}"
        raise QsnnError(f"{path} is not a qsnn checkpoint (it holds {what}); {fix}")
    version = payload.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise QsnnError(
            f"checkpoint {path} has format version {version!r}, newer than this qsnn reads "
            f"({CHECKPOINT_VERSION}); upgrade qsnn"
        )
    return payload


def _check_finite(model: nn.Module, state: dict, config: TrainConfig, out_dir: Path) -> None:
    """Stop a diverged training before it writes a checkpoint: the epoch's loss or the
    weights are no longer finite (checked where checkpoints are written, not every step)."""
    finite = bool(torch.isfinite(state["running"]["loss_sum"])) and not model.non_finite()
    if not finite:
        raise QsnnError(
            f"training diverged in epoch {state['epoch'] + 1} (the loss or the weights are no longer finite at "
            f"lr {config.lr:g}); train again with a lower --lr (the checkpoints in {out_dir} are from before)"
        )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    spec_check: NetSpec | None = None,
    device: str | torch.device = "cpu",
) -> tuple[QuantizedNet, dict[str, Any]]:
    """Rebuild the network a checkpoint holds (in eval mode) and return it with the checkpoint.

    ``spec_check``: the network the caller expects; a checkpoint of another network raises
    a :class:`QsnnError` saying what it holds and what was asked.
    """
    path = Path(path)
    payload = _read_checkpoint(path, device)
    try:
        spec = NetSpec.from_dict(payload["spec"])
        model = QuantizedNet(spec)  # (builds the plan: checks the notation against the shapes)
    except (KeyError, TypeError, ValueError, QsnnError) as error:
        raise QsnnError(
            f"checkpoint {path} has a damaged network description ({error}); retrain it"
        ) from None
    if spec_check is not None and _spec_key(spec) != _spec_key(spec_check):
        held, asked = _differences(_spec_key(spec), _spec_key(spec_check))
        raise QsnnError(
            f"checkpoint {path} holds a net with {held} but {asked} was asked; "
            "give the options it was trained with (see its config.json) or another checkpoint"
        )
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no weights"
        raise QsnnError(
            f"checkpoint {path}: its weights do not fit its own network {spec.describe()} "
            f"({reason[:200]}); the file is damaged, retrain it"
        ) from None
    model.check_finite(f"checkpoint {path}")
    model.to(device).eval()
    return model, payload


# ----------------------------------------------------------------------------- data and steps


def _generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers, e.g. (seed, epoch): independent of global state."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % 2**63
    return torch.Generator().manual_seed(value)


def _batch(
    data: qdata.ImageSet,
    index: torch.Tensor,
    *,
    train: bool,
    generator: torch.Generator | None,
    device: torch.device,
    stage: str = "pixels",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``index`` of ``data`` as (the network's input x, labels) on ``device``;
    augmented if train. ``stage``: the network's input stage; a standardizing network
    trains on the CIFAR code's pipeline (crop, flip, brightness, contrast, standardization)."""
    pixels = qdata.prepare(data.images[index], data.name, train=train, generator=generator)
    if train and stage == "standardize":
        pixels = qdata.paper_augment(pixels, generator)
    x = qdata.model_input(pixels, stage).to(device, non_blocking=True)
    labels = data.labels[index].to(device, non_blocking=True)
    return x, labels


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on cross-entropy; returns (summed loss, number correct), both detached."""
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        correct = (logits.argmax(1) == labels).sum()
    return loss.detach() * labels.numel(), correct


@torch.no_grad()
def _count_correct(
    model: nn.Module, data: qdata.ImageSet, index: torch.Tensor, batch_size: int,
    device: torch.device,
) -> int:
    """How many of the images ``index`` the net classifies right (eval mode, then restored)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(index), batch_size):
        x, labels = _batch(
            data, index[start : start + batch_size], train=False, generator=None, device=device,
            stage=net.spec.input_stage,
        )
        correct += (net(x).argmax(1) == labels).sum()
    net.train(was_training)
    return int(correct)


def evaluate(
    model: nn.Module,
    data: qdata.ImageSet,
    *,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
) -> float:
    """Test accuracy in % (eval mode, no gradients); ``device`` defaults to the model's."""
    if len(data) == 0:
        raise QsnnError(f"cannot evaluate on an empty {data.name} {data.split} set")
    if device is None:
        device = next(_unwrap(model).parameters()).device
    index = torch.arange(len(data))
    return 100.0 * _count_correct(model, data, index, batch_size, torch.device(device)) / len(data)


# ----------------------------------------------------------------------------- run plumbing


MAX_BATCH = 65536


def _physical_memory() -> int:
    """This machine's memory in bytes (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _setup_device(name: str, ddp: _Dist) -> torch.device:
    device = check_device(name)
    if device.type == "cuda":
        if ddp.active:
            device = torch.device("cuda", ddp.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        # Reproducible resumes matter more here than the few percent cudnn autotuning gives.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after SIGINT/SIGTERM once ``last.pt`` holds everything done so far."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"training stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _StopSignals:
    """The first SIGINT/SIGTERM asks the loop to stop at the next step; a second one stops now.

    Stopping between steps (never inside ``optimizer.step``) is what makes the state saved
    on interruption a consistent one. Signals received while a checkpoint is being written
    wait until it is written.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals wait until the block (writing a checkpoint, say) is done."""
        before, self.deferring = self.deferring, True
        try:
            yield
        finally:
            self.deferring = before

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None or self.deferring:
            self.signum = self.signum or signum
            return
        raise KeyboardInterrupt


def _broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's batch-norm statistics (each rank updated them on its shard)."""
    for buffer in _unwrap(model).buffers():
        dist.broadcast(buffer, 0)


def _any_rank(flag: bool, ddp: _Dist, device: torch.device) -> bool:
    """True when ``flag`` is true on any process (all processes must call this)."""
    if not ddp.active:
        return flag
    shared = torch.tensor([float(flag)], device=device)
    dist.all_reduce(shared)
    return bool(shared > 0)


FIELDS_ADDED = {"recipe": "qsnn"}  # config fields a run written before them had, in effect


def _check_resumable(saved: dict[str, Any], config: TrainConfig, out_dir: Path) -> None:
    asked = config.to_dict()

    def same(key: str) -> bool:
        if key == "lr_decay_epoch" and asked[key] is None:  # (the run keeps its own)
            return True
        if key == "net" and isinstance(saved.get(key), str):  # a preset and its own notation are one net
            try:
                return resolve_net(saved[key])[0] == resolve_net(asked[key])[0]
            except QsnnError:
                return False
        return saved.get(key, FIELDS_ADDED.get(key)) == asked[key]

    keys = [key for key in asked if key not in RESUMABLE_CHANGES and not same(key)]
    if keys:
        was = ", ".join(f"{key}={saved.get(key)!r}" for key in keys)
        now = ", ".join(f"{key}={asked[key]!r}" for key in keys)
        raise QsnnError(
            f"cannot resume {out_dir}: it was trained with {was} but {now} was asked; "
            "resume with the same options (only epochs, device, data_dir and the checkpoint "
            "interval may change) or give another output directory"
        )


def _fresh_running(device: torch.device) -> dict[str, Any]:
    """An epoch's running sums (kept on the device: no synchronisation per step)."""
    return {
        "loss_sum": torch.zeros((), dtype=torch.float64, device=device),
        "correct": torch.zeros((), dtype=torch.int64, device=device),
        "seen": 0,
        "seconds": 0.0,
    }


def _summary(out_dir: Path, state: dict[str, Any], *, already_done: bool) -> dict[str, Any]:
    history = state["metrics"]
    last = history[-1] if history else {}
    return {
        "out_dir": str(out_dir),
        "epochs": state["epoch"],
        "already_done": already_done,
        "final_test_acc": last.get("test_acc"),
        "final_train_acc": last.get("train_acc"),
        "final_train_loss": last.get("train_loss"),
        "best_test_acc": state["best_acc"],
        "best_epoch": state["best_epoch"],
        "seconds": sum(row["seconds"] for row in history),
    }


# ----------------------------------------------------------------------------- training


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    save_rank_weights: bool = False,
    retry: str = RESUME,
) -> dict[str, Any]:
    """Train ``config`` into ``out_dir`` (see the module docstring) and return a summary.

    ``resume``: continue from ``out_dir/last.pt`` exactly where it stopped.
    ``on_step(epoch, step)``: called after every finished step (0-based epoch, steps done).
    ``save_rank_weights``: every process also writes ``rank{r}_weights.pt`` at the end.
    ``retry``: how the message of a checkpoint that could not be written (a full disk)
    says to continue, e.g. "resume with --resume".
    A KeyboardInterrupt or SIGTERM saves ``last.pt`` and is then re-raised. Another run
    that holds ``out_dir`` (:func:`qsnn.io.folder_lock`) makes it a QsnnError.
    """
    out_dir = Path(out_dir)
    ddp = _setup_distributed(config.device)
    try:
        with contextlib.ExitStack() as hold:  # (the folder lock, released when the run ends)
            summary = _train(config, out_dir, ddp, resume, progress, on_step, save_rank_weights, retry, hold)
            if ddp.owns_group:  # every rank done before any closes its connections (gloo aborts a
                dist.barrier()  # process whose peer hangs up while it still reads)
        return summary
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _lock_out_dir(out_dir: Path, ddp: _Dist, device: torch.device, hold: contextlib.ExitStack) -> None:
    """Rank 0 locks ``out_dir`` for the run (into ``hold``); every rank learns whether it
    could, so that a refused run ends on all of them instead of leaving them waiting."""
    refusal = None
    if ddp.main:
        try:
            hold.enter_context(folder_lock(out_dir))
        except QsnnError as error:
            refusal = str(error)
    if ddp.active:  # (a collective: every rank calls it, at the same point)
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0, device=device)
        refusal = shared[0]
    if refusal is not None:
        raise QsnnError(refusal)


def _write_metrics(out_dir: Path, metrics: list[dict[str, Any]], retry: str) -> None:
    write_json(out_dir / "metrics.json", metrics, retry=retry)
    write_csv(out_dir / "metrics.csv", metrics, retry=retry)


def _sync_metrics(out_dir: Path, metrics: list[dict[str, Any]], retry: str) -> None:
    """Make the metrics files say what ``last.pt`` says (a run stopped after writing its
    checkpoint but before its metrics, by a full disk say, is behind)."""
    try:
        same = read_json(out_dir / "metrics.json") == metrics and (out_dir / "metrics.csv").is_file()
    except (OSError, QsnnError):
        same = False
    if not same:
        _write_metrics(out_dir, metrics, retry)


def _train(
    config: TrainConfig,
    out_dir: Path,
    ddp: _Dist,
    resume: bool,
    progress: bool,
    on_step: Callable[[int, int], None] | None,
    save_rank_weights: bool,
    retry: str,
    hold: contextlib.ExitStack,
) -> dict[str, Any]:
    spec = config.spec()
    config.check_memory(spec)
    device = _setup_device(config.device, ddp)
    batch_size = config.resolved_batch_size()
    per_rank = batch_size // ddp.world
    if per_rank < 1:
        raise QsnnError(f"batch size {batch_size} is smaller than the {ddp.world} processes")
    global_batch = per_rank * ddp.world
    _lock_out_dir(out_dir, ddp, device, hold)
    show = progress and ddp.main

    def log(message: str) -> None:
        if show:
            tqdm.write(message, file=sys.stderr)

    # -- the run's state: fresh, or from last.pt
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume:
        if not last_path.exists():
            raise QsnnError(
                f"nothing to resume: {last_path} does not exist; run without resume to start"
            )
        model, checkpoint = load_checkpoint(last_path, device=device)
        saved = checkpoint.get("config") or {}
        _check_resumable(saved, config, out_dir)
        if model.spec != spec:  # the same options, another net: a preset's layer list has changed since
            raise QsnnError(
                f"{last_path} holds {model.spec.describe()}, but these options now build {spec.describe()}; "
                "train into another folder"
            )
        if config.lr_decay_epoch is None:  # the schedule already followed, also when the run is extended
            kept = saved.get("lr_decay_epoch")
            if kept is None:
                kept = dataclasses.replace(config, epochs=saved.get("epochs", config.epochs)).resolved_lr_decay_epoch()
            config = dataclasses.replace(config, lr_decay_epoch=kept)
            if saved.get("epochs") != config.epochs:
                log(f"extending to {config.epochs} epochs: lr / 10 from epoch {kept + 1} on, as this run has followed")
        state = {key: checkpoint[key] for key in ("epoch", "step", "best_acc", "best_epoch")}
        state["metrics"] = list(checkpoint["metrics"])
        state["running"] = dict(checkpoint["running"])  # its sums are tensors on device
        if ddp.main:
            _sync_metrics(out_dir, state["metrics"], retry)
        if state["step"] > 0 and checkpoint.get("world_size", 1) != ddp.world:
            raise QsnnError(
                f"cannot resume {out_dir} in the middle of an epoch with {ddp.world} processes: "
                f"it was stopped while running with {checkpoint.get('world_size', 1)}; "
                "use that many"
            )
        if state["epoch"] >= config.epochs:
            log(
                f"{out_dir} is already done: {state['epoch']} epochs, best test accuracy "
                f"{state['best_acc']:.2f}% (epoch {state['best_epoch']})"
            )
            return _summary(out_dir, state, already_done=True)
        log(f"resuming {out_dir} at epoch {state['epoch'] + 1}, step {state['step']}")
    else:
        if last_path.exists():
            raise QsnnError(
                f"{out_dir} already holds a run (last.pt); resume it or give another "
                "output directory"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = QuantizedNet(spec)
        model.to(device)
        checkpoint = None
        state = {
            "epoch": 0, "step": 0, "best_acc": -1.0, "best_epoch": 0, "metrics": [],
            "running": _fresh_running(device),
        }

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    ddp_model: nn.Module = model
    if ddp.active:
        ids = [device.index] if device.type == "cuda" else None
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    train_set = qdata.load(config.dataset, "train", config.data_dir)
    test_set = qdata.load(config.dataset, "test", config.data_dir)
    if config.train_limit is not None:
        train_set = train_set.subset(config.train_limit)
    if config.test_limit is not None:
        test_set = test_set.subset(config.test_limit)
    steps = len(train_set) // global_batch
    if steps == 0:
        raise QsnnError(
            f"{len(train_set)} training images do not fill one batch of {global_batch}; "
            "lower the batch size or raise the train limit"
        )

    if ddp.main:
        _write_config(out_dir, config, spec, device, ddp.world, global_batch, resumed=resume)
        log(
            f"training {spec.describe()} on {config.dataset}: {len(train_set)} images, "
            f"{steps} steps of {global_batch} per epoch, {config.epochs} epochs, {device}"
            + (f", {ddp.world} processes" if ddp.active else "")
        )

    def save_last() -> None:
        """Checkpoint everything needed to continue exactly from here (rank 0 only)."""
        _check_finite(model, state, config, out_dir)
        if ddp.main:
            save_checkpoint(
                last_path, model, config, retry=retry,
                optimizer=optimizer.state_dict(), world_size=ddp.world,
                **{key: state[key] for key in ("epoch", "step", "best_acc", "best_epoch")},
                metrics=state["metrics"], running=state["running"],
            )

    with _StopSignals() as stop:
        at_boundary = True  # False while a step may have half-updated the weights
        try:
            while state["epoch"] < config.epochs:
                epoch = state["epoch"]
                lr = config.lr_at(epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                order = torch.randperm(len(train_set), generator=_generator(config.seed, epoch))
                running = state["running"]  # loss and correct summed over the epoch so far
                base_seconds, started = running["seconds"], time.monotonic()
                last_save = started
                bar = tqdm(
                    total=steps, initial=state["step"], desc=f"epoch {epoch + 1}/{config.epochs}",
                    disable=not show, leave=False, dynamic_ncols=True, file=sys.stderr,
                )

                ddp_model.train()
                for step in range(state["step"], steps):
                    start = step * global_batch + ddp.rank * per_rank
                    x, labels = _batch(
                        train_set, order[start : start + per_rank], train=True,
                        generator=_generator(config.seed, epoch, step, ddp.rank), device=device,
                        stage=spec.input_stage,
                    )
                    at_boundary = False
                    step_loss, step_correct = train_step(ddp_model, optimizer, x, labels)
                    save_now = time.monotonic() - last_save >= config.checkpoint_interval
                    stop_now = stop.signum is not None
                    if ddp.active:  # sum the statistics and agree on saving or stopping
                        flags = [float(save_now and ddp.main), float(stop_now)]
                        shared = torch.cat([
                            torch.stack([step_loss.double(), step_correct.double()]),
                            torch.tensor(flags, dtype=torch.float64, device=device),
                        ])
                        dist.all_reduce(shared)
                        step_loss, step_correct = shared[0], shared[1].long()
                        save_now, stop_now = bool(shared[2] > 0), bool(shared[3] > 0)
                    running["loss_sum"] += step_loss
                    running["correct"] += step_correct
                    running["seen"] += global_batch
                    running["seconds"] = base_seconds + time.monotonic() - started
                    state["step"] = step + 1
                    at_boundary = True

                    bar.update(1)
                    if show and (step % 10 == 0 or step + 1 == steps):
                        bar.set_postfix(
                            loss=f"{float(running['loss_sum']) / running['seen']:.4f}",
                            acc=f"{100 * int(running['correct']) / running['seen']:.2f}%",
                        )
                    if on_step is not None:
                        on_step(epoch, step + 1)
                    if stop_now:
                        raise TrainingInterrupted(stop.signum or signal.SIGTERM)
                    if save_now and step + 1 < steps:
                        with stop.deferred():
                            save_last()
                        last_save = time.monotonic()
                bar.close()

                # -- end of epoch: evaluate, record, checkpoint
                _check_finite(model, state, config, out_dir)
                if ddp.active:
                    _broadcast_buffers(model)
                    shard = torch.arange(ddp.rank, len(test_set), ddp.world)
                    hits = torch.tensor(
                        [_count_correct(model, test_set, shard, 1000, device)], device=device
                    )
                    dist.all_reduce(hits)
                    test_acc = 100.0 * int(hits) / len(test_set)
                else:
                    test_acc = evaluate(model, test_set, device=device)
                row = {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": float(running["loss_sum"]) / running["seen"],
                    "train_acc": 100.0 * int(running["correct"]) / running["seen"],
                    "test_acc": test_acc,
                    "seconds": base_seconds + time.monotonic() - started,
                }
                improved = test_acc > state["best_acc"]
                with stop.deferred():  # the files and the state move on together
                    state["metrics"].append(row)
                    if improved:
                        state["best_acc"], state["best_epoch"] = test_acc, epoch + 1
                    state.update(epoch=epoch + 1, step=0, running=_fresh_running(device))
                    if ddp.main:  # checkpoints first: the metrics never hold an epoch last.pt lacks
                        if improved:  # (before last.pt, whose best_epoch names it)
                            save_checkpoint(
                                best_path, model, config, retry=retry, epoch=epoch + 1, test_acc=test_acc,
                                metrics=state["metrics"],
                            )
                        save_last()
                        _write_metrics(out_dir, state["metrics"], retry)
                log(
                    f"epoch {epoch + 1}/{config.epochs}: lr {lr:g}, loss {row['train_loss']:.4f}, "
                    f"train {row['train_acc']:.2f}%, test {test_acc:.2f}%"
                    + (" (best)" if improved else "") + f", {row['seconds']:.1f} s"
                )
                if _any_rank(stop.signum is not None, ddp, device):
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM)
        except KeyboardInterrupt:
            if at_boundary:
                with stop.deferred():
                    save_last()
                log(f"stopped; {last_path} holds the run: resume it to continue")
            raise

    if save_rank_weights:
        torch_save(out_dir / f"rank{ddp.rank}_weights.pt", model.state_dict(), retry=retry)
    return _summary(out_dir, state, already_done=False)


def _write_config(
    out_dir: Path, config: TrainConfig, spec: NetSpec, device: torch.device, world: int,
    global_batch: int, *, resumed: bool,
) -> None:
    """config.json: the config, what it resolved to, and the provenance of every start."""
    path = out_dir / "config.json"
    starts = []
    if resumed and path.exists():
        try:
            starts = list(read_json(path).get("starts", []))
        except (OSError, QsnnError, AttributeError):
            starts = []
    starts.append({"resumed": resumed, "device": str(device), "world_size": world,
                   "provenance": provenance(config.seed)})
    write_json(path, {
        "config": config.to_dict(),
        "resolved": {
            "notation": spec.notation,
            "batch_size": global_batch,
            "lr_decay_epoch": config.resolved_lr_decay_epoch(),
            "params": spec.plan().params,
        },
        "spec": spec.to_dict(),
        "provenance": provenance(config.seed),
        "starts": starts,
    })


# ----------------------------------------------------------------------------- command line


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() == "none" else int(text)


def add_network_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """What to train and how (the options `qsnn train`, `qsnn run` and `qsnn sweep` share):
    the net, the data, its precision, the recipe and the schedule; None where not given."""
    defaults = TrainConfig(net="500", dataset="mnist")
    parser.add_argument("--net", required=required, help="notation (20C5-P2-50C5-P2-500) or a preset (qsnn nets)")
    parser.add_argument("--dataset", required=required, help="mnist, fashion-mnist, cifar10 or cifar100")
    parser.add_argument("--k", type=int, default=None, help=f"quantization level 0..4 (default {defaults.k})")
    parser.add_argument("--B", default=None, help="upper bound: a positive integer or none (default)")
    parser.add_argument("--ternary", action="store_true", help="ternary weights in the hidden blocks")
    parser.add_argument(
        "--fp32", "--full-precision", dest="full_precision", action="store_true",
        help="full-precision baseline: plain ReLU, no quantizer",
    )
    parser.add_argument("--encoding-k", default=SAME, help="k of the first block (default: same as --k)")
    parser.add_argument("--encoding-B", default=SAME, help="B of the first block (default: same as --B)")
    parser.add_argument(
        "--recipe", choices=RECIPES, default="qsnn",
        help="qsnn: a short schedule (the defaults below); paper: as the original code trains (its epochs, "
        "batch, lr and schedule, and for CIFAR its colour augmentation and per-image standardization), "
        "for what is not given",
    )
    parser.add_argument("--epochs", type=int, default=None, help=f"default {defaults.epochs}")
    parser.add_argument("--batch-size", type=_optional_int, default=None, help="default 200 (MNIST-like) or 128 (CIFAR)")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {defaults.lr:g})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-limit", type=_optional_int, default=None, help="only the first N training images")


def add_arguments(parser: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    """The options of :class:`TrainConfig`, plus --out, --resume and --quiet."""
    defaults = TrainConfig(net="500", dataset="mnist")
    add_network_options(parser, required=True)
    parser.add_argument(
        "--lr-decay-epoch", type=_optional_int, default=None,
        help="epoch from which lr is divided by 10 (default: half the epochs)",
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $QSNN_DATA or the cache)")
    parser.add_argument("--test-limit", type=_optional_int, default=None, help="only the first N test images")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--checkpoint-interval", type=float, default=defaults.checkpoint_interval,
        help="seconds between mid-epoch checkpoints (default 300)",
    )
    parser.add_argument("--out", required=out_required, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--save-rank-weights", action="store_true",
        help="every process writes OUT/rank{r}_weights.pt at the end (for checks)",
    )


def check_precision_options(args: argparse.Namespace) -> None:
    """--fp32 with options that quantize (given explicitly: their defaults are None or
    "same") is a contradiction, not something to ignore."""
    if args.full_precision:
        quantizing = [option for option, given in (
            ("--k", args.k is not None), ("--B", args.B not in (None, "none")), ("--ternary", args.ternary),
            ("--encoding-k", args.encoding_k != SAME), ("--encoding-B", args.encoding_B != SAME),
        ) if given]
        if quantizing:
            raise QsnnError(f"--fp32 trains a full-precision baseline; drop {', '.join(quantizing)} (they quantize)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    check_precision_options(args)
    values = dict(
        k=TrainConfig.k if args.k is None else args.k,
        B="none" if args.B is None else args.B, ternary=args.ternary,
        full_precision=args.full_precision, encoding_k=args.encoding_k,
        encoding_B=args.encoding_B, seed=args.seed,
        data_dir=args.data_dir, train_limit=args.train_limit, test_limit=args.test_limit,
        device=args.device, checkpoint_interval=args.checkpoint_interval,
    )
    schedule = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay_epoch=args.lr_decay_epoch)
    if getattr(args, "recipe", "qsnn") == "paper":
        return TrainConfig.paper(args.net, args.dataset, **values, **schedule)
    given = {key: value for key, value in schedule.items() if value is not None}
    return TrainConfig(net=args.net, dataset=args.dataset, **values, **given)


def default_out_dir(config: TrainConfig) -> Path:
    """runs/<dataset>-<net>-<precision>, e.g. runs/mnist-20C5-P2-50C5-P2-500-k1-Bnone."""
    if config.full_precision:
        tag = "fp32"
    else:
        tag = f"k{config.k}-B{bound_text(config.B)}" + ("-ternary" if config.ternary else "")
    return Path("runs") / f"{config.dataset}-{config.net}-{tag}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qsnn.training",
        description="Train a quantized network (torchrun-compatible for data parallelism).",
    )
    add_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Train as the options say and print a one-line summary; shared by `qsnn train`."""
    config = config_from_args(args)
    out = args.out or default_out_dir(config)
    try:
        summary = train(
            config, out, resume=args.resume, progress=not args.quiet,
            save_rank_weights=args.save_rank_weights,
        )
    except TrainingInterrupted as interrupt:
        print(f"qsnn: interrupted; resume with --resume --out {out}", file=sys.stderr)
        return 128 + interrupt.signum
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best_test_acc"]
        print(
            f"done: {summary['epochs']} epochs in {summary['seconds']:.0f} s, final test accuracy "
            f"{summary['final_test_acc']:.2f}%, best {best:.2f}% (epoch {summary['best_epoch']}); "
            f"checkpoints in {out}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m qsnn.training`` (and ``torchrun -m qsnn.training``) entry point."""
    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args)
    except QsnnError as error:
        print(f"qsnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
