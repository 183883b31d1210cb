"""CellTypist's published models by name: list, download, verify, convert, keep.

    sclabel models list
    sclabel models get Immune_All_Low
    sclabel predict query.h5ad --model celltypist:Immune_All_Low

CellTypist publishes an index (`models.json`: {"models": [{"filename", "url", "details",
"version", "date", "No_celltypes", "default", ...}]}) and one pickle per model. Here the index
is fetched (and cached, so `list` works offline afterwards), a model file is downloaded to
`<cache>/celltypist/files/<filename>.part` and renamed only once complete and verified (its
size against Content-Length, and its MD5 or SHA-256 when the index gives one), an interrupted
download is resumed with an HTTP Range request, and the file is converted once with the safe
import (`sclabel.inference.celltypist`: no pickle code runs) into a checkpoint kept at
`<cache>/celltypist/<name>/`. The cache is `~/.cache/sclabel` unless SCLABEL_CACHE says
otherwise; the index URL can be changed with SCLABEL_CELLTYPIST_INDEX (tests point both at a
server on 127.0.0.1 serving the same layout).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from sclabel.errors import InputError

log = logging.getLogger("sclabel")
INDEX_URL = "https://celltypist.cog.sanger.ac.uk/models/models.json"
PREFIX = "celltypist:"
TIMEOUT_S = 30
BLOCK = 1 << 20


def cache_dir(cache: str | Path | None = None) -> Path:
    default = os.environ.get("SCLABEL_CACHE") or Path.home() / ".cache" / "sclabel"
    return Path(cache or default) / "celltypist"


def index_url(url: str | None = None) -> str:
    return url or os.environ.get("SCLABEL_CELLTYPIST_INDEX") or INDEX_URL


def _offline(url: str, err: Exception) -> InputError:
    reason = getattr(err, "reason", None) or err
    return InputError(
        f"cannot download {url} ({reason}); check the network connection (or a proxy), or "
        "download the .pkl by hand and run `sclabel import-celltypist FILE --out DIR`"
    )


def _open(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": "sclabel", **(headers or {})})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (http/https)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise _offline(url, err) from err


def fetch_index(*, url: str | None = None, cache: str | Path | None = None) -> list[dict]:
    """The published model list; the cached copy when the server cannot be reached."""
    url = index_url(url)
    saved = cache_dir(cache) / "models.json"
    try:
        with _open(url) as response:
            content = json.loads(response.read())
    except InputError as err:
        if not saved.is_file():
            raise
        log.warning("%s; using the model list cached at %s", str(err).split(";")[0], saved)
        content = json.loads(saved.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{url} is not CellTypist's model index (not JSON: {err})") from err
    models = content.get("models") if isinstance(content, dict) else None
    if not isinstance(models, list) or not all("filename" in m and "url" in m for m in models):
        raise InputError(f"{url} is not CellTypist's model index (no models with filename/url)")
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(content))
    tmp.replace(saved)
    return models


def model_name(entry: dict) -> str:
    return str(entry["filename"]).removesuffix(".pkl")


def list_models(*, url: str | None = None, cache: str | Path | None = None) -> pd.DataFrame:
    """One row per published model: name, cell types, version, date, details, downloaded."""
    models, root = fetch_index(url=url, cache=cache), cache_dir(cache)
    rows = [
        {
            "name": model_name(m),
            "cell_types": m.get("No_celltypes"),
            "version": m.get("version"),
            "date": m.get("date"),
            "default": bool(m.get("default", False)),
            "downloaded": (root / model_name(m) / "config.json").is_file(),
            "details": m.get("details", ""),
        }
        for m in models
    ]
    return pd.DataFrame(rows)


def _find(name: str, models: list[dict]) -> dict:
    wanted = name.removeprefix(PREFIX).removesuffix(".pkl")
    by_name = {model_name(m).lower(): m for m in models}
    if wanted.lower() in by_name:
        return by_name[wanted.lower()]
    names = [model_name(m) for m in models]
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `sclabel models list`"
    raise InputError(f"no CellTypist model named {wanted!r}; {hint}")


def _download(entry: dict, target: Path) -> None:
    """Download entry['url'] to `target`, through target.part, resuming a partial file."""
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    url = str(entry["url"])
    with _open(url, headers) as response:
        resumed = have and response.status == 206
        if have and not resumed:
            log.info("the server does not resume downloads; downloading %s again", url)
        expected = response.headers.get("Content-Length")
        total = (have if resumed else 0) + int(expected) if expected is not None else None
        try:
            with part.open("ab" if resumed else "wb") as out:
                while block := response.read(BLOCK):
                    out.write(block)
        except (OSError, TimeoutError, http.client.HTTPException) as err:
            log.info("download interrupted: %s", err)  # the size check below says what to do
    size = part.stat().st_size
    if total is not None and size != total:
        msg = (
            f"the download of {url} stopped at {size:,} of {total:,} bytes; run the same "
            "command again to resume it"
        )
        raise InputError(msg)
    _verify(part, entry)
    part.replace(target)


def _verify(path: Path, entry: dict) -> None:
    for algorithm in ("sha256", "md5"):
        expected = entry.get(algorithm) or entry.get(algorithm.upper())
        if expected:
            digest = hashlib.new(algorithm, path.read_bytes()).hexdigest()
            if digest != str(expected).lower():
                path.unlink()
                msg = f"{entry['url']}: {algorithm} {digest} does not match the index's {expected}"
                raise InputError(msg + "; the file was deleted, run the command again")


def fetch(name: str, *, url: str | None = None, cache: str | Path | None = None) -> Path:
    """The converted checkpoint folder of a published CellTypist model (downloaded and
    converted on first use, then read from the cache)."""
    root = cache_dir(cache)
    wanted = name.removeprefix(PREFIX).removesuffix(".pkl")
    for folder in (root / wanted, *(p for p in root.glob("*") if p.name.lower() == wanted.lower())):
        if (folder / "config.json").is_file():
            return folder
    entry = _find(name, fetch_index(url=url, cache=cache))
    target = root / "files" / str(entry["filename"])
    if not target.is_file():
        log.info("downloading %s", entry["url"])
        _download(entry, target)
    from sclabel.inference.celltypist import import_celltypist

    model = import_celltypist(target)
    model.metrics["imported_from"].update(_provenance(entry, target))
    folder = root / model_name(entry)
    model.save(folder)
    log.info("converted %s to %s", target.name, folder)
    return folder


def _provenance(entry: dict, target: Path) -> dict[str, Any]:
    from sclabel.io.digest import sha256_file

    keys = ("url", "version", "date", "details")
    info = {"sha256": sha256_file(target), **{k: entry[k] for k in keys if k in entry}}
    if "source" in entry:  # CellTypist's index: the publication the model comes from
        info["publication"] = entry["source"]
    return info
