"""``OUTPUT_DIR/report.html``: curves, collapse diagnostics, configuration and attention maps of a run.

Reads the files the trainer writes into its output directory (``config.yaml``, ``log.txt`` with
one JSON line per epoch, ``metrics.jsonl`` with one JSON line per logged step,
``checkpoint.pth``); PNGs go to ``OUTPUT_DIR/report/`` and are referenced by relative path.
Anything missing is left out with a note.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["RunLogs", "load_run", "read_jsonl", "write_report"]

log = logging.getLogger(__name__)

REPORT_DIRNAME = "report"
SCHEDULE_KEYS = {"lr": "learning rate", "wd": "weight decay", "teacher_temp": "teacher temperature",
                 "momentum": "teacher momentum"}
COLLAPSE_KEYS = {"kl_teacher_student": "KL(teacher || student)", "center_norm": "center norm",
                 "effective_rank": "effective rank"}


@dataclass
class RunLogs:
    """What a run directory holds: config, per-epoch and per-step records, reading notes."""

    root: Path
    config: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def epoch_series(self, key: str) -> tuple[list, list]:
        rows = [r for r in self.epochs if _number(r.get(key)) is not None]
        return [r.get("epoch", i) for i, r in enumerate(rows)], [r[key] for r in rows]

    def step_series(self, key: str) -> tuple[list, list]:
        rows = [r for r in self.steps if _number(r.get(key)) is not None]
        return [r.get("step", i) for i, r in enumerate(rows)], [r[key] for r in rows]


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Records of a JSON-lines file and the number of unreadable lines (e.g. one being written)."""
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def load_run(output_dir: str | os.PathLike) -> RunLogs:
    """Read ``config.yaml``, ``log.txt`` and ``metrics.jsonl`` of a run, noting what is missing."""
    import yaml

    run = RunLogs(Path(output_dir))
    cfg = run.root / "config.yaml"
    if cfg.is_file():
        try:
            loaded = yaml.safe_load(cfg.read_text())
            run.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as e:
            run.notes.append(f"config.yaml could not be parsed: {e}")
    else:
        run.notes.append("no config.yaml: configuration omitted")
    for name, attr in (("log.txt", "epochs"), ("metrics.jsonl", "steps")):
        path = run.root / name
        if not path.is_file():
            run.notes.append(f"no {name} yet")
            continue
        records, bad = read_jsonl(path)
        setattr(run, attr, records)
        if bad:
            run.notes.append(f"{name}: skipped {bad} unreadable line(s)")
    return run


# ---------------------------------------------------------------- sections (each returns HTML)

def _img(path: Path, alt: str) -> str:
    return f'<img src="{REPORT_DIRNAME}/{html.escape(path.name)}" alt="{html.escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _warnings(run: RunLogs) -> list[tuple[int, str]]:
    """``(epoch, text)`` of logged collapse warnings, or recomputed from the stats when not logged."""
    from ..train.diagnostics import collapse_warning

    out_dim = run.config.get("out_dim")
    found = []
    for i, rec in enumerate(run.epochs):
        text = rec.get("collapse_warning")
        if not text and "collapse_warning" not in rec and isinstance(out_dim, int) and out_dim > 1:
            text = collapse_warning(rec, out_dim)
        if text:
            found.append((rec.get("epoch", i), str(text)))
    return found


