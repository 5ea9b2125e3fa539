"""Weighted k-nearest-neighbour classification of frozen features, as evaluated in DINO.

Features are L2-normalised; the ``k`` training images most similar (cosine) to a test image vote
for their class with weight ``exp(sim / T)``, ``T = 0.07`` (Wu et al. 2018). Accuracies are in
percent. Test rows are processed in chunks, so a ``50,000 x 10,000`` similarity matrix never exists
at once. On CPUs with native bf16 the similarities are first computed in bf16 to shortlist
candidates, which are then rescored in fp32; a row whose shortlist cannot be proven (by a rounding
error bound) to hold the fp32 top-k is recomputed in fp32, so results equal the fp32 computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..runtime import resolve_precision

__all__ = ["DEFAULT_KS", "knn_neighbors", "knn_votes", "knn_predict", "knn_evaluate", "knn_classify"]

DEFAULT_KS = (10, 20, 100, 200)
_BF16_UNIT_ROUNDOFF = 2.0 ** -8
_CHUNK_BYTES = 256 << 20      # fp32 similarity block of one chunk of test rows
_BF16_MAX_AUTO_K = 64         # "auto" uses the bf16 shortlist up to this k


@torch.no_grad()
def knn_neighbors(train_feats: torch.Tensor, test_feats: torch.Tensor, k: int, *, precision: str = "auto",
                  chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-``k`` neighbours of each test row among the training rows.

    ``train_feats [N, D]``, ``test_feats [M, D]`` (any scale: rows are L2-normalised here).
    Returns ``(sims [M, k'], index [M, k'])``, similarities in descending order, ``k' = min(k, N)``,
    on ``train_feats``' device. ``precision``: ``"fp32"``, or ``"bf16"`` (on CPU: bf16 shortlist +
    exact fp32 rescoring, same result; GPUs always run fp32), ``"auto"`` = bf16 on CPUs with native
    bf16 for ``k <= 64`` (where it is about twice as fast), fp32 otherwise. ``chunk_size`` test rows
    are handled at a time (default: a 256 MB fp32 similarity block).
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    train_feats, test_feats = torch.as_tensor(train_feats), torch.as_tensor(test_feats)
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise DataError(f"feature shapes do not match: train {tuple(train_feats.shape)}, "
                        f"test {tuple(test_feats.shape)}")
    if len(train_feats) == 0 or len(test_feats) == 0:
        raise DataError("k-NN needs at least one training and one test feature")
    device = train_feats.device
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.to(device).float(), dim=1)
    k = min(k, len(train))
    if precision == "auto" and k > _BF16_MAX_AUTO_K:
        precision = "fp32"  # a long shortlist costs more to rescore than fp32 saves
    precision = resolve_precision(precision, device)
    # GPU bf16 GEMMs may reduce in bf16 (which the error bound does not cover); fp32 is fast there.
    shortlist = precision == "bf16" and device.type == "cpu" and k < len(train)
    search = _Bf16Search(train, k) if shortlist else _Fp32Search(train, k)
    chunk = chunk_size or max(1, min(4096, _CHUNK_BYTES // (4 * len(train))))
    sims, index = zip(*(search(test[i:i + chunk]) for i in range(0, len(test), chunk)))
    return torch.cat(sims), torch.cat(index)


class _Fp32Search:
    """Exact fp32 similarities, written into one reused buffer (fresh 100 MB blocks cost page faults)."""

    def __init__(self, train: torch.Tensor, k: int):
        self.train, self.k = train, k
        self.buf = torch.empty(0, device=train.device)

    def __call__(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _mm_into(self, "buf", q, self.train).topk(self.k, dim=1)


class _Bf16Search:
    """bf16 shortlist of ``n_cand`` candidates per row, fp32 rescoring, certified or recomputed.

    With ``a``, ``b`` the fp32 rows, ``â``, ``b̂`` their bf16 roundings and ``ŝ`` the bf16 product
    (fp32 accumulation, one final rounding): ``|a·b - â·b̂| <= |a-â||b̂| + |â||b-b̂| + |a-â||b-b̂|``,
    accumulation adds at most ``γ|â||b̂|`` (``γ = D 2^-24``), and ``ŝ <= c`` implies
    ``â·b̂ <= c / (1 ∓ u)``. So a training row left out of the shortlist (``ŝ <= c``, the
    shortlist's smallest value) has ``a·b <= bound``; when ``bound`` is below the k-th rescored
    similarity, the shortlist holds the exact top-k. Rows where it is not are redone in fp32.
    The shortlist grows while more than 5% of a chunk's rows need redoing; if half of them still
    do at the largest shortlist, the remaining chunks go straight to fp32.
    """

    def __init__(self, train: torch.Tensor, k: int):
        self.train, self.k = train, k
        self.train_bf = train.bfloat16()
        rounded = self.train_bf.float()
        self.b_max = float(rounded.norm(dim=1).max())
        self.rb_max = float((train - rounded).norm(dim=1).max())
        self.gamma = train.shape[1] * 2.0 ** -24
        self.n_cand = min(len(train), k + max(16, k // 4))
        self.max_cand = min(len(train), 4 * k + 64)
        self.fp32 = _Fp32Search(train, k)
        self.use_fp32 = False
        self.recomputed = 0
        self.sims = torch.empty(0, dtype=torch.bfloat16, device=train.device)
        self.gathered = torch.empty(0, device=train.device)

    def __call__(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.use_fp32:
            return self.fp32(q)
        q_bf = q.bfloat16()
        approx, cand = _mm_into(self, "sims", q_bf, self.train_bf).topk(self.n_cand, dim=1)
        sims, pos = self._rescore(q, cand).topk(self.k, dim=1)
        index = cand.gather(1, pos)
        if self.n_cand < len(self.train):
            redo = (self._bound(q, q_bf, approx[:, -1].float()) >= sims[:, -1]).nonzero().squeeze(1)
            if len(redo):
                sims[redo], index[redo] = self.fp32(q[redo])
                self.recomputed += len(redo)
                self._adapt(len(redo) / len(q))
        return sims, index

    def _adapt(self, redo_fraction: float) -> None:
        if redo_fraction > 0.05 and self.n_cand < self.max_cand:
            self.n_cand = min(self.max_cand, 2 * self.n_cand)
        elif redo_fraction > 0.5:
            self.use_fp32 = True

    def _rescore(self, q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """fp32 similarities ``[c, n]`` of ``q [c, D]`` with its candidates ``cand [c, n]``."""
        (c, n), d = cand.shape, q.shape[1]
        if self.gathered.numel() < c * n * d:
            self.gathered = torch.empty(c * n * d, device=q.device)
        rows = self.gathered[:c * n * d].view(c * n, d)
        torch.index_select(self.train, 0, cand.reshape(-1), out=rows)
        return torch.bmm(rows.view(c, n, d), q.unsqueeze(2)).squeeze(2)

    def _bound(self, q: torch.Tensor, q_bf: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Upper bound ``[c]`` of the fp32 similarity of any training row outside the shortlist."""
        u = _BF16_UNIT_ROUNDOFF
        q_round = q_bf.float()
        ra, na = (q - q_round).norm(dim=1), q_round.norm(dim=1)
        e_in = ra * self.b_max + na * self.rb_max + ra * self.rb_max
        e_acc = 2 * self.gamma * na * self.b_max  # bf16 product accumulation + fp32 rescoring
        return torch.where(c >= 0, c / (1 - u), c / (1 + u)) + e_in + e_acc + 1e-30


def _mm_into(owner, name: str, q: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """``q @ train.T`` written into ``owner.<name>``, a buffer grown on demand and reused."""
    buf = getattr(owner, name)
    size = len(q) * len(train)
    if buf.numel() < size:
        buf = torch.empty(size, dtype=q.dtype, device=q.device)
        setattr(owner, name, buf)
    return torch.mm(q, train.T, out=buf[:size].view(len(q), len(train)))


def knn_votes(sims: torch.Tensor, index: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
              T: float = 0.07) -> torch.Tensor:
    """Class scores ``[M, C]``: ``sum`` over the neighbours ``index [M, k]`` of ``exp(sims [M, k] / T)``
    added to each neighbour's class ``train_labels [N]``."""
    if not T > 0:  # exp(sim / 0) is inf for every neighbour: every vote the same
        raise ConfigError(f"the k-NN temperature must be positive, got {T}")
    labels = train_labels.to(index.device)[index]
    weights = (sims / T).exp()
    return torch.zeros(len(sims), num_classes, dtype=weights.dtype, device=weights.device).scatter_add_(
        1, labels, weights)


def _labels(labels) -> torch.Tensor:
    """Integer class labels ``[N]`` from a tensor, a NumPy array or a list."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise DataError("class labels must be whole numbers")
    if len(labels) and int(labels.min()) < 0:
        raise DataError(f"class labels must be 0, 1, 2 ..., got {int(labels.min())}")
    return labels.long()


def _num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    return num_classes or int(max(int(lab.max()) for lab in labels if len(lab))) + 1


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 20,
                T: float = 0.07, num_classes: int | None = None, *, precision: str = "auto") -> torch.Tensor:
    """Predicted class ``[M]`` of each test row (the class with the largest weighted vote)."""
    train_labels = _labels(train_labels)
    sims, index = knn_neighbors(train_feats, test_feats, k, precision=precision)
    return knn_votes(sims, index, train_labels, _num_classes(num_classes, train_labels), T).argmax(dim=1)


def knn_evaluate(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, ks: Sequence[int] = DEFAULT_KS, T: float = 0.07,
                 num_classes: int | None = None, *, precision: str = "auto",
                 chunk_size: int | None = None) -> dict[int, dict[str, float]]:
    """``{k: {"top1": %, "top5": %}}`` for every ``k`` in ``ks``, from one neighbour search.

    ``train_feats [N, D]``, ``train_labels [N]`` int, ``test_feats [M, D]``, ``test_labels [M]``.
    Top-5 counts the first ``min(5, k)`` predicted classes, as the release does, among those that
    received votes (the release also counted vote-less classes in arbitrary order when ``k < 5``
    neighbours covered fewer than 5 classes). NumPy arrays and lists are accepted too.
    """
    train_labels, test_labels = _labels(train_labels), _labels(test_labels)
    if len(train_labels) != len(train_feats) or len(test_labels) != len(test_feats):
        raise DataError(f"{len(train_feats)} train / {len(test_feats)} test features but "
                        f"{len(train_labels)} / {len(test_labels)} labels")
    if len(train_labels) and bool((train_labels == train_labels[0]).all()):  # every vote right: 100% says nothing
        raise DataError("k-NN accuracy needs at least 2 classes among the train images: put them in class "
                        "sub-folders (<dir>/<class>/*.jpg)")
    sims, index = knn_neighbors(train_feats, test_feats, max(ks), precision=precision, chunk_size=chunk_size)
    n_cls = _num_classes(num_classes, train_labels, test_labels)
    target = test_labels.to(index.device).view(-1, 1)
    out = {}
    for k in ks:
        votes = knn_votes(sims[:, :k], index[:, :k], train_labels, n_cls, T)
        scores, pred = votes.topk(min(5, k, n_cls), dim=1)
        correct = (pred == target) & (scores > 0)  # a class without votes is no prediction
        n = len(correct)
        out[k] = {"top1": 100.0 * correct[:, 0].sum().item() / n,
                  "top5": 100.0 * correct.any(dim=1).sum().item() / n}
    return out


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, T: float = 0.07, num_classes: int | None = None, *,
                 precision: str = "auto", chunk_size: int | None = None) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of the weighted ``k``-NN classifier (shapes as ``knn_evaluate``)."""
    return knn_evaluate(train_feats, train_labels, test_feats, test_labels, (k,), T, num_classes,
                        precision=precision, chunk_size=chunk_size)[k]
