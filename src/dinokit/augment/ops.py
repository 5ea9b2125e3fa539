"""Batched augmentation primitives that run on the training device.

Conventions: an image batch is a float tensor ``x [n, 3, H, W]`` (channels first) with values in
``[0, bound]``; the DINO pipeline uses ``bound=255`` so that the uint8 canvas is converted once,
without scaling. Per-sample parameters are tensors ``[n]`` on the device of ``x``; index arguments
(``idx``) are ``long [m]`` rows of ``x``. Only the ``*_params`` helpers draw random numbers, from
the ``torch.Generator`` they are given. Colour ops follow torchvision's tensor definitions
(``torchvision.transforms.functional``) except that grayscale uses PIL's 0.299/0.587/0.114 weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["RRC_TRIES", "RRC_NUM_RAND", "random_resized_crop_params", "crop_resize_flip",
           "rgb_to_grayscale", "adjust_brightness", "adjust_contrast", "adjust_saturation",
           "adjust_hue", "jitter_plan", "color_jitter", "gaussian_kernel1d", "gaussian_blur",
           "solarize", "grayscale3", "apply_rows", "normalize_into"]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
RRC_TRIES = 10
RRC_NUM_RAND = 2 * RRC_TRIES + 2  # uniforms per box: area and log-ratio per try, then top and left


def random_resized_crop_params(hw: torch.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                               generator: torch.Generator | None = None,
                               rand: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for every image at once.

    ``hw [n, 2]``: valid (height, width) of each image, any device; ``scale``: area fraction
    bounds, a pair or ``[n, 2]`` per box. ``rand [n, RRC_NUM_RAND]``:
    uniforms in [0, 1) (drawn from ``generator`` when omitted). Each image tries ``RRC_TRIES``
    (area fraction, log aspect ratio) pairs and takes the first box that fits, else the centre
    crop at the nearest allowed ratio. Returns ``float32 [n, 4]`` = (top, left, height, width),
    integer valued, inside ``[0, H) x [0, W)``; on ``hw``'s device.
    """
    if rand is None:
        rand = torch.rand(hw.shape[0], RRC_NUM_RAND, generator=generator)
    rand = rand.to(hw.device, torch.float32, non_blocking=True)
    H, W = hw[:, 0:1].float().clamp_min(1), hw[:, 1:2].float().clamp_min(1)
    scale = torch.as_tensor(scale, dtype=torch.float32).to(hw.device, non_blocking=True).reshape(-1, 2)
    target = H * W * torch.lerp(scale[:, 0:1], scale[:, 1:2], rand[:, :RRC_TRIES])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * rand[:, RRC_TRIES:2 * RRC_TRIES])
    w, h = (target * aspect).sqrt().round(), (target / aspect).sqrt().round()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first fitting try (0 when none fits)
    found = ok.any(1, keepdim=True)
    in_ratio = W / H
    fh = torch.where(in_ratio < min(ratio), (W / min(ratio)).round(), H)
    fw = torch.where(in_ratio > max(ratio), (H * max(ratio)).round(), W)
    h = torch.where(found, h.gather(1, first), fh).clamp(1, None)
    w = torch.where(found, w.gather(1, first), fw).clamp(1, None)
    u_top, u_left = rand[:, -2:-1], rand[:, -1:]
    top = torch.where(found, (u_top * (H - h + 1)).floor().clamp(max=H - h), ((H - h) / 2).floor())
    left = torch.where(found, (u_left * (W - w + 1)).floor().clamp(max=W - w), ((W - w) / 2).floor())
    return torch.cat([top, left, h, w], 1)


