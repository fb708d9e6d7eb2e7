"""Train a quantized (or full-precision) network: Adam, cross-entropy, the papers' schedule.

Two recipes (``TrainConfig.recipe``). "qsnn", the default: a short schedule, Adam with
lr 1e-3 divided by 10 after half the epochs, batch 200 for MNIST-like data and 128 for
CIFAR (random 24x24 crops and flips, done by :func:`qsnn.data.transforms.prepare`). "paper": the
original code's (:func:`paper_recipe`, ``TrainConfig.paper``), whose CIFAR nets also get
the colour augmentation and per-image standardization (:func:`qsnn.data.transforms.paper_augment`,
the input stage "standardize" of :func:`qsnn.data.transforms.model_input`).

The network is a net in the papers' notation or a model of one's own (``model``,
``MODULE:FACTORY``: :class:`~qsnn.train.model.ModelSpec`), which reads the dataset's
images at full size (CIFAR 32x32, trained with flips and shifts of up to 4 pixels), x =
pixels / 255, as ``qsnn convert --model`` takes them; the loop is the same.

Runs are reproducible bit for bit on the CPU: the weights are initialised from ``seed``,
every epoch's shuffle and every step's augmentation come from generators seeded by
(seed, epoch[, step]), never from global random state, and each step runs with the global
random state seeded by (seed, epoch, step) (a model's dropout, say), restored after it. A run stopped anywhere (Ctrl-C,
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

Distributed: run under ``torchrun`` (``torchrun --nproc_per_node 2 -m qsnn.train ...``);
each step's batch is split across the processes, which average their gradients
(DistributedDataParallel, gloo on the CPU, nccl on GPUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from qsnn import data as qdata
from qsnn.distributed import Dist as _Dist
from qsnn.distributed import check_device
from qsnn.distributed import setup as _setup_distributed
from qsnn.errors import QsnnError
from qsnn.io import RESUME, folder_lock, read_json, write_csv, write_json
from qsnn.net.models import NetSpec
from qsnn.train.checkpoint import (
    check_finite,
    check_resumable,
    checkpoint_model,
    read_checkpoint,
    save_checkpoint,
    torch_save,
    unwrapped,
    write_config,
)
from qsnn.train.config import TrainConfig
from qsnn.train.model import Spec, build_model

# ----------------------------------------------------------------------------- data and steps


def _mix(*parts: int) -> int:
    """One seed from integers, e.g. (seed, epoch)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % 2**63
    return value


def _generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers, e.g. (seed, epoch): independent of global state."""
    return torch.Generator().manual_seed(_mix(*parts))


@contextlib.contextmanager
def _seeded(device: torch.device, *parts: int) -> Iterator[None]:
    """The global random state (the CPU's, and ``device``'s if a GPU) seeded from ``parts``
    for the block, then restored: what a model draws in its forward pass (dropout)
    depends on the step alone, so a resumed run draws it again exactly."""
    cuda = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        value = _mix(*parts)
        torch.default_generator.manual_seed(value)
        if cuda:
            torch.cuda.manual_seed(value)
        yield


def _input_of(spec: Spec | None, dataset: str) -> tuple[str, tuple[int, ...]]:
    """(input stage, input shape) of a network; a model without a spec reads the dataset's
    images at full size, x = pixels / 255."""
    if spec is None:
        return "pixels", tuple(qdata.dataset_info(dataset).stored_shape)
    return spec.input_stage, tuple(spec.input_shape)


def _batch(
    data: qdata.ImageSet,
    index: torch.Tensor,
    *,
    train: bool,
    generator: torch.Generator | None,
    device: torch.device,
    spec: Spec | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``index`` of ``data`` as (the network's input x, labels) on ``device``;
    augmented if train. ``spec``: the network (its input stage and shape); a standardizing
    network trains on the CIFAR code's pipeline (crop, flip, brightness, contrast,
    standardization)."""
    stage, shape = _input_of(spec, data.name)
    pixels = qdata.prepare(data.images[index], data.name, train=train, generator=generator, shape=shape)
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
    device: torch.device, spec: Spec | None,
) -> int:
    """How many of the images ``index`` the net classifies right (eval mode, then restored)."""
    net = unwrapped(model)
    was_training = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(index), batch_size):
        x, labels = _batch(
            data, index[start : start + batch_size], train=False, generator=None, device=device, spec=spec,
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
    spec: Spec | None = None,
) -> float:
    """Test accuracy in % (eval mode, no gradients); ``device`` defaults to the model's.
    ``spec``: what the model is (default: a QuantizedNet's own; for any other model, one
    that reads the images at full size, x = pixels / 255)."""
    if len(data) == 0:
        raise QsnnError(f"cannot evaluate on an empty {data.name} {data.split} set")
    if device is None:
        device = next(unwrapped(model).parameters()).device
    if spec is None:
        spec = getattr(unwrapped(model), "spec", None)
    index = torch.arange(len(data))
    return 100.0 * _count_correct(model, data, index, batch_size, torch.device(device), spec) / len(data)


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
    for buffer in unwrapped(model).buffers():
        dist.broadcast(buffer, 0)