def _section_training(run: RunLogs, report_dir: Path) -> str:
    from .plots import plot_curves

    parts = []
    if run.steps and run.step_series("loss")[0]:
        parts.append(_img(plot_curves({"loss": run.step_series("loss")}, report_dir / "loss_steps.png",
                                                  "training loss per step", "step", "loss", smooth=True),
                                      "loss per step"))
    if run.epoch_series("train_loss")[0]:
        parts.append(_img(plot_curves({"train_loss": run.epoch_series("train_loss")},
                                                  report_dir / "loss_epochs.png", "training loss per epoch",
                                                  "epoch", "loss"), "loss per epoch"))
    if not parts:
        parts.append(_note("no loss values logged yet"))
    source, xlabel = (run.step_series, "step") if run.steps else (run.epoch_series, "epoch")
    epoch_keys = {"lr": "train_lr", "wd": "train_wd"}
    sched = {label: source(key if run.steps else epoch_keys.get(key, key))
             for key, label in SCHEDULE_KEYS.items()}
    sched = {k: v for k, v in sched.items() if v[0]}
    if sched:
        parts.append(_img(plot_curves(sched, report_dir / "schedules.png", "schedules", xlabel,
                                                  panels=True), "schedules"))
    else:
        parts.append(_note("no schedule values (lr, wd, teacher temperature, momentum) logged"))
    return "<h2>Training curves</h2>\n" + "\n".join(parts)


def _section_knn(run: RunLogs, report_dir: Path) -> str:
    from .plots import plot_curves

    series = {k: run.epoch_series(k) for k in ("knn_top1", "knn_top5")}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return "<h2>k-NN accuracy</h2>\n" + _note("no k-NN evaluation in log.txt")
    last = ", ".join(f"{k} {v[1][-1]:.2f}" for k, v in series.items())
    return ("<h2>k-NN accuracy</h2>\n" + f"<p>last: {html.escape(last)}</p>\n"
            + _img(plot_curves(series, report_dir / "knn.png", "k-NN accuracy", "epoch", "accuracy (%)"),
                   "k-NN accuracy"))


def _section_collapse(run: RunLogs, report_dir: Path) -> str:
    from .plots import plot_curves

    warnings = _warnings(run)
    marks = [e for e, _ in warnings]
    parts = []
    if warnings:
        items = "".join(f"<li>epoch {html.escape(str(e))}: {html.escape(t)}</li>" for e, t in warnings)
        parts.append(f'<div class="warning"><b>Collapse warnings</b><ul>{items}</ul></div>')
    entropies = {k: run.epoch_series(k) for k in ("teacher_entropy", "batch_entropy")}
    entropies = {k: v for k, v in entropies.items() if v[0]}
    out_dim = run.config.get("out_dim")
    hlines = None
    if isinstance(out_dim, int) and out_dim > 1:
        hlines = {f"log(out_dim) = {math.log(out_dim):.2f}": math.log(out_dim)}
    if entropies:
        png = plot_curves(entropies, report_dir / "entropy.png", "teacher output entropy", "epoch", "nats",
                          hlines=hlines, vlines=marks, ymin=0.0)
        parts.append(_img(png, "entropy"))
    others = {label: run.epoch_series(k) for k, label in COLLAPSE_KEYS.items()}
    others = {k: v for k, v in others.items() if v[0]}
    if others:
        png = plot_curves(others, report_dir / "collapse.png", "collapse diagnostics", "epoch", panels=True,
                          vlines=marks)
        parts.append(_img(png, "collapse diagnostics"))
    if not (entropies or others):
        parts.append(_note("no collapse diagnostics in log.txt"))
    elif not warnings:
        parts.append("<p>No collapse warning.</p>")
    return "<h2>Collapse diagnostics</h2>\n" + "\n".join(parts)


def _section_throughput(run: RunLogs, report_dir: Path) -> str:
    from .plots import plot_curves

    rows = []
    if run.epochs:
        rows.append(("epochs finished", f"{len(run.epochs)}" + (f" of {run.config['epochs']}"
                                                                if "epochs" in run.config else "")))
    elapsed = run.epoch_series("elapsed_s")[1]
    if elapsed:
        rows.append(("elapsed", str(datetime.timedelta(seconds=round(elapsed[-1])))))
    series, xlabel = run.step_series("img_per_s"), "step"
    if not series[0]:
        series, xlabel = run.epoch_series("img_per_s"), "epoch"
    if series[1]:
        rows.append(("images / s (mean, last)", f"{np.mean(series[1]):.1f}, {series[1][-1]:.1f}"))
    if not rows:
        return "<h2>Throughput</h2>\n" + _note("no throughput logged yet")
    out = "<h2>Throughput</h2>\n" + _table(rows)
    if len(series[0]) > 1:
        out += "\n" + _img(plot_curves({"images / s": series}, report_dir / "throughput.png",
                                                   "throughput", xlabel, "images / s"), "throughput")
    return out


