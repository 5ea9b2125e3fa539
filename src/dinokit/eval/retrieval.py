"""Image retrieval by cosine similarity, scored with mean average precision (mAP).

Two layouts:

* **Revisited Oxford / Paris** (``roxford5k``, ``rparis6k``): ``<root>/<dataset>/gnd_<dataset>.pkl``
  and ``<root>/<dataset>/jpg/<name>.jpg``. The pickle holds ``imlist``, ``qimlist`` and ``gnd``, one
  dict per query with ``easy``, ``hard``, ``junk`` (database indices) and ``bbx``. It is read with
  an unpickler that only builds plain containers and numpy arrays. mAP is reported for the three
  protocols of Radenović et al. 2018: Easy (positives easy; hard and junk ignored), Medium
  (positives easy + hard; junk ignored), Hard (positives hard; easy and junk ignored).
* **Class folders**: ``query/<class>/*`` and ``gallery/<class>/*``; gallery images of the query's
  class are relevant.

Average precision is the trapezoidal one of the Holidays / revisited evaluation code. Features
are the class token, optionally multi-scale (scales 1, 1/√2, 1/2: averaged, then normalised) as in
the paper; images are shrunk so their longer side is at most ``imsize`` (224 by default).
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageList
from ..errors import DataError
from .features import EmbedFn, Embedding, check_image_size, extract_features
from .transforms import Thumbnail

__all__ = ["average_precision", "compute_map", "revisited_map", "rank_database", "load_gnd", "MultiScale",
           "class_gnd", "RetrievalOptions", "evaluate_revisited", "evaluate_folders"]

KAPPAS = (1, 5, 10)
log = logging.getLogger(__name__)


def average_precision(pos_ranks: Sequence[int], n_pos: int) -> float:
    """AP from the 0-based ranks of the positives (sorted) among ``n_pos`` positives, by trapezoids
    under the precision-recall curve (the Holidays / revisited Oxford-Paris definition)."""
    ap = 0.0
    for j, rank in enumerate(pos_ranks):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) / (2.0 * n_pos)
    return ap


def compute_map(ranks: np.ndarray, gnd: Sequence[dict], kappas: Sequence[int] = KAPPAS):
    """``(mAP, aps [Q], mP@k [len(kappas)], P@k [Q, len(kappas)])`` of a ranking.

    ``ranks [n_db, Q]``: column ``q`` lists database indices from most to least similar.
    ``gnd[q]``: ``{"ok": positives, "junk": ignored}``. Junk images are removed from the ranking
    before scoring; queries without positives are left out of the means (their AP is NaN).
    """
    n_q = len(gnd)
    aps = np.full(n_q, np.nan)
    prs = np.full((n_q, len(kappas)), np.nan)
    for q in range(n_q):
        ok = np.asarray(gnd[q]["ok"], dtype=np.int64).ravel()
        if ok.size == 0:
            continue
        junk = np.asarray(gnd[q].get("junk", []), dtype=np.int64).ravel()
        pos = np.flatnonzero(np.isin(ranks[:, q], ok))
        junk_pos = np.flatnonzero(np.isin(ranks[:, q], junk))
        pos = pos - np.searchsorted(junk_pos, pos)  # junk ranked before a positive does not count
        aps[q] = average_precision(pos.tolist(), len(ok))
        if pos.size == 0:  # positives that are not in the database at all
            prs[q] = 0.0
            continue
        pos1 = pos + 1
        for j, kappa in enumerate(kappas):
            kq = min(int(pos1.max()), kappa)
            prs[q, j] = (pos1 <= kq).sum() / kq
    valid = ~np.isnan(aps)
    if not valid.any():
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


def revisited_map(ranks: np.ndarray, gnd: Sequence[dict], kappas: Sequence[int] = KAPPAS) -> dict:
    """mAP and mP@k in percent for the Easy, Medium and Hard protocols of revisited Oxford / Paris.

    ``gnd[q]`` holds ``easy``, ``hard``, ``junk`` database indices. Returns
    ``{"easy": {"mAP": ..., "mP@1": ...}, "medium": {...}, "hard": {...}}``.
    """
    def cat(q, *keys):
        return np.concatenate([np.asarray(q.get(key, []), dtype=np.int64).ravel() for key in keys])

    protocols = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
                 "hard": (("hard",), ("junk", "easy"))}
    out = {}
    for name, (ok, junk) in protocols.items():
        gnd_t = [{"ok": cat(q, *ok), "junk": cat(q, *junk)} for q in gnd]
        m, _, mpr, _ = compute_map(ranks, gnd_t, kappas)
        out[name] = {"mAP": 100.0 * m, **{f"mP@{k}": 100.0 * p for k, p in zip(kappas, mpr)}}
    return out


def rank_database(db_feats: torch.Tensor, query_feats: torch.Tensor) -> np.ndarray:
    """``ranks [n_db, Q]``: database indices by decreasing cosine similarity to each query."""
    db, q = F.normalize(db_feats.float(), dim=1), F.normalize(query_feats.float(), dim=1)
    return torch.argsort(-(db @ q.T), dim=0, stable=True).cpu().numpy()


class _SafeUnpickler(pickle.Unpickler):
    """Builds only plain Python containers and numpy arrays / scalars, never arbitrary objects."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    } | {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "complex")}

    def find_class(self, module: str, name: str):
        if module == "__builtin__":  # protocol 0-2 pickles name Python 2's module
            module = "builtins"
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain containers and numpy "
                                     f"arrays are allowed in a ground-truth file")