def _any_rank(flag: bool, ddp: _Dist, device: torch.device) -> bool:
    """True when ``flag`` is true on any process (all processes must call this)."""
    if not ddp.active:
        return flag
    shared = torch.tensor([float(flag)], device=device)
    dist.all_reduce(shared)
    return bool(shared > 0)


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
    """The run, top to bottom: set up, start or resume, the epochs, the end."""
    run = _Run(config, out_dir, ddp, progress, on_step, retry)
    _lock_out_dir(out_dir, ddp, run.device, hold)
    if resume:
        done = run.resume()
        if done is not None:
            return done
    else:
        run.start()
    run.prepare()
    with _StopSignals() as stop:
        run.at_boundary = True  # False while a step may have half-updated the weights
        try:
            while run.state["epoch"] < run.config.epochs:
                lr = run.train_epoch(stop)
                run.finish_epoch(lr, stop)
                if _any_rank(stop.signum is not None, ddp, run.device):
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM)
        except KeyboardInterrupt:
            if run.at_boundary:
                with stop.deferred():
                    run.save_last()
                run.log(f"stopped; {run.last_path} holds the run: resume it to continue")
            raise
    if save_rank_weights:
        torch_save(out_dir / f"rank{ddp.rank}_weights.pt", run.model.state_dict(), retry=retry)
    return _summary(out_dir, run.state, already_done=False)


