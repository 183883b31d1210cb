"""The model card: README.md in every checkpoint folder, in the Hugging Face layout.

YAML front matter (library, tags, license when the source states one) and a Markdown body:
what the model is, its genes and classes, the training data, the preprocessing, the metrics
and where the model came from (trained here, or imported from scTab or CellTypist, with the
SHA-256 of the source file). With config.json and model.safetensors beside it, a checkpoint
folder is what `huggingface_hub` uploads as a model repository. `sclabel info` prints it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sclabel.data.genes import id_kind

if TYPE_CHECKING:
    from sclabel.inference.model import Model

LICENSES = {"scTab": "mit"}  # what a source publishes its models under, when known
MAX_LISTED = 60  # classes listed in full up to this many


def _yaml_value(value: Any) -> str:
    text = str(value)
    return text if text.replace("-", "").replace("_", "").isalnum() else f'"{text}"'


def _front_matter(model: Model, source: dict) -> str:
    tags = ["single-cell", "scRNA-seq", "cell-type-annotation", "sclabel", model.family]
    if source.get("source"):
        tags.append(str(source["source"]).lower())
    lines = ["---", "library_name: sclabel", "pipeline_tag: tabular-classification"]
    license_ = LICENSES.get(source.get("source", ""))
    if license_:
        lines.append(f"license: {license_}")
    lines.append("tags:")
    lines += [f"- {_yaml_value(t)}" for t in dict.fromkeys(tags)]
    lines.append("---")
    return "\n".join(lines)


def _source(model: Model) -> dict:
    source = dict(model.metrics.get("imported_from") or {})
    if source and "source" not in source:
        source["source"] = "CellTypist" if model.family == "celltypist" else "unknown"
    return source


def _provenance(model: Model, source: dict) -> list[str]:
    if not source:
        trained = model.metrics.get("trained_with", {})
        version = trained.get("sclabel_version", "an earlier version")
        lines = [f"Trained here with sclabel {version}"]
        if trained.get("date"):
            lines[0] += f" on {trained['date']}"
        if trained.get("data"):
            lines[0] += f" from `{trained['data']}`"
        return [lines[0] + "."]
    lines = [f"Imported from {source['source']}: `{source.get('file', '?')}`"]
    if source.get("sha256"):
        lines.append(f"- source file SHA-256: `{source['sha256']}`")
    for key in ("url", "publication"):
        if source.get(key):
            lines.append(f"- {key}: {source[key]}")
    for key in ("genes_file", "classes_file"):
        if source.get(key):
            digest = source.get(key.replace("_file", "_sha256"), "?")
            lines.append(f"- {key.replace('_', ' ')}: `{source[key]}` (SHA-256 `{digest}`)")
    details = source.get("celltypist") or {}
    for key in ("date", "details", "source", "version"):
        if isinstance(details, dict) and details.get(key):
            lines.append(f"- CellTypist {key}: {details[key]}")
    lines.append("Converted without running any of the source file's code (no pickle import).")
    return lines


def _metrics(model: Model) -> list[str]:
    test, fit = model.metrics.get("test") or {}, model.metrics.get("fit") or {}
    rows = []
    if test:
        rows.append(("test macro-F1", test.get("macro_f1")))
        rows.append(("test accuracy", test.get("accuracy")))
        rows.append(("test ECE", test.get("ece")))
        rows.append(("test ECE of a calibrated model, by chance alone", test.get("ece_by_chance")))
    if fit.get("best_val_macro_f1") is not None:
        rows.append(("best validation macro-F1", fit["best_val_macro_f1"]))
    rows = [(name, value) for name, value in rows if isinstance(value, int | float)]
    if not rows:
        return ["No held-out metrics: this model was not evaluated when it was made."]
    return ["| metric | value |", "|---|---|", *(f"| {n} | {v:.4f} |" for n, v in rows)]


def model_card(model: Model) -> str:
    """README.md for `model`'s checkpoint folder."""
    source = _source(model)
    spec, genes = model.input_spec, model.genes
    n_cells = model.metrics.get("n_cells") or {}
    classes = model.classes
    listed = ", ".join(classes[:MAX_LISTED]) + (" ..." if len(classes) > MAX_LISTED else "")
    params = ", ".join(f"{k}={v}" for k, v in model.model_config.params.items())
    ensemble = f", an ensemble of {model.ensemble_size}" if model.ensemble_size > 1 else ""
    body = [
        f"# sclabel {model.family} cell-type classifier",
        "",
        f"{'An' if model.family[0] in 'aeiou' else 'A'} `{model.family}` classifier{ensemble} "
        "that predicts "
        f"`{model.data_config.label_key}` ({len(classes)} classes) for single cells from "
        f"{spec.describe()}.",
        "",
        "```",
        "sclabel predict query.h5ad --model {this folder} --out predictions.csv",
        "```",
        "",
        "## Genes",
        "",
        f"{len(genes)} inputs, {id_kind(genes) if spec.kind != 'obsm' else 'embedding dims'} "
        f"(first: {', '.join(genes[:5])}); query genes are matched by "
        f"`{spec.gene_key or 'var_names'}` and a query covering under "
        f"{spec.min_gene_coverage:.0%} of them is refused.",
        "",
        "## Classes",
        "",
        listed,
        "",
        "## Training data",
        "",
        (
            ", ".join(f"{part}: {n:,} cells" for part, n in n_cells.items())
            + f"; labels from `{model.data_config.label_key}`"
            + (f", split by `{model.data_config.split_by}`" if model.data_config.split_by else "")
            + "."
            if n_cells
            else "Not known (an imported model)."
        ),
        "",
        "## Preprocessing",
        "",
        f"- transform: `{spec.transform}`, target sum {spec.target_sum:g}",
        f"- training input: {spec.training_input}",
        f"- hyperparameters: {params}",
        "",
        "## Metrics",
        "",
        *_metrics(model),
        "",
        "## Provenance",
        "",
        *_provenance(model, source),
        "",
        "Files: `config.json` (settings and SHA-256 of every file), `model.safetensors` "
        "(weights), `genes.json`, `labels.json`, `metrics.json`, `split.csv`.",
    ]
    return _front_matter(model, source) + "\n\n" + "\n".join(body) + "\n"