def load_gnd(path: str | os.PathLike) -> dict:
    """Read a revisited Oxford / Paris ground-truth pickle (``gnd_roxford5k.pkl`` ...) safely.

    Returns the dict with ``imlist``, ``qimlist`` and ``gnd``; raises ``DataError`` for anything else.
    """
    try:
        data = Path(path).read_bytes()
        cfg = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"cannot read ground truth {path}: {e}") from None
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise DataError(f"{path} is not a revisited Oxford/Paris ground truth (needs imlist, qimlist, gnd)")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise DataError(f"{path}: {len(cfg['gnd'])} gnd entries for {len(cfg['qimlist'])} queries")
    return cfg


@dataclass(frozen=True)
class MultiScale:
    """Average of ``embed`` at scales 1, 1/√2 and 1/2 (bilinear resizing), L2-normalised per image."""

    embed: EmbedFn = Embedding()
    scales: tuple[float, ...] = (1.0, 1 / math.sqrt(2), 0.5)

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for s in self.scales:
            inp = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            total = total + self.embed(model, inp).float()
        return F.normalize(total / len(self.scales), dim=1)


def class_gnd(query_classes: Sequence[str], gallery_classes: Sequence[str]) -> list[dict]:
    """``gnd`` for class folders: the gallery images of each query's class are its positives."""
    gallery = np.asarray(gallery_classes)
    return [{"ok": np.flatnonzero(gallery == c), "junk": np.empty(0, dtype=np.int64)} for c in query_classes]


@dataclass
class RetrievalOptions:
    """How images become features: longer side at most ``imsize``, optional multi-scale, and the
    extraction settings of ``extract_features``."""

    imsize: int = 224
    multiscale: bool = False
    batch_size: int = 1
    num_workers: int = 0
    precision: str = "auto"
    progress: Callable[[str], Callable[[int, int], None]] | None = None  # description -> progress(done, total)
    distributed: bool = False  # under torchrun: the processes split each extraction (see extract_features)


def _features(model: nn.Module, images, opts: RetrievalOptions, desc: str):
    check_image_size(model, opts.imsize, "imsize")
    embed = MultiScale() if opts.multiscale else Embedding()
    return extract_features(model, images, embed, Thumbnail(opts.imsize), batch_size=opts.batch_size,
                            num_workers=opts.num_workers, precision=opts.precision,
                            progress=opts.progress(desc) if opts.progress else None, distributed=opts.distributed)


def evaluate_revisited(model: nn.Module, root: str | os.PathLike, dataset: str = "roxford5k",
                       opts: RetrievalOptions | None = None) -> dict:
    """Revisited Oxford / Paris mAP (%) of ``model`` for Easy / Medium / Hard.

    Queries are used whole, as in DINO's ``eval_image_retrieval.py`` (not cropped to ``bbx``).
    """
    opts = opts or RetrievalOptions()
    base = Path(root) / dataset
    gnd_path = base / f"gnd_{dataset}.pkl"
    if not gnd_path.is_file():
        raise DataError(f"no ground truth at {gnd_path} (expected <data_path>/{dataset}/gnd_{dataset}.pkl)")
    cfg = load_gnd(gnd_path)
    images = base / "jpg"

    def listed(names):
        paths = [images / f"{n}.jpg" for n in names]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} listed images are missing below {images}, e.g. {missing[0]}")
        return ImageList(paths, [0] * len(paths), [""], images)

    db = _features(model, listed(cfg["imlist"]), opts, "database")
    queries = _features(model, listed(cfg["qimlist"]), opts, "queries")
    _require_all(db, "database")
    _require_all(queries, "query")
    return revisited_map(rank_database(db.features, queries.features), cfg["gnd"])


def evaluate_folders(model: nn.Module, query_dir: str | os.PathLike, gallery_dir: str | os.PathLike,
                     opts: RetrievalOptions | None = None) -> dict:
    """mAP and mP@k (%) of class-folder retrieval: ``{"mAP": ..., "mP@1": ..., "queries": Q}``."""
    opts = opts or RetrievalOptions()
    query_list, gallery_list = ImageList.from_folder(query_dir), ImageList.from_folder(gallery_dir)
    if not (query_list.has_labels and gallery_list.has_labels):
        raise DataError("query and gallery folders need class sub-folders (<dir>/<class>/*.jpg)")
    _check_shared_classes(query_list.classes, gallery_list.classes)
    queries = _features(model, query_list, opts, "queries")
    gallery = _features(model, gallery_list, opts, "gallery")
    gnd = class_gnd([queries.classes[i] for i in queries.labels], [gallery.classes[i] for i in gallery.labels])
    m, aps, mpr, _ = compute_map(rank_database(gallery.features, queries.features), gnd)
    if math.isnan(m):
        raise DataError("no query has a decodable gallery image of its class: nothing to score")
    return {"mAP": 100.0 * m, **{f"mP@{k}": 100.0 * p for k, p in zip(KAPPAS, mpr)},
            "queries": int((~np.isnan(aps)).sum())}


def _check_shared_classes(query_classes: Sequence[str], gallery_classes: Sequence[str]) -> None:
    """Fail before extraction if no query class has gallery images; log the classes left out."""
    missing = sorted(set(query_classes) - set(gallery_classes))
    if len(missing) == len(set(query_classes)):
        raise DataError(f"no query class has a gallery folder (query classes {', '.join(missing[:5])}; "
                        f"gallery classes {', '.join(sorted(gallery_classes)[:5])})")
    if missing:
        log.warning("queries of %d classes without a gallery folder are left out: %s",
                    len(missing), ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))


def _require_all(feats, what: str) -> None:
    if feats.skipped:
        raise DataError(f"{len(feats.skipped)} {what} images could not be decoded (the ground truth indexes "
                        f"every image), e.g. {next(iter(feats.skipped.values()))}")
