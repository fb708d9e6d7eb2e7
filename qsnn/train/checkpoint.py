"""Checkpoints: the weights, optimizer and progress of a run, written atomically.

:func:`save_checkpoint` writes a versioned dictionary of plain values (no pickled qsnn
objects, so checkpoints load with ``weights_only``); :func:`load_checkpoint` reads one
back into a :class:`~qsnn.net.models.QuantizedNet`, refusing with one line a file that
is not a qsnn checkpoint, is corrupt, or does not match the net it is asked for.
:func:`check_resumable` decides whether a run may continue from a checkpoint.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qsnn.errors import QsnnError
from qsnn.io import (
    RUN_AGAIN,
    atomic_write,
    provenance,
    read_json,
    write_json,
)
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.notation import resolve_net
from qsnn.net.quantization import bound_text
from qsnn.train.config import FIELDS_ADDED, RESUMABLE_CHANGES, TrainConfig

CHECKPOINT_FORMAT = "qsnn-checkpoint"
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- checkpoints


def unwrapped(model: nn.Module) -> QuantizedNet:
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
    net = unwrapped(model)
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


def check_finite(model: nn.Module, state: dict, config: TrainConfig, out_dir: Path) -> None:
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


def check_resumable(saved: dict[str, Any], config: TrainConfig, out_dir: Path) -> None:
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


def write_config(
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


def torch_save(path: str | os.PathLike, obj: Any, *, retry: str = RUN_AGAIN) -> None:
    """``torch.save`` atomically; a failed write is the one-line :func:`write_error` of
    ``path``, not the RuntimeError torch makes of it."""
    with atomic_write(path, retry=retry) as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError:
            if handle.error is not None:  # what the write raised, which torch wrapped
                raise handle.error from None
            raise
