"""Convert an scTab checkpoint (Lightning `.ckpt`) into a sclabel `tabnet` checkpoint.

scTab (theislab/scTab, `cellnet`) publishes its TabNet as a Lightning checkpoint: a zip of
pickles holding the state dict, and hyperparameters that name the optimizer and scheduler
*classes*. Nothing in it is unpickled freely: `torch.load(weights_only=True)` rebuilds only
tensors and plain containers, and each optimizer or scheduler class the file names (found by
reading the pickle's opcodes, not by running it) is replaced by an inert record of its name.
Any other global is refused by torch and nothing from the file runs.

scTab's `TabNet` maps onto sclabel's `tabnet` family one layer to one layer (its input
BatchNorm is `input_norm="batch"`; its head has no bias, so ours is zero), and its inference
recipe normalizes over the model's genes only (`library_size="model_genes"`). The parity test
compares the imported model with scTab's own probabilities on real cells
(tests/inference/test_sctab_import.py, ../shared/data/sctab_reference).
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sclabel.config import DataConfig, ModelConfig, TrainConfig
from sclabel.data.genes import Vocabulary
from sclabel.data.inputs import InputSpec
from sclabel.errors import InputError
from sclabel.inference.model import Model
from sclabel.io.digest import sha256_file
from sclabel.models import build, resolve_params

# hyperparameters scTab's TabnetClassifier saves -> sclabel tabnet parameters
PARAMS = {
    "n_d": "n_d",
    "n_a": "n_a",
    "n_steps": "n_steps",
    "gamma": "gamma",
    "n_shared": "n_shared",
    "n_independent": "n_independent",
    "virtual_batch_size": "virtual_batch_size",
    "momentum": "momentum",
    "lambda_sparse": "lambda_sparse",
}
REQUIRED = ("gene_dim", "type_dim", *PARAMS)
NAMED_CLASSES = re.compile(r"^torch\.optim(\.|$)")  # classes a checkpoint may name, kept inert
UNUSED = ("class_weights", "child_lookup", "augmentations")  # training-only buffers


class InertName:
    """Stands in for a class a checkpoint names (e.g. its optimizer); never imported or run."""

    qualified: str = ""

    def __repr__(self) -> str:
        return f"InertName({self.qualified})"


def _named_globals(data: bytes) -> set[str]:
    """'module.name' of every global the pickle refers to, read from its opcodes."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name == "GLOBAL":
            module, name = str(arg).split(" ", 1)
            found.add(f"{module}.{name}")
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, loaded without running any of its code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scTab checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if not pickles:
                raise InputError(f"{path} is not a PyTorch checkpoint (no data.pkl in the zip)")
            named = _named_globals(archive.read(pickles[0]))
    except zipfile.BadZipFile as err:
        raise InputError(f"{path} is not a PyTorch checkpoint (not a zip archive)") from err
    inert = [
        (type(name.rsplit(".", 1)[1], (InertName,), {"qualified": name}), name)
        for name in sorted(named)
        if NAMED_CLASSES.match(name)
    ]
    try:
        with torch.serialization.safe_globals(inert):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError with its reasons
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(err))
        what = f"it refers to {found[1]}" if found else f"torch: {type(err).__name__}"
        msg = (
            f"refusing to load {path}: it holds more than tensors and plain data ({what}, "
            "which loading could run); nothing from it was run"
        )
        raise InputError(msg) from err


