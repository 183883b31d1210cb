"""Import paths of modules that moved in 0.2, kept working for one release with a warning.

sclabel 0.2 arranged its modules by pipeline stage (io/, store/, data/, models/, training/,
inference/, evaluation/, foundation/, studies/, cli/). Code that imports an old path, e.g.
`from sclabel.model import Model`, still works and is told where the name lives now, as
anndata does when it moves a module. The old paths go in 0.3. Nothing here imports the new
modules until an old path is used, so `import sclabel` stays light.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

REMOVED_IN = "0.3"

# old module -> the module(s) that hold its public names now (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "sclabel._atomic": ("sclabel.io.atomic",),
    "sclabel._frames": ("sclabel.data.obs",),
    "sclabel.baselines": ("sclabel.studies.baselines",),
    "sclabel.benchmark": ("sclabel.studies.benchmark",),
    "sclabel.celltypist_import": ("sclabel.inference.celltypist",),
    "sclabel.checkpoint": ("sclabel.inference.checkpoint",),
    "sclabel.cli_experiment": ("sclabel.cli.experiment",),
    "sclabel.cli_foundation": ("sclabel.cli.foundation",),
    "sclabel.data._stream_store": ("sclabel.store._stream",),
    "sclabel.data.h5ad_writer": ("sclabel.io.h5ad_writer",),
    "sclabel.data.io": ("sclabel.io.read",),
    "sclabel.data.soma": ("sclabel.io.soma",),
    "sclabel.data.store": ("sclabel.store.format",),
    "sclabel.data.store_build": ("sclabel.store.build",),
    "sclabel.data.store_loader": ("sclabel.store.loader",),
    "sclabel.data.tokenize": (
        "sclabel.foundation.vocabulary",
        "sclabel.foundation.ranking",
        "sclabel.foundation.corpus",
    ),
    "sclabel.demo": ("sclabel.studies.demo",),
    "sclabel.embed": ("sclabel.inference.embed", "sclabel.foundation.gene_classify"),
    "sclabel.experiments": ("sclabel.studies.disease",),
    "sclabel.experiments.disease": ("sclabel.studies.disease.run",),
    "sclabel.experiments.disease_eval": ("sclabel.studies.disease.evaluate",),
    "sclabel.experiments.disease_report": ("sclabel.studies.disease.report",),
    "sclabel.experiments.disease_sections": ("sclabel.studies.disease.sections",),
    "sclabel.explain": ("sclabel.inference.explain",),
    "sclabel.gene_classify": ("sclabel.foundation.gene_classify",),
    "sclabel.model": ("sclabel.inference.model",),
    "sclabel.models.perceiver": ("sclabel.foundation.perceiver", "sclabel.foundation.objectives"),
    "sclabel.predict": ("sclabel.inference.prediction", "sclabel.inference.engine"),
    "sclabel.predict_stream": ("sclabel.inference.engine", "sclabel.inference.prediction"),
    "sclabel.prepare": ("sclabel.studies.prepare",),
    "sclabel.pretrain": ("sclabel.foundation.pretrain",),
    "sclabel.safe_pickle": ("sclabel.io.safe_pickle",),
    "sclabel.scale_data": ("sclabel.studies.simulate", "sclabel.studies.profile"),
    "sclabel.scaling": ("sclabel.studies.scaling",),
    "sclabel.training.api": (
        "sclabel.training.train",
        "sclabel.training.data",
        "sclabel.training.fit",
        "sclabel.training.cv",
        "sclabel.data.obs",
    ),
}


class _MovedModule(types.ModuleType):
    """Stands at an old path and hands out the names of the module(s) that replaced it."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved to {', '.join(targets)}; this path goes in {REMOVED_IN}.")
        self.__targets = targets

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved) has no attribute {attr!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__targets:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class _Redirect(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Asked last by the import system: only paths no real module answers reach it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        is_package = any(name.startswith(fullname + ".") for name in MOVED)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)

    def create_module(self, spec):
        targets = MOVED[spec.name]
        msg = (
            f"{spec.name} moved to {' / '.join(targets)}; import from there "
            f"(the old path is removed in sclabel {REMOVED_IN})"
        )
        # stacklevel 2: the line with the import (warnings skips importlib's own frames)
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        module = _MovedModule(spec.name, targets)
        if spec.submodule_search_locations is not None:
            module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        return None


def install() -> None:
    if not any(isinstance(finder, _Redirect) for finder in sys.meta_path):
        sys.meta_path.append(_Redirect())
