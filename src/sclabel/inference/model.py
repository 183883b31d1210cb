"""`Model`: a trained module plus everything needed to apply it to new data."""

from __future__ import annotations

import hashlib
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import torch

from sclabel.config import HARDWARE_FIELDS, DataConfig, Hardware, ModelConfig, TrainConfig
from sclabel.data.augment import DonorAugmentation
from sclabel.data.features import Projection
from sclabel.data.genes import Vocabulary
from sclabel.data.inputs import InputSpec
from sclabel.errors import InputError
from sclabel.inference import checkpoint
from sclabel.inference.calibration import Calibration
from sclabel.models import MODELS, Classifier, build, resolve_params
from sclabel.models.ensemble import combine, size_of
from sclabel.models.multitask import with_tasks

log = logging.getLogger("sclabel")


class Model:
    """A trained classifier that knows its genes, classes, preprocessing and split."""

    def __init__(
        self,
        module: Classifier,
        *,
        inputs: InputSpec,
        classes: list[str],
        data_config: DataConfig,
        model_config: ModelConfig,
        train_config: TrainConfig,
        hardware: Hardware | None = None,
        metrics: dict[str, Any] | None = None,
        split: pd.DataFrame | None = None,
        is_main_process: bool = True,
        augmentation: DonorAugmentation | None = None,
        extra_classes: dict[str, list[str]] | None = None,
        calibration: Calibration | None = None,
        reference=None,
    ) -> None:
        self.module = module.eval()
        self.input_spec = inputs  # genes, normalization and input kind, fitted at training
        self.classes = list(classes)
        self.data_config = data_config
        self.model_config = model_config
        self.train_config = train_config
        self.hardware = hardware or Hardware()  # where it was trained (provenance only)
        self.metrics = metrics or {}
        self.split = split if split is not None else pd.DataFrame({"split": []})
        self.is_main_process = is_main_process
        self.augmentation = augmentation  # donor-difference vectors it was trained with
        self.extra_classes = dict(extra_classes or {})  # further label columns (multi-task)
        # temperature, conformal scores, unknown threshold: fitted on the validation cells
        self.calibration = calibration or Calibration()
        self.reference = reference  # labelled reference cells for `map` (mapping.py)
        self.is_quantized = False
        self.loaded_from: str | None = None  # the folder `load` read (reports name it)

    @property
    def family(self) -> str:
        return self.model_config.family

    @property
    def ensemble_size(self) -> int:
        return size_of(self.module)

    @property
    def vocabulary(self) -> Vocabulary:
        return self.input_spec.vocabulary

    @property
    def projection(self) -> Projection | None:
        return self.input_spec.projection

    @property
    def training_input(self) -> str:
        return self.input_spec.training_input

    @property
    def genes(self) -> tuple[str, ...]:
        """Gene ids, or for an obsm-trained model the names of the embedding dimensions."""
        return self.vocabulary.ids

    @property
    def tasks(self) -> dict[str, list[str]]:
        """Label column -> its classes, for every head (the primary column first)."""
        return {self.data_config.label_key: self.classes, **self.extra_classes}

    def task_index(self, task: str | None) -> int:
        """The head answering label column `task` (None: the primary one)."""
        names = list(self.tasks)
        if task is None:
            return 0
        if task not in names:
            raise InputError(f"this model predicts {names}, not {task!r}")
        return names.index(task)

    @property
    def n_inputs(self) -> int:
        return self.input_spec.n_inputs

    def __repr__(self) -> str:
        return (
            f"Model(family={self.family!r}, "
            + (f"ensemble of {self.ensemble_size}, " if self.ensemble_size > 1 else "")
            + f"{self.input_spec.describe()}, {len(self.classes)} classes, "
            f"label_key={self.data_config.label_key!r}"
            + (f", also {list(self.extra_classes)}" if self.extra_classes else "")
            + ")"
        )

    def config_dict(self) -> dict[str, Any]:
        config = {
            "sclabel_version": version("sclabel"),
            "family": self.family,
            "hyperparameters": self.model_config.params,
            "ensemble_size": self.ensemble_size,
            "n_genes": len(self.genes),
            "n_classes": len(self.classes),
            "n_inputs": self.n_inputs,
            "extra_tasks": self.extra_classes,
            "data": self.data_config.to_dict(),
            "train": self.train_config.to_dict(),
            "hardware": self.hardware.to_dict(),
            "preprocessing": {
                "training_input": self.training_input,
                "transform": self.input_spec.transform,
                "target_sum": self.input_spec.target_sum,
                "gene_key": self.input_spec.gene_key,
                "library_size": self.input_spec.library_size,
            },
        }
        if self.calibration.fitted or self.calibration.temperature != 1.0:
            config["calibration"] = self.calibration.to_dict()
        if self.reference is not None:
            config["reference"] = self.reference.to_dict()
        if self.augmentation is not None:
            config["augmentation"] = {
                "config": self.augmentation.config.to_dict(),
                "info": self.augmentation.info,
            }
        return config

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint directory (see `sclabel.checkpoint`)."""
        if self.is_quantized:
            raise InputError("an int8 copy is for inference only; save the float model")
        return checkpoint.save(
            path,
            state=self.module.state_dict(),
            config=self.config_dict(),
            genes=self.vocabulary.to_dict(),
            labels=self.classes,
            metrics=self.metrics,
            split=self.split,
            extras=self._extras(),
            card=self.card(),
        )

    def card(self) -> str:
        """The model card (README.md of the checkpoint folder; `sclabel info` prints it)."""
        from sclabel.inference.card import model_card

        return model_card(self)

    def _extras(self) -> dict[str, dict]:
        extras = {}
        if self.augmentation is not None:
            extras["augmentation"] = self.augmentation.tensors()
        if self.projection is not None:
            extras["pca"] = self.projection.tensors()
        if self.calibration.fitted:
            extras["calibration"] = self.calibration.tensors()
        if self.reference is not None:
            extras["reference"] = self.reference.tensors()
        return extras

    @classmethod
    def load(cls, path: str | Path) -> Model:
        """Load and verify a checkpoint directory written by `Model.save`, or a published
        CellTypist model by name: "celltypist:Immune_All_Low" (downloaded and converted
        once, then read from the cache; `sclabel.inference.zoo`)."""
        if str(path).startswith("celltypist:"):
            from sclabel.inference import zoo

            path = zoo.fetch(str(path))
        parts = checkpoint.load(path)
        config = parts["config"]
        try:
            vocabulary = Vocabulary.from_dict(parts["genes"])
            classes = [str(c) for c in parts["labels"]]
            if len(vocabulary.ids) != config["n_genes"] or len(classes) != config["n_classes"]:
                raise ValueError("genes.json/labels.json do not match the sizes in config.json")
            projection = None
            if "pca" in parts["extras"]:
                projection = Projection.from_tensors(parts["extras"]["pca"])
            data_config = DataConfig.from_dict(config["data"])
            inputs = InputSpec(
                vocabulary,
                target_sum=data_config.target_sum,
                min_gene_coverage=data_config.min_gene_coverage,
                gene_key=data_config.gene_key,
                obsm_key=data_config.obsm_key,
                projection=projection,
                training_input=config["preprocessing"]["training_input"],
                library_size=config["preprocessing"].get("library_size", "cell"),
            )
            n_inputs = inputs.n_inputs
            extra_classes = {
                k: [str(c) for c in v] for k, v in config.get("extra_tasks", {}).items()
            }
            size = int(config.get("ensemble_size", 1))
            params = MODELS[config["family"]].upgrade_params(config["hyperparameters"])
            members = [
                with_tasks(
                    build(config["family"], n_inputs, len(classes), params),
                    {k: len(v) for k, v in extra_classes.items()},
                )
                for _ in range(size)
            ]
            module = combine(members)
            module.load_state_dict(parts["state"], strict=True)
            model_config = ModelConfig(config["family"], resolve_params(config["family"], params))
            train_config = TrainConfig.from_dict(config["train"])
            legacy = {k: v for k, v in config["train"].items() if k in HARDWARE_FIELDS}
            hardware = Hardware.from_dict(config.get("hardware", legacy))
            calibration = Calibration.from_parts(
                config.get("calibration"), parts["extras"].get("calibration")
            )
            reference = None
            if "reference" in config:
                from sclabel.inference.mapping import ReferenceIndex

                reference = ReferenceIndex.from_parts(
                    config["reference"], parts["extras"]["reference"]
                )
            augmentation = None
            if "augmentation" in parts["extras"]:
                augmentation = DonorAugmentation.from_tensors(
                    parts["extras"]["augmentation"], **config["augmentation"]
                )
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            msg = f"inconsistent checkpoint {path}: {err}; re-save or re-train the model"
            raise InputError(msg) from err
        model = cls(
            module,
            inputs=inputs,
            classes=classes,
            data_config=data_config,
            model_config=model_config,
            train_config=train_config,
            hardware=hardware,
            metrics=parts["metrics"],
            split=parts["split"],
            augmentation=augmentation,
            extra_classes=extra_classes,
            calibration=calibration,
            reference=reference,
        )
        model.loaded_from = str(path)
        return model

    def quantized(self) -> Model:
        """A copy for CPU inference with int8 dynamic quantization of every linear layer
        (weights int8, activations quantized per batch); benchmarks/foundation.py measures
        its speed and macro-F1 against the float model. Not for saving or training."""
        import copy
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch points to torchao; this API still works here
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            module = quantize_dynamic(
                copy.deepcopy(self.module), {torch.nn.Linear}, dtype=torch.qint8
            )
        clone = copy.copy(self)
        clone.module = module.eval()
        clone.is_quantized = True
        return clone

    def predict(self, adata: ad.AnnData, **options: Any):
        """Predict labels for every cell; see `sclabel.inference.engine.predict`."""
        from sclabel.inference.engine import predict

        return predict(self, adata, **options)

    def evaluate(self, adata: ad.AnnData, **options: Any):
        """Predict `adata` and score it against known labels; see
        `sclabel.evaluation.model_scores.evaluate_model` for the options."""
        from sclabel.evaluation.model_scores import evaluate_model

        return evaluate_model(self, adata, **options)

    def about(self) -> dict[str, Any]:
        """What a report says of this model: family, size, training cells and source."""
        imported = self.metrics.get("imported_from", {})
        return {
            "family": self.family,
            "ensemble": self.ensemble_size,
            "n_train_cells": self.metrics.get("n_cells", {}).get("train"),
            "label_key": self.data_config.label_key,
            "n_classes": len(self.classes),
            "source": imported.get("file"),
            "path": self.loaded_from,
            "trained_with": self.metrics.get("trained_with"),  # version, date, data file
            "auto": self.metrics.get("auto"),  # what --model auto compared and kept
            "calibration": self.calibration.describe(self.metrics.get("calibration")),
        }

    def weights_digest(self) -> str:
        """A digest of the genes and weights (what a reference index or a resumed prediction
        must have been made with); an int8 copy has its own."""
        digest = hashlib.sha256("\n".join(self.genes).encode())
        digest.update(b"int8" if self.is_quantized else b"float")

        def add(value) -> None:
            if isinstance(value, torch.Tensor):
                value = value.dequantize() if value.is_quantized else value
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
            elif isinstance(value, tuple | list):  # an int8 layer's packed (weight, bias)
                for item in value:
                    add(item)
            else:
                digest.update(repr(value).encode())

        for name, value in sorted(self.module.state_dict().items()):
            digest.update(name.encode())
            add(value)
        return digest.hexdigest()

    def build_reference(self, adata: ad.AnnData, *, label_key: str | None = None, k: int = 15,
                        **options: Any):  # fmt: skip
        """Index `adata`'s labelled cells for `map` (kept in `self.reference`, saved with the
        model); see `sclabel.inference.mapping`."""
        from sclabel.inference.mapping import ReferenceIndex

        label_key = label_key or self.data_config.label_key
        self.reference = ReferenceIndex.build(self, adata, label_key=label_key, k=k, **options)
        return self.reference

    def map(self, adata: ad.AnnData, **options: Any):
        """Label `adata`'s cells by their nearest reference cells, with a mapping score."""
        if self.reference is None:
            msg = (
                "this model has no reference index; build one first: "
                "sclabel reference REF.h5ad --model MODEL --label-key KEY"
            )
            raise InputError(msg)
        return self.reference.map(self, adata, **options)

    def explain(self, adata: ad.AnnData, **options: Any):
        """Per-cell gene importances (TabNet's feature mask, or input x gradient for other
        gene-input models), a table and plots; see `sclabel.explain`."""
        from sclabel.inference.explain import explain

        return explain(self, adata, **options)

    def export_split(self, path: str | Path) -> Path:
        """Write the train/val/test assignment of the training cells as CSV."""
        from sclabel.io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            self.split.to_csv(tmp, index_label="cell")
        return path

    def summary(self) -> str:
        test = self.metrics.get("test", {})
        fit = self.metrics.get("fit", {})
        lines = [
            repr(self),
            f"hyperparameters: {self.model_config.params}",
            f"training input: {self.training_input}; gene key: {self.data_config.gene_key}",
            f"split: {self.split['split'].value_counts().to_dict() if len(self.split) else 'none'}",
            f"classes: {', '.join(self.classes)}",
        ]
        if self.augmentation is not None:
            lines.append(f"donor augmentation: {len(self.augmentation)} difference vectors")
        if fit:
            lines.append(
                f"best epoch {fit.get('best_epoch')} of {fit.get('epochs_run')}, "
                f"val macro-F1 {fit.get('best_val_macro_f1')}"
            )
        if test:
            lines.append(f"test macro-F1 {test['macro_f1']:.4f}, accuracy {test['accuracy']:.4f}")
        return "\n".join(lines)
