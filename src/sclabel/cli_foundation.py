"""Commands for foundation models: tokenize, pretrain, embed, classify-genes.

Kept apart from cli.py so that file stays about classifiers; `cli.py` registers these
parsers and runners through `add_parsers` and `RUNNERS`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sclabel.errors import InputError

log = logging.getLogger("sclabel")

EXAMPLES = {
    "tokenize": "sclabel tokenize atlas.h5ad --geneformer geneformer_v1/ --columns cell_type "
    "--out corpus.store",
    "pretrain": "sclabel pretrain corpus.store --arch bert --preset geneformer-6L "
    "--max-steps 100000 --out my-bert",
    "embed": "sclabel embed query.h5ad --model my-bert --out cells.parquet --genes genes.csv",
    "classify-genes": "sclabel classify-genes cells.h5ad --model my-bert --labels tf_dosage.csv "
    "--folds 5 --out gene-cv/",
}


def add_parsers(command, input_options) -> None:
    """`command(name, help)` makes a sub-parser; `input_options(p)` adds INPUT and friends."""
    tokenize = command("tokenize", "Rank-value tokenize cells (Geneformer) into a corpus store.")
    tokenize.add_argument("inputs", nargs="+", help=".h5ad files (read backed)")
    tokenize.add_argument("--out", required=True, help="corpus folder to write")
    source = tokenize.add_mutually_exclusive_group(required=True)
    source.add_argument("--geneformer", help="folder with Geneformer's vocabulary pickles")
    source.add_argument("--tokenizer", help="folder with tokenizer.json (e.g. a pretrained model)")
    source.add_argument("--fit", action="store_true", help="fit vocabulary + medians on inputs")
    tokenize.add_argument("--max-len", type=int, default=2048, help="model input size")
    tokenize.add_argument("--columns", help="comma-separated obs columns to carry (labels, ...)")
    tokenize.add_argument(
        "--truncate",
        action="store_true",
        help="keep only each cell's first --max-len genes, as Geneformer's corpus does: "
        "smaller and faster to write; enough for BERT, not for Perceiver pretraining",
    )
    tokenize.add_argument("--chunk-size", type=int, default=2048, help="cells per chunk")

    pretrain = command("pretrain", "Masked pretraining of a BERT or Perceiver on a corpus.")
    pretrain.add_argument("corpus", help="a corpus folder from `sclabel tokenize`")
    pretrain.add_argument("--out", required=True, help="model folder to write")
    pretrain.add_argument("--arch", default="bert", choices=["bert", "perceiver"])
    pretrain.add_argument(
        "--preset", default="tiny", help="bert: tiny, geneformer-6L; perceiver: tiny, base"
    )
    pretrain.add_argument("--config", help="a model config.json instead of the preset")
    pretrain.add_argument("--objective", default="nb", choices=["nb", "poisson", "mse"])
    for name, kind, default in (
        ("max-steps", int, 1000),
        ("batch-size", int, 16),
        ("max-len", int, 2048),
        ("lr", float, 1e-3),
        ("warmup-steps", int, 100),
        ("mask-prob", float, 0.15),
        ("seed", int, 0),
        ("num-nodes", int, 1),
    ):
        pretrain.add_argument(f"--{name}", type=kind, default=default)
    pretrain.add_argument("--accelerator", default="cpu")
    pretrain.add_argument("--devices", default="1")
    pretrain.add_argument("--strategy", default="auto")
    pretrain.add_argument("--precision", default="32-true")

    embed = command("embed", "Cell (and gene) embeddings from a trained or pretrained model.")
    input_options(embed)
    embed.add_argument("--model", required=True, help="sclabel model or pretrained folder")
    embed.add_argument("--out", required=True, help=".parquet, .npy or .h5ad (obsm) to write")
    embed.add_argument("--key-added", default="X_sclabel", help="obsm key / column prefix")
    embed.add_argument("--pooling", choices=["mean", "cls"], help="bert: gene-state pooling")
    embed.add_argument("--max-len", type=int, default=2048)
    embed.add_argument("--chunk-size", type=int, default=8192)
    embed.add_argument("--genes", help="also write contextual gene embeddings (.csv) here")
    embed.add_argument("--max-cells", type=int, default=2000, help="cells for --genes")

    genes = command("classify-genes", "Classify genes from their contextual embeddings (k-fold).")
    input_options(genes)
    genes.add_argument("--model", required=True, help="pretrained or fine-tuned bert folder")
    genes.add_argument("--labels", required=True, help=".csv/.tsv of genes and their labels")
    genes.add_argument("--gene-column", default="gene")
    genes.add_argument("--label-column", default="label")
    genes.add_argument("--folds", type=int, default=5)
    genes.add_argument("--max-cells", type=int, default=2000, help="cells to embed genes in")
    genes.add_argument("--seed", type=int, default=0)
    genes.add_argument("--out", required=True, help="folder for cv.json and cv.md")


def _columns(value: str | None) -> list[str] | None:
    return None if value is None else [c.strip() for c in value.split(",") if c.strip()]


def run_tokenize(args) -> None:
    from sclabel.data import tokenize

    if args.fit:
        tokenizer = tokenize.GeneTokenizer.fit(args.inputs, max_len=args.max_len)
    elif args.geneformer:
        tokenizer = tokenize.GeneTokenizer.from_geneformer(args.geneformer)
    else:
        tokenizer = tokenize.GeneTokenizer.load(args.tokenizer)
    tokenizer.max_len = args.max_len
    store = tokenize.tokenize(
        args.inputs,
        args.out,
        tokenizer,
        columns=_columns(args.columns),
        chunk_size=args.chunk_size,
        truncate=args.truncate,
        progress=not args.quiet,
    )
    print(f"{store.n_cells} cells tokenized into {args.out}")


def run_pretrain(args) -> None:
    from sclabel.cli import _devices
    from sclabel.pretrain import PretrainConfig, loss_fell, pretrain

    config = PretrainConfig(
        arch=args.arch,
        preset=args.preset,
        config_file=args.config,
        objective=args.objective,
        max_len=args.max_len,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        mask_prob=args.mask_prob,
        seed=args.seed,
        accelerator=args.accelerator,
        devices=_devices(args.devices),
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        progress=not args.quiet,
    )
    result = pretrain(args.corpus, args.out, config)
    first, last = loss_fell(result.history)
    print(
        f"{len(result.history)} steps, masked loss {first:.3f} -> {last:.3f}, "
        f"{result.tokens_per_second:,.0f} tokens/s; written to {args.out}"
    )


def run_embed(args) -> None:
    from sclabel.cli import _read_anndata
    from sclabel.embed import cell_embeddings, gene_embeddings, load_embedder, write_embeddings

    embedder = load_embedder(args.model, pooling=args.pooling, max_len=args.max_len)
    adata = _read_anndata(args)
    if args.genes and not args.genes.lower().endswith(".csv"):
        raise InputError(f"--genes must end in .csv, got {args.genes}")
    blocks = cell_embeddings(
        embedder,
        adata,
        layer=args.layer,
        gene_key=args.gene_key,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    write_embeddings(blocks, adata.obs_names, args.out, key_added=args.key_added, obs=adata.obs)
    print(f"{adata.n_obs} cell embeddings written to {args.out}")
    if args.genes:
        from sclabel._atomic import atomic_path

        table = gene_embeddings(
            embedder, adata, layer=args.layer, gene_key=args.gene_key, max_cells=args.max_cells
        )
        with atomic_path(args.genes) as tmp:
            table.to_csv(tmp)
        print(f"{len(table)} gene embeddings written to {args.genes}")


def run_classify_genes(args) -> None:
    from sclabel._atomic import atomic_dir
    from sclabel.cli import _read_anndata
    from sclabel.embed import gene_embeddings, load_embedder
    from sclabel.gene_classify import classify_genes, read_gene_labels

    if args.folds < 2:
        raise InputError("--folds must be at least 2")
    labels = read_gene_labels(
        args.labels, gene_column=args.gene_column, label_column=args.label_column
    )
    embedder = load_embedder(args.model)
    adata = _read_anndata(args)
    table = gene_embeddings(
        embedder, adata, layer=args.layer, gene_key=args.gene_key, max_cells=args.max_cells
    )
    result = classify_genes(table, labels, folds=args.folds, seed=args.seed)
    with atomic_dir(args.out, marker="cv.json", what="gene classification") as folder:
        info = {
            "classes": result.classes,
            "n_genes": result.n_genes,
            "unmatched": result.unmatched,
            "folds": result.folds,
            "summary": result.summary(),
        }
        (folder / "cv.json").write_text(json.dumps(info, indent=1))
        (folder / "cv.md").write_text(result.to_markdown())
    print(result.to_markdown(), end="")
    print(f"written to {Path(args.out) / 'cv.json'}")


RUNNERS = {
    "tokenize": run_tokenize,
    "pretrain": run_pretrain,
    "embed": run_embed,
    "classify-genes": run_classify_genes,
}