class _Run:
    """One training run's state: the model, optimizer, data and progress (``state``: epoch,
    step, best accuracy, metrics, and the running sums of the epoch in progress)."""

    def __init__(self, config: TrainConfig, out_dir: Path, ddp: _Dist, progress: bool,
                 on_step: Callable[[int, int], None] | None, retry: str) -> None:
        self.config, self.out_dir, self.ddp, self.on_step, self.retry = config, out_dir, ddp, on_step, retry
        self.spec = config.spec()
        config.check_memory(self.spec)
        self.device = _setup_device(config.device, ddp)
        batch_size = config.resolved_batch_size()
        self.per_rank = batch_size // ddp.world
        if self.per_rank < 1:
            raise QsnnError(f"batch size {batch_size} is smaller than the {ddp.world} processes")
        self.global_batch = self.per_rank * ddp.world
        self.show = progress and ddp.main
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.checkpoint: dict[str, Any] | None = None
        self.resumed = False
        self.at_boundary = True

    def log(self, message: str) -> None:
        if self.show:
            tqdm.write(message, file=sys.stderr)

    def start(self) -> None:
        """A fresh run: weights initialised from the seed."""
        if self.last_path.exists():
            raise QsnnError(
                f"{self.out_dir} already holds a run (last.pt); resume it or give another output directory"
            )
        self.model = build_model(self.spec, self.config.seed).to(self.device)
        self.state = {
            "epoch": 0, "step": 0, "best_acc": -1.0, "best_epoch": 0, "metrics": [],
            "running": _fresh_running(self.device),
        }

    def resume(self) -> dict[str, Any] | None:
        """Continue from last.pt; the summary instead when that run is already done."""
        config, out_dir, ddp = self.config, self.out_dir, self.ddp
        if not self.last_path.exists():
            raise QsnnError(f"nothing to resume: {self.last_path} does not exist; run without resume to start")
        checkpoint = read_checkpoint(self.last_path, device=self.device)
        saved = checkpoint.get("config") or {}
        check_resumable(saved, config, out_dir)
        self.model = checkpoint_model(self.last_path, checkpoint, self.spec, config.seed).to(self.device)
        if isinstance(self.spec, NetSpec) and self.model.spec != self.spec:  # a preset's layers changed since
            raise QsnnError(
                f"{self.last_path} holds {self.model.spec.describe()}, but these options now build "
                f"{self.spec.describe()}; train into another folder"
            )
        if config.lr_decay_epoch is None:  # the schedule already followed, also when the run is extended
            kept = saved.get("lr_decay_epoch")
            if kept is None:
                kept = dataclasses.replace(config, epochs=saved.get("epochs", config.epochs)).resolved_lr_decay_epoch()
            self.config = config = dataclasses.replace(config, lr_decay_epoch=kept)
            if saved.get("epochs") != config.epochs:
                self.log(f"extending to {config.epochs} epochs: lr / 10 from epoch {kept + 1} on, as this run has followed")
        state = {key: checkpoint[key] for key in ("epoch", "step", "best_acc", "best_epoch")}
        state["metrics"] = list(checkpoint["metrics"])
        state["running"] = dict(checkpoint["running"])  # its sums are tensors on device
        self.state, self.checkpoint, self.resumed = state, checkpoint, True
        if ddp.main:
            _sync_metrics(out_dir, state["metrics"], self.retry)
        if state["step"] > 0 and checkpoint.get("world_size", 1) != ddp.world:
            raise QsnnError(
                f"cannot resume {out_dir} in the middle of an epoch with {ddp.world} processes: "
                f"it was stopped while running with {checkpoint.get('world_size', 1)}; use that many"
            )
        if state["epoch"] >= config.epochs:
            self.log(
                f"{out_dir} is already done: {state['epoch']} epochs, best test accuracy "
                f"{state['best_acc']:.2f}% (epoch {state['best_epoch']})"
            )
            return _summary(out_dir, state, already_done=True)
        self.log(f"resuming {out_dir} at epoch {state['epoch'] + 1}, step {state['step']}")
        return None

    def prepare(self) -> None:
        """The optimizer (restored when resuming), the data-parallel wrapper and the data."""
        config, ddp = self.config, self.ddp
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        if self.checkpoint is not None:
            self.optimizer.load_state_dict(self.checkpoint["optimizer"])
        self.ddp_model: nn.Module = self.model
        if ddp.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_set = qdata.load(config.dataset, "train", config.data_dir)
        self.test_set = qdata.load(config.dataset, "test", config.data_dir)
        if config.train_limit is not None:
            self.train_set = self.train_set.subset(config.train_limit)
        if config.test_limit is not None:
            self.test_set = self.test_set.subset(config.test_limit)
        self.steps = len(self.train_set) // self.global_batch
        if self.steps == 0:
            raise QsnnError(
                f"{len(self.train_set)} training images do not fill one batch of {self.global_batch}; "
                "lower the batch size or raise the train limit"
            )
        if ddp.main:
            write_config(self.out_dir, config, self.spec, self.device, ddp.world, self.global_batch, resumed=self.resumed)
            self.log(
                f"training {self.spec.describe()} on {config.dataset}: {len(self.train_set)} images, "
                f"{self.steps} steps of {self.global_batch} per epoch, {config.epochs} epochs, {self.device}"
                + (f", {ddp.world} processes" if ddp.active else "")
            )

    def save_last(self) -> None:
        """Checkpoint everything needed to continue exactly from here (rank 0 only)."""
        check_finite(self.model, self.state, self.config, self.out_dir)
        if self.ddp.main:
            save_checkpoint(
                self.last_path, self.model, self.config, retry=self.retry, spec=self.spec,
                optimizer=self.optimizer.state_dict(), world_size=self.ddp.world,
                **{key: self.state[key] for key in ("epoch", "step", "best_acc", "best_epoch")},
                metrics=self.state["metrics"], running=self.state["running"],
            )

    def train_epoch(self, stop: _StopSignals) -> float:
        """The steps of the current epoch, from where it stands; returns its learning rate."""
        config, ddp, state = self.config, self.ddp, self.state
        epoch = state["epoch"]
        lr = config.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(self.train_set), generator=_generator(config.seed, epoch))
        running = state["running"]  # loss and correct summed over the epoch so far
        self.base_seconds, self.started = running["seconds"], time.monotonic()
        last_save = self.started
        bar = tqdm(
            total=self.steps, initial=state["step"], desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not self.show, leave=False, dynamic_ncols=True, file=sys.stderr,
        )
        self.ddp_model.train()
        for step in range(state["step"], self.steps):
            start = step * self.global_batch + ddp.rank * self.per_rank
            x, labels = _batch(
                self.train_set, order[start : start + self.per_rank], train=True,
                generator=_generator(config.seed, epoch, step, ddp.rank), device=self.device, spec=self.spec,
            )
            self.at_boundary = False
            with _seeded(self.device, config.seed, epoch, step, ddp.rank, 1):
                step_loss, step_correct = train_step(self.ddp_model, self.optimizer, x, labels)
            save_now = time.monotonic() - last_save >= config.checkpoint_interval
            stop_now = stop.signum is not None
            if ddp.active:  # sum the statistics and agree on saving or stopping
                flags = [float(save_now and ddp.main), float(stop_now)]
                shared = torch.cat([
                    torch.stack([step_loss.double(), step_correct.double()]),
                    torch.tensor(flags, dtype=torch.float64, device=self.device),
                ])
                dist.all_reduce(shared)
                step_loss, step_correct = shared[0], shared[1].long()
                save_now, stop_now = bool(shared[2] > 0), bool(shared[3] > 0)
            running["loss_sum"] += step_loss
            running["correct"] += step_correct
            running["seen"] += self.global_batch
            running["seconds"] = self.base_seconds + time.monotonic() - self.started
            state["step"] = step + 1
            self.at_boundary = True

            bar.update(1)
            if self.show and (step % 10 == 0 or step + 1 == self.steps):
                bar.set_postfix(
                    loss=f"{float(running['loss_sum']) / running['seen']:.4f}",
                    acc=f"{100 * int(running['correct']) / running['seen']:.2f}%",
                )
            if self.on_step is not None:
                self.on_step(epoch, step + 1)
            if stop_now:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            if save_now and step + 1 < self.steps:
                with stop.deferred():
                    self.save_last()
                last_save = time.monotonic()
        bar.close()
        return lr

    def test_accuracy(self) -> float:
        if not self.ddp.active:
            return evaluate(self.model, self.test_set, device=self.device, spec=self.spec)
        _broadcast_buffers(self.model)
        shard = torch.arange(self.ddp.rank, len(self.test_set), self.ddp.world)
        hits = torch.tensor([_count_correct(self.model, self.test_set, shard, 1000, self.device, self.spec)],
                            device=self.device)
        dist.all_reduce(hits)
        return 100.0 * int(hits) / len(self.test_set)

    def finish_epoch(self, lr: float, stop: _StopSignals) -> None:
        """Evaluate, record the epoch, and write best.pt, last.pt and the metrics."""
        state, running = self.state, self.state["running"]
        epoch = state["epoch"]
        check_finite(self.model, state, self.config, self.out_dir)
        test_acc = self.test_accuracy()
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": float(running["loss_sum"]) / running["seen"],
            "train_acc": 100.0 * int(running["correct"]) / running["seen"],
            "test_acc": test_acc,
            "seconds": self.base_seconds + time.monotonic() - self.started,
        }
        improved = test_acc > state["best_acc"]
        with stop.deferred():  # the files and the state move on together
            state["metrics"].append(row)
            if improved:
                state["best_acc"], state["best_epoch"] = test_acc, epoch + 1
            state.update(epoch=epoch + 1, step=0, running=_fresh_running(self.device))
            if self.ddp.main:  # checkpoints first: the metrics never hold an epoch last.pt lacks
                if improved:  # (before last.pt, whose best_epoch names it)
                    save_checkpoint(
                        self.best_path, self.model, self.config, retry=self.retry, spec=self.spec, epoch=epoch + 1,
                        test_acc=test_acc, metrics=state["metrics"],
                    )
                self.save_last()
                _write_metrics(self.out_dir, state["metrics"], self.retry)
        self.log(
            f"epoch {epoch + 1}/{self.config.epochs}: lr {lr:g}, loss {row['train_loss']:.4f}, "
            f"train {row['train_acc']:.2f}%, test {test_acc:.2f}%"
            + (" (best)" if improved else "") + f", {row['seconds']:.1f} s"
        )