def _report_images(run: RunLogs, n: int) -> list[Path]:
    """Up to ``n`` images: those of ``OUTPUT_DIR/report_images/`` first, then the data's first."""
    from ..data import find_images
    from ..errors import DataError

    found: list[Path] = []
    sources = [run.root / "report_images"]
    if run.config.get("data_path"):
        sources.append(Path(run.config["data_path"]))
    for src in sources:
        if len(found) >= n or not src.is_dir():
            continue
        try:
            paths, labels, _ = find_images(src)
        except DataError:
            continue
        found += _round_robin(paths, labels)[: n - len(found)]
    return found


def _decodable_images(paths: list[Path], n: int) -> tuple[list[Path], list]:
    """The first ``n`` of ``paths`` that decode, with their images; the others are logged and skipped."""
    from ..data import ImageDecodeError, load_rgb

    kept, images = [], []
    for p in paths:
        try:
            images.append(load_rgb(p))
        except ImageDecodeError as e:
            log.warning("report: skipping an image that cannot be decoded: %s", e)
            continue
        kept.append(p)
        if len(kept) == n:
            break
    return kept, images


def _round_robin(paths: list[Path], labels: list[int]) -> list[Path]:
    """First image of each class, then the second of each, ...: a fixed, varied choice."""
    rank, seen = [], {}
    for p, y in zip(paths, labels):
        rank.append((seen.get(y, 0), y, p))
        seen[y] = seen.get(y, 0) + 1
    return [p for *_, p in sorted(rank, key=lambda r: (r[0], r[1]))]


def _section_attention(run: RunLogs, report_dir: Path, n: int) -> str:
    from ..models import load_pretrained
    from .attention import compute_attention

    title = "<h2>Attention maps</h2>\n"
    ckpt = run.root / "checkpoint.pth"
    if not ckpt.is_file():
        return title + _note("no checkpoint.pth yet: attention maps omitted")
    model = load_pretrained(ckpt, checkpoint_key="teacher")
    if not hasattr(model, "get_last_selfattention"):
        return title + _note(f"{type(model).__name__} backbone has no self-attention: attention maps omitted")
    paths, images = _decodable_images(_report_images(run, 4 * n), n)
    if not paths:
        return title + _note("no readable images (report_images/ or config data_path): attention maps omitted")
    size = int(run.config.get("global_crops_size") or 224)
    maps = [compute_attention(model, image, size, threshold=0.6) for image in images]
    png = _attention_grid(maps, [p.name for p in paths], report_dir / "attention.png")
    epoch = run.epochs[-1].get("epoch") if run.epochs else None
    after = f" (after epoch {epoch})" if epoch is not None else ""
    caption = (f"Teacher of checkpoint.pth{after}: last-block class-token attention at {size} px; "
               f"mask = top 60% of the mean attention mass. "
               f"Images: {', '.join(_short(p, run.root) for p in paths)}.")
    return title + f"<p>{html.escape(caption)}</p>\n" + _img(png, "attention maps")