def _taps(start: torch.Tensor, length: torch.Tensor, size: int, flip: torch.Tensor | None = None):
    """Bilinear source taps of resizing ``[start, start + length)`` to ``size`` pixels.

    ``start``, ``length``, ``flip``: ``[n]``. Returns ``(i0, i1, frac)`` ``[n, size]``: output pixel
    ``j`` is ``(1 - frac) * in[i0] + frac * in[i1]``, pixel centres aligned, taps kept in the box.
    """
    j2 = torch.arange(1, 2 * size, 2, device=start.device, dtype=torch.float32)  # 2j + 1
    if flip is not None:
        j2 = torch.where(flip[:, None], 2 * size - j2, j2)
    start, last = start[:, None], (start + length - 1)[:, None]
    pos = torch.minimum(torch.maximum(start + j2 * length[:, None] / (2 * size) - 0.5, start), last)
    i0 = pos.floor()
    return i0.long(), torch.minimum(i0 + 1, last).long(), pos - i0


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int,
                     src: torch.Tensor | None = None) -> torch.Tensor:
    """Crop ``boxes``, resize to ``size x size`` (bilinear) and mirror where ``flip``.

    ``images`` float ``[B, C, H, W]``; ``boxes [n, 4]`` (top, left, height, width) in pixels,
    ``flip`` bool ``[n]`` and ``src`` long ``[n]``, the image of each crop (default ``arange(n) % B``:
    crop-major, row ``k*B + b`` is the k-th crop of image b). Sampling is at pixel centres
    (``align_corners=False``: a resize of the cropped image, no antialias) with the taps clamped to
    the box, so nothing outside it leaks in -- equal to ``F.interpolate(crop, mode="bilinear")``
    and to one bilinear ``grid_sample``, but separable: a row gather + lerp, then a column pass
    (a batched matmul on CPUs for small images, a gather + lerp elsewhere). Returns
    ``[n, C, size, size]``.
    """
    B, C, H, W = images.shape
    n, dev = boxes.shape[0], images.device
    top, left, h, w = boxes.to(dev, torch.float32).unbind(1)
    src = torch.arange(n, device=dev) % B if src is None else src.to(dev, non_blocking=True)
    y0, y1, fy = _taps(top, h, size)
    x0, x1, fx = _taps(left, w, size, flip.to(dev, non_blocking=True))
    base = ((src * C)[:, None] + torch.arange(C, device=dev)) * H  # first row of each (crop, channel)
    rows = images.reshape(B * C * H, W)
    r = rows.index_select(0, (base[:, :, None] + y0[:, None]).flatten())
    r = r.lerp_(rows.index_select(0, (base[:, :, None] + y1[:, None]).flatten()),
                fy[:, None, :].expand(n, C, size).reshape(-1, 1))
    r = r.view(n, C, size, W)
    if dev.type == "cpu" and W <= 64:
        m = torch.zeros(n, W, size, device=dev)
        m.scatter_add_(1, x0[:, None], (1 - fx)[:, None]).scatter_add_(1, x1[:, None], fx[:, None])
        return torch.bmm(r.view(n, C * size, W), m).view(n, C, size, size)
    i0, i1 = (i.view(n, 1, 1, size).expand(n, C, size, size) for i in (x0, x1))
    return r.gather(3, i0).lerp_(r.gather(3, i1), fx.view(n, 1, 1, size))


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """``[n, 3, H, W]`` -> luma ``[n, 1, H, W]`` = 0.299 R + 0.587 G + 0.114 B."""
    r, g, b = x.unbind(1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _const(values, like: torch.Tensor) -> torch.Tensor:
    """A small constant on ``like``'s device and dtype, copied without waiting for the device."""
    return torch.tensor(values, dtype=like.dtype).to(like.device, non_blocking=True)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other, factor: torch.Tensor, bound: float) -> torch.Tensor:
    f = _col(factor).to(x.dtype)
    return (f * x + (1 - f) * other).clamp_(0, bound)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor, bound: float = 255.0) -> torch.Tensor:
    """``clamp(factor * x)``: blend with black; ``factor [n]``."""
    return (x * _col(factor).to(x.dtype)).clamp_(0, bound)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, bound: float = 255.0) -> torch.Tensor:
    """Blend with the mean luma of each image; ``factor [n]``."""
    return _blend(x, rgb_to_grayscale(x).mean((1, 2, 3), keepdim=True), factor, bound)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor, bound: float = 255.0) -> torch.Tensor:
    """Blend with the per-pixel luma; ``factor [n]``."""
    return _blend(x, rgb_to_grayscale(x), factor, bound)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate the HSV hue by ``factor [n]`` turns (in [-0.5, 0.5]); value and saturation kept.

    Hue in sixths ``h6`` as torchvision (max channel R, then G, then B decides the sector); then
    the closed form of HSV->RGB: ``c = min + chroma * clamp(|((h6 + n_c) mod 6) - 2| - 1, 0, 1)``
    with ``n_c = 5, 3, 1`` for R, G, B. Branch-free arithmetic only (boolean masks and
    ``torch.where`` are slow on CPUs). ``out`` may be ``x``.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    # sector numerators times chroma; sign(max - c) is 0 where channel c is the max, else 1
    h6 = torch.lerp(g - b, torch.lerp((b - r).add_(chroma, alpha=2.0), (r - g).add_(chroma, alpha=4.0),
                                      torch.sign(maxc - g)), torch.sign(maxc - r))
    # (h6 / 6 + shift + n_c / 6 + 2) mod 1 (kept positive for frac)
    turns = torch.addcdiv(_col(factor).to(x.dtype)[:, 0], h6, chroma.clamp_min(1e-6), value=1 / 6)
    t = (turns.unsqueeze(1) + _const([5 / 6 + 2, 3 / 6 + 2, 1 / 6 + 2], x).view(1, 3, 1, 1)).frac_()
    t = t.sub_(1 / 3).abs_().clamp_(1 / 6, 1 / 3)
    chroma = chroma.unsqueeze(1)
    return torch.addcmul((minc.unsqueeze(1) - chroma), t, chroma, value=6.0, out=out)


