"""Checkpoints: the weights, optimizer and progress of a run, written atomically.

:func:`save_checkpoint` writes a versioned dictionary of plain values (no pickled qsnn
objects, so checkpoints load with ``weights_only``); :func:`load_checkpoint` reads one
back into a :class:`~qsnn.net.models.QuantizedNet`, refusing with one line a file that
is not a qsnn checkpoint, is corrupt, or does not match the net it is asked for.
A model of one's own (``qsnn train --model``) is saved with its factory (``"factory"``,
format version 2): :func:`checkpoint_model` rebuilds either kind for a resumed run, and
:func:`own_model_weights` reads its weights, or those of a plain ``state_dict()`` file,
for ``qsnn convert --model``.
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
from qsnn.train.model import ModelSpec, Spec, build_model

CHECKPOINT_FORMAT = "qsnn-checkpoint"
CHECKPOINT_VERSION = 2  # the newest this reads: a net in notation is written as 1, a model of one's own as 2


# ----------------------------------------------------------------------------- checkpoints


def unwrapped(model: nn.Module) -> nn.Module:
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
    spec: Spec | None = None, **state: Any,
) -> None:
    """Write a checkpoint atomically: format, spec, config, weights, provenance and ``state``.

    ``spec``: what ``model`` is (default: a QuantizedNet's own NetSpec); a model of one's
    own is saved with its :class:`ModelSpec` and its factory.
    ``state`` holds the rest (optimizer state, epoch, step, metrics...); it must be plain
    data and tensors so that the file loads with ``torch.load(weights_only=True)``.
    A failed write (a full disk...) is a one-line QsnnError naming ``path`` that ends in
    ``retry`` (what to do once the cause is fixed).
    """
    net = unwrapped(model)
    if spec is None:
        if not isinstance(net, QuantizedNet):
            raise TypeError("save_checkpoint needs the ModelSpec of a model that is not a QuantizedNet")
        spec = net.spec
    own = isinstance(spec, ModelSpec)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 2 if own else 1,
        "spec": spec.to_dict(),
        **({"factory": spec.factory} if own else {}),
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
    _check_version(path, payload)
    return payload


def _check_version(path: Path, payload: dict[str, Any]) -> None:
    version = payload.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise QsnnError(
            f"checkpoint {path} has format version {version!r}, newer than this qsnn reads "
            f"({CHECKPOINT_VERSION}); upgrade qsnn"
        )


def _non_finite(model: nn.Module) -> list[str]:
    """The parameters and buffers of any model holding NaN or infinity."""
    return [
        name for name, tensor in unwrapped(model).state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def check_finite(model: nn.Module, state: dict, config: TrainConfig, out_dir: Path) -> None:
    """Stop a diverged training before it writes a checkpoint: the epoch's loss or the
    weights are no longer finite (checked where checkpoints are written, not every step)."""
    finite = bool(torch.isfinite(state["running"]["loss_sum"])) and not _non_finite(model)
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
    a :class:`QsnnError` saying what it holds and what was asked. A checkpoint of a model
    of one's own is refused in one line that says how to convert it.
    """
    path = Path(path)
    payload = _read_checkpoint(path, device)
    factory = payload.get("factory")
    if factory is not None:
        dataset = (payload.get("config") or {}).get("dataset", "DATASET")
        raise QsnnError(
            f"checkpoint {path} holds a model of your own ({factory}), not a net in the papers' notation; convert "
            f"it with qsnn convert {path} --model {factory} --dataset {dataset} --scheme SCHEME"
        )
    model = _notation_net(path, payload, spec_check)
    model.to(device).eval()
    return model, payload


def _notation_net(path: Path, payload: dict[str, Any], spec_check: NetSpec | None = None) -> QuantizedNet:
    """The QuantizedNet of a checkpoint of a net in notation, its weights checked."""
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
    return model


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A qsnn checkpoint's contents, as written (one-line errors for anything else)."""
    return _read_checkpoint(Path(path), device)


def checkpoint_model(path: str | os.PathLike, payload: dict[str, Any], spec: Spec, seed: int) -> nn.Module:
    """The network of ``spec`` with the weights of ``payload``, read from ``path``: a net
    in notation (the one the checkpoint describes) or a model of ``spec``'s factory (made
    under ``seed``); the kind of network must be the checkpoint's."""
    held = payload.get("factory")
    asked = spec.factory if isinstance(spec, ModelSpec) else None
    if held != asked:
        was = f"the model {held}" if held is not None else "a net in the papers' notation"
        now = f"the model {asked}" if asked is not None else "a net in the papers' notation"
        raise QsnnError(f"checkpoint {path} holds {was}, not {now}; give the one it was trained from or another "
                        "checkpoint")
    if not isinstance(spec, ModelSpec):
        return _notation_net(Path(path), payload)
    model = build_model(spec, seed)
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200] or "no weights"
        raise QsnnError(f"checkpoint {path}: its weights do not fit the model {spec.factory} ({reason}); the model "
                        "has changed since it was trained, or the file is damaged") from None
    broken = _non_finite(model)
    if broken:
        raise QsnnError(f"checkpoint {path} holds non-finite values in {', '.join(broken[:3])} (a diverged training); "
                        "retrain it with a lower --lr")
    return model


def own_model_weights(path: str | os.PathLike, factory: str) -> tuple[dict[str, Any], str | None]:
    """The state dict of a model of one's own in ``path`` and the dataset it was trained
    on (None where the file does not say): a qsnn checkpoint of ``factory`` (``qsnn train
    --model``), or the plain ``torch.save(model.state_dict(), path)``. A checkpoint of
    another factory or of a net in notation is refused in one line."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise QsnnError(f"cannot read the weights {path}: {str(error).splitlines()[0]}") from None
    dataset = None
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        _check_version(path, state)
        held = state.get("factory")
        if held is None:
            notation = (state.get("spec") or {}).get("notation")
            raise QsnnError(f"{path} is a qsnn checkpoint of the net {notation}, not of a model of your own; convert "
                            f"it without --model: qsnn convert {path} --scheme SCHEME")
        if held != factory:
            raise QsnnError(f"{path} was trained from the model {held}, not {factory}; give --model {held}")
        dataset = (state.get("config") or {}).get("dataset")
        state = state.get("model")
    if not isinstance(state, dict):
        raise QsnnError(f"{path} holds no state dict; save it with torch.save(model.state_dict(), path)")
    return state, dataset


def check_resumable(saved: dict[str, Any], config: TrainConfig, out_dir: Path) -> None:
    held = saved.get("model")
    if held != config.model:  # another model, or a net in notation and a model of one's own
        was = f"the model {held}" if held is not None else f"the net {saved.get('net')}"
        now = f"the model {config.model}" if config.model is not None else f"the net {config.net}"
        again = f"--model {held}" if held is not None else f"--net {saved.get('net')}"
        raise QsnnError(f"cannot resume {out_dir}: it holds a run of {was}, not {now}; resume it with {again} "
                        "or give another output directory")
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
    out_dir: Path, config: TrainConfig, spec: Spec, device: torch.device, world: int,
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
            **({"notation": spec.notation} if isinstance(spec, NetSpec) else {"model": spec.factory}),
            "batch_size": global_batch,
            "lr_decay_epoch": config.resolved_lr_decay_epoch(),
            "params": spec.plan().params if isinstance(spec, NetSpec) else spec.params,
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
