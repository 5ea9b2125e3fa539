"""Copy detection as in DINO (Copydays protocol): find the originals of edited copies.

Features: the class token concatenated with GeM-pooled (p = 4) patch tokens of the last block,
on images resized to ``imsize x imsize`` (320 by default). Optionally, PCA whitening learned on
a folder of unrelated images (``whitening`` folder) is applied, then features are L2-normalised
and queries are ranked against the database (originals + optional distractors) by cosine
similarity. The score is the mean trapezoidal average precision over queries (percent).

Layout (every folder is searched recursively for images)::

    query/        the copies: crops, colour changes, JPEG artefacts ... of database images
    database/     the originals
    distractors/  optional, unrelated images added to the database
    whitening/    optional, unrelated images to learn the whitening from

Ground truth: by default a query matches the database images with the same file stem
(``query/strong/1234.jpg`` ↔ ``database/1234.png``); ``match_prefix=N`` matches the first ``N``
characters of the stems instead (Copydays' strong block: 4); or a CSV file of ``query,database``
rows (file names, or paths relative to those folders; a header line is allowed).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import find_images
from ..errors import ConfigError, DataError
from .features import check_image_size, extract_features
from .retrieval import compute_map, rank_database
from .transforms import SquareResize

__all__ = ["GemEmbedding", "PCAWhitening", "match_by_name", "read_pairs_csv", "CopyDetectOptions",
           "copy_detection_map", "evaluate_copy_detection"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GemEmbedding:
    """``[B, 3, H, W]`` to ``[B, 2D]``: class token ++ GeM(patch tokens, p), the paper's copy-detection
    feature. A network without ``get_intermediate_layers`` (ResNet) gives GeM of its last feature map."""

    p: float = 4.0

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(model, "get_intermediate_layers"):
            return _gem(model.forward_features(x).flatten(2).transpose(1, 2), self.p)
        tokens = model.get_intermediate_layers(x, 1)[0]
        return torch.cat((tokens[:, 0], _gem(tokens[:, 1:], self.p)), dim=1)


def _gem(tokens: torch.Tensor, p: float) -> torch.Tensor:
    """Generalised mean ``(mean x^p)^(1/p)`` ``[B, D]`` of ``tokens [B, N, D]`` clamped to >= 1e-6,
    computed relative to the maximum so that large ``p`` does not overflow."""
    x = tokens.float().clamp(min=1e-6)
    top = x.amax(dim=1)
    return top * (x / top[:, None]).pow(p).mean(dim=1).pow(1.0 / p)


class PCAWhitening:
    """Centre, rotate onto the principal axes and scale each by ``eigenvalue ** -power``.

    ``fit(feats [N, D])`` learns the mean and the projection from unrelated images; ``apply(x)``
    maps ``[M, D]`` to ``[M, dim]``. ``power = 0.5`` is full whitening, as in DINO; eigenvalues
    below ``1e-5`` of the largest are clamped for stability. ``dim`` defaults to ``D``, or to
    ``N - 1`` (the rank of the covariance) when fewer images than dimensions are given.
    """

    def __init__(self, dim: int | None = None, power: float = 0.5):
        self.dim, self.power = dim, power
        self.mean: torch.Tensor | None = None
        self.proj: torch.Tensor | None = None

    def fit(self, feats: torch.Tensor) -> "PCAWhitening":
        x = feats.double()
        self.mean = x.mean(dim=0)
        x = x - self.mean
        eigval, eigvec = torch.linalg.eigh(x.T @ x / len(x))
        eigval = eigval.clamp(min=float(eigval.max()) * 1e-5)
        dim = self.dim or min(len(eigval), max(1, len(x) - 1))
        order = torch.argsort(eigval, descending=True)[:dim]
        self.proj = eigvec[:, order] * eigval[order].pow(-self.power)
        return self

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            raise RuntimeError("PCAWhitening.apply before fit")
        return ((x.double() - self.mean) @ self.proj).float()


def _stems(paths: Sequence[str | Path], prefix: int | None) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return [s[:prefix] for s in stems] if prefix else stems


def match_by_name(query_paths: Sequence[str | Path], db_paths: Sequence[str | Path],
                  match_prefix: int | None = None) -> list[np.ndarray]:
    """Per query, the database indices with the same file stem (or the same first ``match_prefix``
    characters of the stem)."""
    index: dict[str, list[int]] = {}
    for i, s in enumerate(_stems(db_paths, match_prefix)):
        index.setdefault(s, []).append(i)
    return [np.asarray(index.get(s, []), dtype=np.int64) for s in _stems(query_paths, match_prefix)]


def read_pairs_csv(path: str | os.PathLike, query_paths: Sequence[str | Path], db_paths: Sequence[str | Path],
                   query_root: str | Path, db_root: str | Path) -> list[np.ndarray]:
    """Per query, the database indices paired with it in a ``query,database`` CSV file.

    Entries are file names or paths relative to the query / database folders; rows naming no
    known query in their first column (such as a header) are skipped.
    """
    def keys(paths, root):
        table: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            p = Path(p)
            for key in {p.name, p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name}:
                table.setdefault(key, []).append(i)
        return table

    q_keys, db_keys = keys(query_paths, Path(query_root)), keys(db_paths, Path(db_root))
    positives: list[set[int]] = [set() for _ in query_paths]
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except OSError as e:
        raise DataError(f"cannot read ground-truth CSV {path}: {e}") from None
    if not any(len(r) >= 2 for r in rows):
        raise DataError(f"{path}: no row has two comma-separated columns (query,database)")
    unknown = []
    for row in rows:
        if len(row) < 2 or row[0].strip() not in q_keys:
            continue
        dbs = db_keys.get(row[1].strip())
        if dbs is None:
            unknown.append(row[1].strip())
            continue
        for q in q_keys[row[0].strip()]:
            positives[q].update(dbs)
    if unknown:
        raise DataError(f"{path}: {len(unknown)} database entries are not in the database folder, "
                        f"e.g. {unknown[0]!r}")
    return [np.asarray(sorted(p), dtype=np.int64) for p in positives]


def copy_detection_map(query_feats: torch.Tensor, db_feats: torch.Tensor, positives: Sequence[np.ndarray],
                       whitening: PCAWhitening | None = None) -> dict:
    """``{"mAP": %, "queries": Q, "top1": %}`` of queries ``[Q, D]`` against the database ``[N, D]``.

    ``positives[q]``: database indices that are copies of query ``q``; queries without any are
    left out. ``top1`` is the share of those queries whose nearest database image is a positive.
    """
    if whitening is not None:
        query_feats, db_feats = whitening.apply(query_feats), whitening.apply(db_feats)
    ranks = rank_database(db_feats, query_feats)
    gnd = [{"ok": p, "junk": np.empty(0, dtype=np.int64)} for p in positives]
    m, aps, mpr, _ = compute_map(ranks, gnd, kappas=(1,))
    if np.isnan(m):
        raise DataError("no query has a matching database image: check the file names or the CSV")
    return {"mAP": 100.0 * m, "top1": 100.0 * float(mpr[0]), "queries": int((~np.isnan(aps)).sum())}


@dataclass
class CopyDetectOptions:
    """Image size, GeM power, ground-truth matching and extraction settings."""

    imsize: int = 320
    gem_p: float = 4.0
    match_prefix: int | None = None
    gt_csv: str | None = None
    batch_size: int = 16
    num_workers: int = 0
    precision: str = "auto"
    progress: Callable[[str], Callable[[int, int], None]] | None = None
    distributed: bool = False  # under torchrun: the processes split each extraction (see extract_features)


def evaluate_copy_detection(model: nn.Module, query_dir: str | os.PathLike, database_dir: str | os.PathLike,
                            distractors_dir: str | os.PathLike | None = None,
                            whitening_dir: str | os.PathLike | None = None,
                            opts: CopyDetectOptions | None = None) -> dict:
    """Copy-detection mAP (%) of ``model`` on the folder layout described in this module."""
    opts = opts or CopyDetectOptions()
    if opts.gt_csv and opts.match_prefix:
        raise ConfigError("give either a ground-truth CSV or match_prefix, not both")

    def feats(folder, desc):
        paths = find_images(folder)[0]
        out = extract_features(model, paths, GemEmbedding(opts.gem_p), SquareResize(opts.imsize),
                               batch_size=opts.batch_size, num_workers=opts.num_workers, precision=opts.precision,
                               progress=opts.progress(desc) if opts.progress else None,
                               distributed=opts.distributed)
        return out.features, out.paths

    def pairs(q_paths, db_paths):
        if opts.gt_csv:
            found = read_pairs_csv(opts.gt_csv, q_paths, db_paths, query_dir, database_dir)
        else:
            found = match_by_name(q_paths, db_paths, opts.match_prefix)
        if not any(len(p) for p in found):
            raise DataError("no query has a matching database image: check the file names or the CSV")
        return found

    check_image_size(model, opts.imsize, "imsize")
    pairs(find_images(query_dir)[0], find_images(database_dir)[0])  # before hours of extraction
    if whitening_dir and len(whitening_files := find_images(whitening_dir)[0]) < 2:
        raise _too_few_for_whitening(len(whitening_files))
    q_feats, q_paths = feats(query_dir, "queries")
    db_feats, db_paths = feats(database_dir, "database")
    n_originals = len(db_paths)
    positives = pairs(q_paths, db_paths)  # again: images that fail to decode drop out
    if distractors_dir:
        d_feats, d_paths = feats(distractors_dir, "distractors")
        db_feats, db_paths = torch.cat((db_feats, d_feats)), db_paths + d_paths
    whitening = _fit_whitening(feats(whitening_dir, "whitening")[0]) if whitening_dir else None
    result = copy_detection_map(q_feats, db_feats, positives, whitening)
    return {**result, "database": len(db_paths), "distractors": len(db_paths) - n_originals,
            "whitened": whitening is not None}


def _fit_whitening(feats: torch.Tensor) -> PCAWhitening:
    """PCA whitening of ``feats [N, D]``; with N <= D it keeps N - 1 directions, which can score
    below no whitening at all (the paper learns it on 20,000 images), so that is said."""
    n, dim = feats.shape
    if n < 2:
        raise _too_few_for_whitening(n)
    if n <= dim:
        log.warning("whitening learned from %d images for %d-d features keeps %d directions and may score "
                    "below no whitening: give more images than dimensions (the paper uses 20,000)", n, dim, n - 1)
    return PCAWhitening().fit(feats)


def _too_few_for_whitening(n: int) -> DataError:
    return DataError(f"whitening needs at least 2 images (got {n}); the paper learns it on 20,000")