def jitter_plan(factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor):
    """Host-side plan of a per-sample ColorJitter with a per-sample random order of its ops.

    CPU inputs: ``factors [n, 4]`` brightness, contrast, saturation factors and hue shift;
    ``order [n, 4]`` a permutation of the op ids 0..3 (same order) per row; ``apply`` bool ``[n]``.
    The three blend ops of a row become three generic stages
    ``x <- clamp(a x + b gray(x) + c mean(gray(x)))`` and hue goes before stage 0, 1, 2 or after
    stage 2. Rows are sorted by that hue slot so that each slot is a contiguous block, the rows
    without jitter last. Returns ``perm [n]`` (sorted row -> input row), ``counts`` (5 ints: rows
    per hue slot, then rows without jitter), ``coef [m, 3, 3]`` (a, b, c per stage) and
    ``hue [m]`` for the ``m = n - counts[4]`` jittered rows, in sorted order.
    """
    n = factors.shape[0]
    key = torch.where(apply, (order == 3).to(torch.uint8).argmax(1), 4)
    perm = key.argsort(stable=True)
    counts = torch.bincount(key, minlength=5).tolist()
    m = n - counts[4]
    sel, order = perm[:m], order[perm[:m]]
    lin = order[order != 3].view(m, 3)
    f = factors[sel].gather(1, lin)
    coef = torch.stack([f, (1 - f) * (lin == 2), (1 - f) * (lin == 1)], -1)
    return perm, counts, coef, factors[sel, 3]


def _blend_stage(x: torch.Tensor, coef: torch.Tensor, bound: float) -> torch.Tensor:
    """``x <- clamp(a x + b gray(x) + c mean(gray(x)), 0, bound)`` in place; ``coef [n, 3]``."""
    a, b, c = (_col(v) for v in coef.to(x.dtype).unbind(-1))
    g = rgb_to_grayscale(x)
    t = (g * b).add_(c * g.mean((2, 3), keepdim=True))
    return torch.addcmul(t, x, a, out=x).clamp_(0, bound)


def color_jitter(x: torch.Tensor, coef: torch.Tensor, hue: torch.Tensor, counts, bound: float = 255.0):
    """Apply a :func:`jitter_plan` in place to ``x [m, 3, H, W]`` (its jittered rows, sorted).

    ``coef [m, 3, 3]`` and ``hue [m]`` on ``x``'s device; ``counts[s]`` rows take the hue
    rotation before blend stage ``s`` (``s = 3``: after the last).
    """
    start = 0
    for s in range(4):
        end = start + counts[s]
        if end > start:
            adjust_hue(x[start:end], hue[start:end], out=x[start:end])
        start = end
        if s < 3:
            _blend_stage(x, coef[:, s], bound)
    return x


def gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised Gaussian taps ``[n, 2*radius+1]`` for ``sigma [n]`` (torchvision's kernel)."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma.float().reshape(-1, 1)) ** 2)
    return k / k.sum(1, keepdim=True)


def _blur_matrix(taps: torch.Tensor, size: int) -> torch.Tensor:
    """``[n, size, size]`` operator of a 1-D convolution with ``taps [n, 2r+1]``, reflect padding."""
    n, k = taps.shape
    r = k // 2
    p = torch.arange(size, device=taps.device)[:, None] + torch.arange(-r, r + 1, device=taps.device)
    p = torch.where(p < 0, -p, torch.where(p > size - 1, 2 * (size - 1) - p, p))
    m = torch.zeros(n, size, size, device=taps.device, dtype=taps.dtype)
    return m.scatter_add_(2, p.expand(n, size, k), taps[:, None, :].expand(n, size, k))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-sample separable Gaussian blur with reflect padding; ``x [n, C, H, W]``, ``sigma [n]``.

    ``radius`` (e.g. ``ceil(3 * sigma_max)``) is clipped to ``min(H, W) - 1``. Images of at most
    64 pixels use the blur as a matrix (two batched matmuls); larger ones sum ``2 radius + 1``
    shifted copies per direction.
    """
    n, C, H, W = x.shape
    r = max(0, min(radius, H - 1, W - 1))
    taps = gaussian_kernel1d(sigma, r).to(x.dtype)
    if max(H, W) <= 64:
        mw = _blur_matrix(taps, W)
        mh = mw if H == W else _blur_matrix(taps, H)
        y = torch.bmm(x.reshape(n, C * H, W), mw.transpose(1, 2)).view(n, C, H, W)
        return torch.matmul(mh.unsqueeze(1), y)
    return _conv_taps(_conv_taps(x, taps, 3), taps, 2)


def _conv_taps(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D correlation of ``x [n, C, H, W]`` along ``dim`` (2 or 3) with per-row ``taps [n, k]``."""
    k, size = taps.shape[1], x.shape[dim]
    r = k // 2
    pad = (r, r, 0, 0) if dim == 3 else (0, 0, r, r)
    xp = F.pad(x, pad, mode="reflect")
    w = taps.view(-1, 1, 1, 1, k)
    out = xp.narrow(dim, 0, size) * w[..., 0]
    for i in range(1, k):
        out.addcmul_(xp.narrow(dim, i, size), w[..., i])
    return out


def solarize(x: torch.Tensor, threshold: float = 128.0, bound: float = 255.0) -> torch.Tensor:
    """Invert the values at or above ``threshold`` (PIL's ``ImageOps.solarize``): ``bound - x``."""
    above = torch.sign(x - threshold).add_(1).clamp_(0, 1)  # 1.0 where x >= threshold
    return torch.addcmul(x, above, bound - 2 * x)


def grayscale3(x: torch.Tensor) -> torch.Tensor:
    """``[n, 3, H, W]`` -> its luma repeated on the 3 channels (``RandomGrayscale``'s output)."""
    return rgb_to_grayscale(x).expand_as(x)


def apply_rows(x: torch.Tensor, rows: torch.Tensor, fn, *args) -> torch.Tensor:
    """``x[rows] = fn(x[rows], *args)`` in place; ``rows`` long ``[m]`` on ``x``'s device."""
    if rows.numel():
        x.index_copy_(0, rows, fn(x.index_select(0, rows), *args))
    return x


def normalize_into(x: torch.Tensor, mean, std, bound: float = 255.0, dtype: torch.dtype = torch.float32,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``(x / bound - mean) / std`` per channel, written as ``dtype`` (or into ``out``, which may be
    ``x``). ``mean``, ``std``: per-channel sequences, on the 0..1 scale."""
    scale = _const([1.0 / (bound * s) for s in std], x).view(1, -1, 1, 1)
    shift = _const([-m / s for m, s in zip(mean, std)], x).view(1, -1, 1, 1)
    if out is None:
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
    if out.dtype == x.dtype:  # (addcmul with a broadcast first operand is slow on CPUs)
        return torch.mul(x, scale, out=out).add_(shift)
    return torch.add(x * scale, shift, out=out)
