"""Training state after every epoch, so `--resume` continues a killed run exactly.

The state is a folder written under a temporary name and renamed (one atomic step, so a
kill -9 leaves the previous epoch's state whole): `state.json` (epoch, history, best epoch,
scheduler, optimizer hyperparameters, what run this is) and `tensors.safetensors` (weights,
best weights, optimizer moments, the torch RNG). No pickle, like the model checkpoint.
Batch order and augmentation draws are seeded by (seed, epoch), so restoring these is
enough for the resumed run to repeat the uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sclabel.errors import InputError
from sclabel.io.atomic import atomic_path


@dataclass
class TrainingState:
    epoch: int  # the last completed epoch
    history: list[dict]
    best_score: tuple[float, float]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    finished: bool = False


def save_state(
    path: Path, state: TrainingState, module, optimizer, scheduler, run: dict[str, Any]
) -> None:
    tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
    optim = optimizer.state_dict()
    for param, values in optim["state"].items():
        for key, value in values.items():
            tensors[f"optim.{param}.{key}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "run": run,
        "epoch": state.epoch,
        "history": state.history,
        "best_score": list(state.best_score),
        "best_epoch": state.best_epoch,
        "finished": state.finished,
        "param_groups": optim["param_groups"],
        "scheduler": scheduler.state_dict(),
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(_unshared(tensors), str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies safetensors accepts: a tensor sharing storage with one already kept (tied
    weights, e.g. BERT's decoder and word embeddings) is cloned; loading ties them again."""
    kept, storages = {}, set()
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        kept[key] = value.clone() if storage in storages else value
        storages.add(storage)
    return kept


def load_state(
    path: Path, module, optimizer, scheduler, run: dict[str, Any]
) -> TrainingState | None:
    """Restore module, optimizer, scheduler and RNG from `path`; None if there is no state."""
    if not (path / "state.json").exists():
        return None
    meta = json.loads((path / "state.json").read_text())
    run = json.loads(json.dumps(run))  # as saved: tuples (e.g. layer widths) become lists
    if meta["run"] != run:
        changed = sorted(k for k in run if meta["run"].get(k) != run[k])
        msg = (
            f"cannot resume from {path}: {', '.join(changed) or 'the run'} differ from the "
            "interrupted run; use the same data and options, or drop --resume to start again"
        )
        raise InputError(msg)
    tensors = load_file(str(path / "tensors.safetensors"))
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    moments: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param, name = key.split(".", 2)
            moments.setdefault(int(param), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return TrainingState(
        epoch=meta["epoch"],
        history=meta["history"],
        best_score=tuple(meta["best_score"]),
        best_epoch=meta["best_epoch"],
        best_state={k[5:]: v for k, v in tensors.items() if k.startswith("best.")},
        finished=meta["finished"],
    )