def _short(path: Path, root: Path) -> str:
    """``path`` relative to the run directory when inside it, else its last two parts."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else "/".join(path.parts[-2:])


def _attention_grid(maps: list, names: list[str], path: Path, max_heads: int = 6) -> Path:
    """One row per image: image, mean attention, mean mask, the first ``max_heads`` heads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .attention import mask_overlay

    heads = min(max_heads, len(maps[0].attn))
    cols = 3 + heads
    fig = Figure(figsize=(1.6 * cols, 1.7 * len(maps)), dpi=100)
    FigureCanvasAgg(fig)
    for r, (m, name) in enumerate(zip(maps, names)):
        panels = [(m.image, name), (m.mean, "mean"), (mask_overlay(m.image, m.mean_mask[None]), "mask 0.6")]
        panels += [(m.attn[i], f"head {i}") for i in range(heads)]
        for c, (arr, label) in enumerate(panels):
            ax = fig.add_subplot(len(maps), cols, r * cols + c + 1)
            ax.imshow(arr, interpolation="nearest", cmap="viridis")
            ax.set_title(label[:18], fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _table(rows) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _section_config(run: RunLogs, report_dir: Path) -> str:
    if not run.config:
        return "<h2>Configuration</h2>\n" + _note("no configuration (config.yaml) found")
    return "<h2>Configuration</h2>\n" + _table(_flatten(run.config))


# ---------------------------------------------------------------- page

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%;margin:.5em 0;border:1px solid #ddd}
table{border-collapse:collapse;font-size:90%}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f4f4f4}.note{color:#777;font-style:italic}
.warning{background:#fde8e8;border:2px solid #c00;padding:.5em 1em;color:#900}"""


def _summary(run: RunLogs) -> str:
    c, last = run.config, (run.epochs[-1] if run.epochs else {})
    of = f" of {c['epochs']}" if c.get("epochs") else ""
    patch = f"/{c['patch_size']}" if c.get("patch_size") else ""
    bits = [f"{c['arch']}{patch}" if c.get("arch") else None,
            f"{len(run.epochs)}{of} epochs" if last else None,
            f"loss {last['train_loss']:.4f}" if _number(last.get("train_loss")) is not None else None,
            f"k-NN top-1 {last['knn_top1']:.2f}" if _number(last.get("knn_top1")) is not None else None]
    return " &middot; ".join(html.escape(b) for b in bits if b)


def _safe(section: Callable[..., str], *args) -> str:
    try:
        return section(*args)
    except Exception as e:  # noqa: BLE001  (a broken piece must not cost the whole report)
        log.warning("report: %s failed: %s", section.__name__, e)
        name = section.__name__.removeprefix("_section_")
        return f"<h2>{html.escape(name)}</h2>\n" + _note(f"omitted: {type(e).__name__}: {e}")


RUN_FILES = ("config.yaml", "log.txt", "metrics.jsonl", "checkpoint.pth")  # what a training run writes


def write_report(output_dir: str | os.PathLike, attention_images: int = 4) -> Path:
    """Write ``output_dir/report.html`` (plots in ``output_dir/report/``) and return its path.

    Sections: training curves (loss, lr, wd, teacher temperature, momentum), k-NN accuracy,
    collapse diagnostics and warnings, throughput, attention maps of ``attention_images`` fixed
    images with the checkpoint's teacher, configuration.
    """
    from ..errors import DataError

    root = Path(output_dir)
    if root.is_file():  # a run's checkpoint.pth or log.txt: its folder is meant
        root = root.parent
    if not root.is_dir():
        raise DataError(f"run directory {str(root)!r} does not exist")
    if not any((root / name).is_file() for name in RUN_FILES):
        raise DataError(f"{str(root)!r} is not a training run's --output_dir: it has none of "
                        f"{', '.join(RUN_FILES)}")
    report_dir = root / REPORT_DIRNAME
    report_dir.mkdir(exist_ok=True)
    run = load_run(root)
    sections = [_safe(_section_training, run, report_dir), _safe(_section_knn, run, report_dir),
                _safe(_section_collapse, run, report_dir), _safe(_section_throughput, run, report_dir)]
    if attention_images > 0:
        sections.append(_safe(_section_attention, run, report_dir, attention_images))
    sections.append(_safe(_section_config, run, report_dir))
    notes = "".join(_note(n) for n in run.notes)
    name = html.escape(root.name)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>DINO report: {name}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>DINO training report: {name}</h1>\n"
            f"<p>{_summary(run)}</p>\n"
            f"<p class=\"note\">written {datetime.datetime.now():%Y-%m-%d %H:%M}</p>\n"
            f"{notes}\n" + "\n".join(sections) + "\n</body></html>\n")
    out = root / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
