"""The layout's promises: no import cycles, a small top level, short modules, old paths kept."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

from sclabel import _deprecated

SRC = Path(__file__).resolve().parents[1] / "src" / "sclabel"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The module an import statement loads (a name inside a module: that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _module_level_imports(path: Path) -> set[str]:
    """sclabel modules imported when `path` is imported: top-level statements only (imports
    inside functions run later, on use; `if TYPE_CHECKING:` blocks never run)."""
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path)
    package = package if path.name == "__init__.py" else package.rpartition(".")[0]

    def visit(statements) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("sclabel"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                if base.startswith("sclabel"):
                    found.update(f"{base}.{a.name}" for a in node.names)

    visit(ast.parse(path.read_text()).body)
    edges = set()
    for name in found:
        target = _resolve(name)
        while target:  # importing a.b.c runs the packages a and a.b first
            edges.add(target)
            target = target.rpartition(".")[0] if "." in target else None
    return edges - {_module_name(path)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return result


def test_no_import_cycles():
    graph = {name: _module_level_imports(path) for name, path in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_top_level_is_small_and_modules_are_short():
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 6, top
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert long == {}


def test_no_module_imports_an_old_path():
    old = set(_deprecated.MOVED)
    used = {
        name: sorted(_module_level_imports(path) & old)
        for name, path in MODULES.items()
        if _module_level_imports(path) & old
    }
    text_uses = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.name != "_deprecated.py"
        and any(
            f"from {o} import" in p.read_text() or f"import {o}\n" in p.read_text() for o in old
        )
    ]
    assert used == {} and text_uses == []


@pytest.mark.parametrize("old", sorted(_deprecated.MOVED))
def test_old_import_paths_work_with_a_deprecation_warning(old):
    assert old in _OLD_NAMES, f"add names that {old} used to hold to _OLD_NAMES"
    sys.modules.pop(old, None)  # imported by an earlier test: import it afresh
    with pytest.warns(DeprecationWarning, match=f"{old} moved to .*sclabel 0.3"):
        module = importlib.import_module(old)
    missing = [name for name in _OLD_NAMES[old] if not hasattr(module, name)]
    assert missing == []


# names each old module held, still reachable through it
_OLD_NAMES = {
    "sclabel._atomic": ["atomic_path", "atomic_dir"],
    "sclabel._frames": ["require_columns", "markdown_table"],
    "sclabel.baselines": ["XGBoostPCA"],
    "sclabel.benchmark": ["run_benchmark", "Variant"],
    "sclabel.celltypist_import": ["import_celltypist"],
    "sclabel.checkpoint": ["save", "load", "FORMAT_VERSION"],
    "sclabel.cli_experiment": ["run"],
    "sclabel.cli_foundation": ["run_embed", "run_pretrain"],
    "sclabel.data._stream_store": ["stream_row"],
    "sclabel.data.h5ad_writer": ["write_h5ad_chunks"],
    "sclabel.data.io": ["read", "matrix", "detect_values", "check_cells"],
    "sclabel.data.soma": ["open_soma", "SomaSource"],
    "sclabel.data.store": ["Store", "StoreWriter", "is_store"],
    "sclabel.data.store_build": ["build_store"],
    "sclabel.data.store_loader": ["StoreRows"],
    "sclabel.data.tokenize": ["GeneTokenizer", "tokenize", "rank_select", "token_rows"],
    "sclabel.demo": ["run_demo"],
    "sclabel.embed": ["load_embedder", "cell_embeddings", "gene_embeddings"],
    "sclabel.experiments": ["run_disease_experiment"],
    "sclabel.experiments.disease": ["run_disease_experiment"],
    "sclabel.experiments.disease_eval": ["Setup", "fit_and_score"],
    "sclabel.experiments.disease_report": ["Section", "DiseaseResult"],
    "sclabel.experiments.disease_sections": ["architecture", "kmeans"],
    "sclabel.explain": ["explain", "Explanation"],
    "sclabel.gene_classify": ["classify_genes", "read_gene_labels"],
    "sclabel.model": ["Model"],
    "sclabel.models.perceiver": ["PerceiverConfig", "PerceiverEncoder"],
    "sclabel.predict": ["Prediction", "predict", "UNKNOWN"],
    "sclabel.predict_stream": ["predict_to_file"],
    "sclabel.prepare": ["prepare", "check_out"],
    "sclabel.pretrain": ["pretrain", "PretrainConfig"],
    "sclabel.safe_pickle": ["load", "PickledObject"],
    "sclabel.scale_data": ["ScaleProfile", "fit_profile", "generate", "GeneratedSource"],
    "sclabel.scaling": ["run_scaling"],
    "sclabel.training.api": [
        "train",
        "cross_validate",
        "load_training_data",
        "fit_members",
        "read_labels",
        "upsample_training",
        "TrainingData",
        "CrossValidation",
    ],
}


def test_the_package_export_wins_over_an_old_module_of_the_same_name():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module("sclabel.predict")
    import sclabel

    assert callable(sclabel.predict) and module.Prediction is sclabel.Prediction