def _layout(content: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(content, dict) or "state_dict" not in content:
        found = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise InputError(f"{path} is not an scTab checkpoint: no state_dict (found {found})")
    state, hparams = content["state_dict"], content.get("hyper_parameters") or {}
    missing = [k for k in REQUIRED if k not in hparams]
    if "classifier.final_mapping.weight" not in state or missing:
        keys = sorted(state)[:4]
        msg = (
            f"{path} is not an scTab TabNet checkpoint: "
            + (f"hyper_parameters lack {missing}; " if missing else "")
            + f"state_dict keys start {keys} (expected classifier.encoder.* and "
            "classifier.final_mapping.weight)"
        )
        raise InputError(msg)
    if hparams.get("mask_type", "entmax") != "entmax":
        msg = f"{path}: mask_type {hparams['mask_type']!r}; sclabel's TabNet uses entmax only"
        raise InputError(msg)
    return state, hparams


def _rename(key: str) -> str | None:
    """scTab state-dict key -> sclabel tabnet key (None: tied copy or training-only)."""
    key = key.removeprefix("classifier.")
    if key in UNUSED:
        return None
    if key == "final_mapping.weight":
        return "head.weight"
    key = key.removeprefix("encoder.")
    if key.startswith("initial_bn."):
        return "input_" + key.removeprefix("initial_")
    if m := re.fullmatch(r"att_transformers\.(\d+)\.(fc\.weight|bn\.bn\.\w+)", key):
        return f"attention.{m[1]}.{m[2]}"
    m = re.fullmatch(r"(initial_splitter|feat_transformers\.(\d+))\.(.+)", key)
    if m is None:
        raise InputError(f"unexpected key in an scTab state dict: {key!r}")
    step = 0 if m[2] is None else int(m[2]) + 1
    rest = m[3]
    if m2 := re.fullmatch(r"shared\.shared_layers\.(\d+)\.weight", rest):
        return f"shared.{m2[1]}.weight" if step == 0 else None  # one copy, shared by all
    if m2 := re.fullmatch(r"shared\.glu_layers\.(\d+)\.fc\.weight", rest):
        return None  # the same tensor as shared_layers (checked in `_convert`)
    if m2 := re.fullmatch(r"shared\.glu_layers\.(\d+)\.bn\.bn\.(\w+)", rest):
        return f"transformers.{step}.shared_bns.{m2[1]}.bn.{m2[2]}"
    if m2 := re.fullmatch(r"specifics\.glu_layers\.(\d+)\.fc\.weight", rest):
        return f"transformers.{step}.fcs.{m2[1]}.weight"
    if m2 := re.fullmatch(r"specifics\.glu_layers\.(\d+)\.bn\.bn\.(\w+)", rest):
        return f"transformers.{step}.bns.{m2[1]}.bn.{m2[2]}"
    raise InputError(f"unexpected key in an scTab state dict: {key!r}")


def _check_tied(state: dict[str, torch.Tensor], path: Path) -> None:
    """scTab shares its first FC layers between steps; every copy must be the same tensor."""
    copies: dict[str, list[torch.Tensor]] = {}
    for key, value in state.items():
        m = re.search(r"shared\.(?:shared_layers|glu_layers)\.(\d+)(?:\.fc)?\.weight$", key)
        if m:
            copies.setdefault(m[1], []).append(value)
    for i, tensors in copies.items():
        if any(not torch.equal(tensors[0], t) for t in tensors[1:]):
            raise InputError(f"{path}: shared layer {i} differs between steps; not scTab's TabNet")


def _table(path: str | Path, column: str, what: str, width: int) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} table not found: {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises its own error types
        raise InputError(f"cannot read {what} table {path}: {err}") from err
    if column not in frame.columns:
        msg = f"{path} has no {column!r} column (found {list(frame.columns)}); is it scTab's?"
        raise InputError(msg)
    if len(frame) != width:
        msg = (
            f"{path} lists {len(frame)} {what}, but the checkpoint's weights expect {width}; "
            "use the table published with this checkpoint"
        )
        raise InputError(msg)
    return frame


def import_sctab(checkpoint: str | Path, *, genes: str | Path, classes: str | Path) -> Model:
    """Read an scTab checkpoint with its gene table (var.parquet: `feature_id`, optional
    `feature_name`) and class table (cell_type.parquet: `label`) as a sclabel `Model`."""
    path = Path(checkpoint)
    content = read_checkpoint(path)
    state, hparams = _layout(content, path)
    n_genes, n_classes = int(hparams["gene_dim"]), int(hparams["type_dim"])
    var = _table(genes, "feature_id", "genes", n_genes)
    labels = _table(classes, "label", "classes", n_classes)["label"].astype(str).tolist()
    _check_tied(state, path)
    params = {ours: hparams[theirs] for theirs, ours in PARAMS.items()}
    params["input_norm"] = "batch"
    module = build("tabnet", n_genes, n_classes, params)
    converted = {}
    for key, value in state.items():
        if (name := _rename(key)) is not None:
            converted[name] = value
    converted["head.bias"] = torch.zeros(n_classes)  # scTab's head has no bias
    expected = module.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [k for k in expected if k in converted and converted[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        msg = (
            f"{path} does not fit scTab's TabNet with its own hyperparameters: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
        raise InputError(msg)
    module.load_state_dict(converted, strict=True)
    symbols = var["feature_name"].astype(str) if "feature_name" in var.columns else None
    vocabulary = Vocabulary(
        tuple(var["feature_id"].astype(str)), None if symbols is None else tuple(symbols)
    )
    source = {
        "source": "scTab",
        "file": path.name,
        "sha256": sha256_file(path),
        "genes_file": Path(genes).name,
        "genes_sha256": sha256_file(genes),
        "classes_file": Path(classes).name,
        "classes_sha256": sha256_file(classes),
        "epoch": _plain(content.get("epoch")),
        "lightning_version": _plain(content.get("pytorch-lightning_version")),
        "hyper_parameters": {k: _plain(v) for k, v in hparams.items()},
    }
    return Model(
        module,
        inputs=InputSpec(
            vocabulary, gene_key="var_names", training_input="counts", library_size="model_genes"
        ),
        classes=labels,
        data_config=DataConfig(label_key="cell_type", gene_key="var_names"),
        model_config=ModelConfig("tabnet", resolve_params("tabnet", params)),
        train_config=TrainConfig(),
        metrics={"imported_from": source},
        split=pd.DataFrame({"split": []}),
    )


def _plain(value: Any) -> Any:
    """JSON-safe: inert class records become their qualified names."""
    if isinstance(value, type) and issubclass(value, InertName):
        return value.qualified
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)
