"""The checkpoint directory: JSON + safetensors, never pickle.

config.json        format version, sclabel version, family, hyperparameters, preprocessing,
                   training options, SHA-256 of the weights and of genes.json/labels.json
model.safetensors  the weights (plus any extra tensors a family stores)
genes.json         the gene vocabulary
labels.json        class names, in output order
metrics.json       validation history and test metrics
split.csv          cell -> train/val/test (and group), to reproduce or export the split
README.md          the model card (sclabel.inference.card), Hugging Face layout; not read back
*.safetensors      optional extra tensors (e.g. augmentation.safetensors: donor-difference
                   vectors), listed with their SHA-256 under "extra_files" in config.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sclabel.errors import InputError
from sclabel.io.atomic import atomic_dir
from sclabel.io.digest import sha256_file

FORMAT_VERSION = 1
CHECKSUMMED = ("genes.json", "labels.json")  # besides the weights and extra tensor files
FILES = (
    "config.json",
    "model.safetensors",
    "genes.json",
    "labels.json",
    "metrics.json",
    "split.csv",
)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def save(
    directory: str | Path,
    *,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    genes: dict[str, Any],
    labels: list[str],
    metrics: dict[str, Any],
    split: pd.DataFrame,
    extras: dict[str, dict[str, torch.Tensor]] | None = None,
    card: str | None = None,
) -> Path:
    """Write a checkpoint directory atomically; an existing checkpoint there is replaced.

    `extras` maps a file stem (e.g. "augmentation") to more tensors saved beside the weights.
    """
    directory = Path(directory)
    with atomic_dir(directory, marker="config.json", what="checkpoint") as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        config = dict(config, format_version=FORMAT_VERSION)
        config["weights_sha256"] = sha256_file(tmp / "model.safetensors")
        config["extra_files"] = {}
        for stem, extra in (extras or {}).items():
            name = f"{stem}.safetensors"
            save_file({k: v.contiguous() for k, v in extra.items()}, str(tmp / name))
            config["extra_files"][name] = sha256_file(tmp / name)
        _write_json(tmp / "genes.json", genes)
        _write_json(tmp / "labels.json", labels)
        # what prediction reads beside the weights: a reversed class list or shuffled genes
        # would make every answer wrong without a word, so they are checksummed too
        config["file_sha256"] = {name: sha256_file(tmp / name) for name in CHECKSUMMED}
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "metrics.json", metrics)
        split.to_csv(tmp / "split.csv", index_label="cell")
        if card is not None:
            (tmp / "README.md").write_text(card)
    return directory


def load(directory: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint directory; every failure names the problem and the fix."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"model not found: {directory} is not a checkpoint directory")
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        msg = f"incomplete checkpoint {directory}: missing {missing}; re-save or re-train the model"
        raise InputError(msg)
    parts: dict[str, Any] = {}
    for name in ("config", "genes", "labels", "metrics"):
        try:
            parts[name] = json.loads((directory / f"{name}.json").read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"corrupt {name}.json in {directory}: {err}") from err
    config = parts["config"]
    digests = config.get("file_sha256", {}) if isinstance(config, dict) else {}
    for name in CHECKSUMMED:
        _check_digest(directory / name, digests.get(name))
    version = config.get("format_version")
    if not isinstance(version, int):
        raise InputError(f"{directory}/config.json has no format_version; not a sclabel checkpoint")
    if version > FORMAT_VERSION:
        msg = (
            f"checkpoint format {version} is newer than this sclabel understands "
            f"({FORMAT_VERSION}); upgrade sclabel (saved by {config.get('sclabel_version')})"
        )
        raise InputError(msg)
    parts["state"] = _load_verified(directory / "model.safetensors", config.get("weights_sha256"))
    parts["extras"] = {
        name.removesuffix(".safetensors"): _load_verified(directory / name, digest)
        for name, digest in config.get("extra_files", {}).items()
    }
    parts["split"] = pd.read_csv(directory / "split.csv", index_col="cell", dtype={"cell": str})
    return parts


def _check_digest(path: Path, digest: str | None, *, required: bool = False) -> None:
    if not path.is_file():
        raise InputError(f"incomplete checkpoint: {path} is missing; restore the checkpoint")
    if (digest is not None or required) and sha256_file(path) != digest:
        msg = (
            f"{path} does not match the checksum in config.json: the file was modified or "
            "damaged; restore the original checkpoint"
        )
        raise InputError(msg)


def _load_verified(path: Path, digest: str | None) -> dict[str, torch.Tensor]:
    _check_digest(path, digest, required=True)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(f"cannot read {path}: {err}") from err
