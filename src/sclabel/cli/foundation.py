"""Foundation-model commands: tokenize, pretrain, embed, classify-genes."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sclabel.cli._options import Command, hardware, hardware_options, input_options, read_anndata
from sclabel.config import PRETRAIN_STATE_EVERY
from sclabel.errors import InputError

log = logging.getLogger("sclabel")


def tokenize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help=".h5ad files (read backed)")
    p.add_argument("--out", required=True, help="corpus folder to write")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--geneformer", help="folder with Geneformer's vocabulary pickles")
    source.add_argument(
        "--tokenizer", help="folder with gene_tokenizer.json (a pretrained model or a corpus)"
    )
    source.add_argument("--fit", action="store_true", help="fit vocabulary + medians on inputs")
    p.add_argument("--max-len", type=int, default=2048, help="model input size")
    p.add_argument("--columns", help="comma-separated obs columns to carry (labels, ...)")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="keep only each cell's first --max-len genes, as Geneformer's corpus does: "
        "smaller and faster to write; enough for BERT, not for Perceiver pretraining",
    )
    p.add_argument("--chunk-size", type=int, default=2048, help="cells per chunk")


def pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", help="a corpus folder from `sclabel tokenize`")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--arch", default="bert", choices=["bert", "perceiver"], help="architecture")
    p.add_argument(
        "--preset", default="tiny", help="bert: tiny, geneformer-6L; perceiver: tiny, base"
    )
    p.add_argument("--config", help="a model config.json instead of the preset")
    p.add_argument(
        "--objective",
        default="nb",
        choices=["nb", "poisson", "mse"],
        help="perceiver: likelihood of the masked values",
    )
    p.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="cells per step")
    p.add_argument(
        "--max-len",
        type=int,
        help="genes (tokens) per cell (default: the preset's: tiny 256, sized for a CPU; "
        "geneformer-6L and base 2048, Geneformer's)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--mask-prob", type=float, default=0.15, help="fraction of genes masked")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, masks and batches")
    p.add_argument(
        "--save-every",
        type=int,
        default=PRETRAIN_STATE_EVERY,
        help="steps between saved training states (beside --out; 0: none), for --resume",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue a killed pretraining from its last state"
    )
    hardware_options(p)


def embed_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    p.add_argument("--model", required=True, help="sclabel model or pretrained folder")
    p.add_argument("--out", required=True, help=".parquet, .npy or .h5ad (obsm) to write")
    p.add_argument("--key-added", default="X_sclabel", help="obsm key / column prefix")
    p.add_argument("--pooling", choices=["mean", "cls"], help="bert: gene-state pooling")
    p.add_argument(
        "--max-len", type=int, help="pretrained models: input size (default: the model's own)"
    )
    p.add_argument(
        "--tokenizer", help="pretrained models: the gene vocabulary's folder, when --model has none"
    )
    p.add_argument("--chunk-size", type=int, default=8192, help="rows read at a time")
    p.add_argument("--genes", help="also write contextual gene embeddings (.csv) here")
    p.add_argument("--max-cells", type=int, default=2000, help="cells for --genes")


def classify_genes_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    p.add_argument("--model", required=True, help="pretrained or fine-tuned bert folder")
    p.add_argument("--labels", required=True, help=".csv/.tsv of genes and their labels")
    p.add_argument("--gene-column", default="gene", help="column of gene ids in --labels")
    p.add_argument("--label-column", default="label", help="column of labels in --labels")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold over genes")
    p.add_argument("--max-cells", type=int, default=2000, help="cells to embed genes in")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds")
    p.add_argument("--out", required=True, help="folder for cv.json and cv.md")


def _columns(value: str | None) -> list[str] | None:
    return None if value is None else [c.strip() for c in value.split(",") if c.strip()]


def run_tokenize(args) -> None:
    from sclabel.foundation.corpus import tokenize
    from sclabel.foundation.vocabulary import GeneTokenizer

    if args.fit:
        tokenizer = GeneTokenizer.fit(args.inputs, max_len=args.max_len)
    elif args.geneformer:
        tokenizer = GeneTokenizer.from_geneformer(args.geneformer)
    else:
        tokenizer = GeneTokenizer.load(args.tokenizer)
    tokenizer.max_len = args.max_len
    store = tokenize(
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
    from sclabel.foundation.pretrain import PretrainConfig, loss_fell, pretrain

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
        save_every=args.save_every,
        **hardware(args),
        progress=not args.quiet,
    )
    result = pretrain(args.corpus, args.out, config, resume=args.resume)
    first, last = loss_fell(result.history)
    print(
        f"{len(result.history)} steps, masked loss {first:.3f} -> {last:.3f}, "
        f"{result.tokens_per_second:,.0f} tokens/s; written to {args.out}"
    )


def run_embed(args) -> None:
    from sclabel.foundation.gene_classify import gene_embeddings
    from sclabel.inference.embed import cell_embeddings, load_embedder, write_embeddings

    embedder = load_embedder(
        args.model, pooling=args.pooling, max_len=args.max_len, tokenizer=args.tokenizer
    )
    adata = read_anndata(args)
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
        from sclabel.io.atomic import atomic_path

        table = gene_embeddings(
            embedder, adata, layer=args.layer, gene_key=args.gene_key, max_cells=args.max_cells
        )
        with atomic_path(args.genes) as tmp:
            table.to_csv(tmp)
        print(f"{len(table)} gene embeddings written to {args.genes}")


def run_classify_genes(args) -> None:
    from sclabel.foundation.gene_classify import classify_genes, gene_embeddings, read_gene_labels
    from sclabel.inference.embed import load_embedder

    if args.folds < 2:
        raise InputError("--folds must be at least 2")
    labels = read_gene_labels(
        args.labels, gene_column=args.gene_column, label_column=args.label_column
    )
    embedder = load_embedder(args.model)
    adata = read_anndata(args)
    table = gene_embeddings(
        embedder, adata, layer=args.layer, gene_key=args.gene_key, max_cells=args.max_cells
    )
    result = classify_genes(table, labels, folds=args.folds, seed=args.seed)
    result.save(args.out)
    print(result.to_markdown(), end="")
    print(f"written to {Path(args.out) / 'cv.json'}")


COMMANDS = [
    Command(
        "tokenize",
        "Rank-value tokenize cells (Geneformer) into a corpus store.",
        "sclabel tokenize atlas.h5ad --geneformer geneformer_v1/ --columns cell_type "
        "--out corpus.store",
        tokenize_arguments,
        run_tokenize,
    ),
    Command(
        "pretrain",
        "Masked pretraining of a BERT or Perceiver on a corpus.",
        "sclabel pretrain corpus.store --arch bert --preset geneformer-6L "
        "--max-steps 100000 --out my-bert",
        pretrain_arguments,
        run_pretrain,
    ),
    Command(
        "embed",
        "Cell (and gene) embeddings from a trained or pretrained model.",
        "sclabel embed query.h5ad --model my-bert --out cells.parquet --genes genes.csv",
        embed_arguments,
        run_embed,
    ),
    Command(
        "classify-genes",
        "Classify genes from their contextual embeddings (k-fold).",
        "sclabel classify-genes cells.h5ad --model my-bert --labels tf_dosage.csv "
        "--folds 5 --out gene-cv/",
        classify_genes_arguments,
        run_classify_genes,
    ),
]
