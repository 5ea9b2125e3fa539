"""The DINO training loop: student and EMA teacher, multi-crop views made on the device,
per-iteration schedules, atomic checkpoints, automatic resume, optional wall-clock budget.

Nothing is lost to faults: SIGINT / SIGTERM finish the step and write a checkpoint; a periodic
checkpoint that cannot be written is logged and retried at the next save, but a run whose final
checkpoint could not be written raises ``CheckpointWriteError``; unusable image files are skipped
and listed in ``skipped_files.txt``; a dead or silent peer process raises ``PeerFailure``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from ..errors import DataError, DinokitError
from ..models.pretrained import CheckpointError, arch_name
from ..outputs import FolderLock, output_folder, removing_new_folders_on_error
from ..runtime import autocast, resolve_device, resolve_precision, tune_malloc
from .batches import TrainBatches
from .checkpoint import CheckpointWriteError, flag_changes, load_for_resume, remove_stale_temporaries, save_atomic
from .compiled import CompiledOrEager
from .config import TrainConfig, load_config, parse_duration
from .diagnostics import collapse_stats
from .distributed import DistInfo, cleanup, init_distributed, peer_failures
from .ema import TeacherEMA
from .fp16 import OverflowMonitor
from .koleo import koleo_loss
from .loss import DINOLoss
from .networks import (build_student_teacher, has_batch_norms, load_backbone_weights, pretrained_backbone,
                       sync_batch_norms)
from .online_knn import OnlineKNN
from .optim import build_optimizer, cancel_gradients_last_layer, clip_gradients
from ..progress import ProgressBar
from .logs import JsonlWriter
from .schedules import Schedules
from .skipped import SkippedFiles

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "train"]

DIAGNOSTIC_KEYS = ("teacher_entropy", "batch_entropy", "kl_teacher_student", "center_norm", "effective_rank",
                   "koleo", "collapse_warning")

log = logging.getLogger("dinokit.train")


class TrainingDiverged(DinokitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(DinokitError):
    """SIGINT / SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


class Trainer:
    """Owns the models, optimiser, data and state of one run. ``fit()`` trains to the end."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg.validate()  # a TrainConfig built in Python has not been through load_config's checks
        tune_malloc()
        kind = resolve_device(cfg.device)  # its type picks the precision and the backend
        self.precision = resolve_precision(cfg.precision, kind, "fp16" if cfg.use_fp16 else "fp32")
        # The process group before the GPU index: under SLURM it is what tells this process its GPU.
        self.dist: DistInfo = init_distributed(kind, cfg.dist_timeout_s, cfg.dist_url, cfg.local_rank)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if self.device.type == "cuda":  # fixed crop sizes: let cuDNN pick its fastest kernels, as the release does
            torch.backends.cudnn.benchmark = True
        self.main = self.dist.rank == 0
        with removing_new_folders_on_error():  # a refused run leaves no empty --output_dir behind
            self.out = output_folder(cfg.output_dir)
            self.lock = FolderLock(self.out) if self.main else None  # before anything in the folder changes
            try:
                self._build(cfg)
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        """Let another run use the output folder (at the end of ``fit``; a dead process lets go by itself)."""
        if self.lock is not None:
            self.lock.release()

    def _build(self, cfg: TrainConfig) -> None:
        if self.main:
            remove_stale_temporaries(self.out)
        # Fresh runs read --pretrained_weights before decoding the data, so a file that does not fit fails fast.
        fresh = cfg.pretrained_weights and not (self.out / "checkpoint.pth").exists()
        self._pretrained = pretrained_backbone(cfg.pretrained_weights, cfg) if fresh else None
        self.data = TrainBatches(cfg, self.dist, self.device)
        self.skipped = SkippedFiles(self.out / "skipped_files.txt", set(map(str, self.data.images.paths)), self.main)
        self.skipped.add(self.data.bad_files())
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.student, self.teacher = build_student_teacher(cfg)
        if self.dist.enabled and has_batch_norms(self.student):
            if self.device.type == "cuda":
                self.student, self.teacher = sync_batch_norms(self.student, self.teacher)
            elif self.main:  # torch's SyncBatchNorm runs on GPUs only
                log.info("batch norms use each process's share of the batch (SyncBatchNorm needs CUDA)")
        self.student.to(self.device)
        self.teacher.to(self.device)
        self.student_ddp: nn.Module | CompiledOrEager = self.student
        if self.dist.enabled:
            with peer_failures(self.dist, self._resume_advice()):
                self.student_ddp = nn.parallel.DistributedDataParallel(
                    self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.teacher.load_state_dict(self.student.state_dict())  # the weights DDP broadcast
        self.teacher_fwd: nn.Module | CompiledOrEager = self.teacher
        if cfg.compile:
            log.info("--compile: the first steps compile both networks (a minute or more on a CPU)")
            self.student_ddp = CompiledOrEager(self.student_ddp, "student")
            self.teacher_fwd = CompiledOrEager(self.teacher, "teacher")
        self.ema = TeacherEMA(self.student, self.teacher)
        ncrops = 2 + cfg.local_crops_number
        self.loss = DINOLoss(cfg.out_dim, ncrops, cfg.warmup_teacher_temp, cfg.teacher_temp,
                             cfg.warmup_teacher_temp_epochs, max(cfg.epochs, 1),
                             center_momentum=cfg.center_momentum, centering=cfg.centering).to(self.device)
        self.optimizer = build_optimizer(cfg.optimizer, self.student)
        # fp16 only: the grad scaler, inside the monitor that counts the steps it skips
        self.overflow = OverflowMonitor(torch.amp.GradScaler("cuda")) if self.precision == "fp16" else None
        self.budget_s = parse_duration(cfg.time_budget) if cfg.time_budget else None
        self.sched = Schedules(cfg, len(self.data), self.dist.world_size, self.budget_s)
        self.start_epoch, self.start_iter, self.elapsed_before = 0, 0, 0.0
        self.metrics = JsonlWriter(self.out / "metrics.jsonl", self.main)
        self.epoch_log = JsonlWriter(self.out / "log.txt", self.main)
        self._stop_signal: int | None = None
        self._unsaved: CheckpointWriteError | None = None  # the last checkpoint write failed
        self._knn: OnlineKNN | None = None

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.overflow.scaler if self.overflow else None

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int, iter_in_epoch: int, elapsed: float) -> dict:
        ckpt = {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": epoch, "iter_in_epoch": iter_in_epoch,
                "elapsed_s": elapsed, "args": self.cfg.to_dict(), "dino_loss": self.loss.state_dict()}
        if self.scaler is not None:
            ckpt["fp16_scaler"] = self.scaler.state_dict()
        return ckpt

    def resume(self) -> None:
        ckpt = load_for_resume(self.out)
        if ckpt is None:  # a fresh run: random backbones, or the --pretrained_weights given
            if self._pretrained is not None:
                load_backbone_weights(self.student, self.teacher, self._pretrained, self.cfg,
                                      self.cfg.pretrained_weights)
                self._pretrained = None  # its memory back
                log.info("backbones start from %s", self.cfg.pretrained_weights)
            return
        where = f"cannot resume from {self.out / 'checkpoint.pth'}"
        advice = "Resume with that run's flags (its config.yaml), or give a new --output_dir to start afresh"
        changes = flag_changes(ckpt.get("args"), self.cfg.to_dict())
        if changes:  # checked first: an optimizer of another kind can load and fail only at its step
            raise CheckpointError(f"{where}: its run used other flags: {', '.join(changes)}. {advice}")
        try:
            self._load_state(ckpt)
        except (ValueError, RuntimeError, KeyError) as e:  # what torch raises for state that does not fit
            detail = " ".join(" ".join(str(e).split("\n", 2)[:2]).split()).rstrip(".")  # heading, first cause
            raise CheckpointError(f"{where}: {detail}. {advice}") from None
        self.start_epoch = int(ckpt["epoch"])
        self.start_iter = int(ckpt.get("iter_in_epoch", 0))
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        log.info("resumed from %s at epoch %d, iteration %d", self.out / "checkpoint.pth",
                 self.start_epoch, self.start_iter)

    def _load_state(self, ckpt: dict) -> None:
        self.student.load_state_dict(_strip(ckpt["student"]))
        self.teacher.load_state_dict(_strip(ckpt["teacher"]))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "dino_loss" in ckpt:
            self.loss.load_state_dict(ckpt["dino_loss"])
        if self.scaler is not None and "fp16_scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["fp16_scaler"])

    def save(self, epoch: int, iter_in_epoch: int, elapsed: float, numbered: bool = False) -> None:
        """Write ``checkpoint.pth`` (and ``checkpointNNNN.pth``). A failed write is logged and
        remembered: training goes on with its good in-memory state, and the next save tries again;
        ``fit`` raises it if the run ends without a checkpoint of its final state."""
        if not self.main:
            return
        ckpt = self.state_dict(epoch, iter_in_epoch, elapsed)
        self._unsaved = _try_save(ckpt, self.out / "checkpoint.pth")
        if numbered and self._unsaved is None:
            _try_save(ckpt, self.out / f"checkpoint{epoch - 1:04}.pth")

    def _raise_if_unsaved(self, what: str) -> None:
        if self._unsaved is not None:
            raise CheckpointWriteError(f"{what}, but its checkpoint could not be written: {self._unsaved}. "
                                       f"Free some space or fix the folder, then run the same command again")

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        try:
            self.resume()
            self._start()
            self._install_signal_handlers()
            try:
                with peer_failures(self.dist, self._resume_advice()):
                    epoch, stats, elapsed = self._epochs()
            finally:
                self._restore_signal_handlers()
            self.skipped.summary()
            self._raise_if_unsaved("training finished")
            if self.main and self.cfg.report:
                self._write_report()
        finally:
            self.release()
        return {"epochs": epoch, "elapsed_s": elapsed, **stats}

    def _start(self) -> None:
        cfg = self.cfg
        if not self.main:
            return
        if cfg.knn_every and cfg.knn_train_path and cfg.knn_val_path:  # bad folders fail now, not after an epoch
            self._knn = OnlineKNN(cfg.knn_train_path, cfg.knn_val_path, cfg.knn_image_size, cfg.knn_k)
        try:
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        except OSError as e:
            raise DinokitError(f"cannot write to the output folder {str(self.out)!r}: {e.strerror or e}") from None
        log.info("training %s on %d images (%s, %s), %d iterations per epoch, output in %s",
                 arch_name(cfg.arch, cfg.patch_size), self.data.usable_images, self.device, self.precision,
                 len(self.data), self.out)

    def _epochs(self) -> tuple[int, dict, float]:
        """Train from the resumed position to the end; ``(epoch reached, last stats, elapsed s)``."""
        cfg = self.cfg
        t0 = time.monotonic() - self.elapsed_before
        epoch, stats = self.start_epoch, {}
        elapsed = self._agree(time.monotonic() - t0)[1]
        if self.sched.finished(epoch, elapsed) and self.main:
            log.info("the run in %s has finished its schedule (epoch %d, %.1f min of training): nothing left "
                     "to train; a larger --epochs or --time_budget continues it", self.out, epoch, elapsed / 60)
        while not self.sched.finished(epoch, elapsed):
            stats = self.train_one_epoch(epoch, t0, elapsed)
            self.skipped.add(self.data.bad_files())
            if stats.get("stopped_early"):
                elapsed = time.monotonic() - t0
                self._log_epoch(epoch, stats, elapsed, final=True)
                break
            epoch += 1
            elapsed = self._agree(time.monotonic() - t0)[1]
            # checkpoint{e:04}.pth after epochs e = 0, freq, 2 freq ... as the release names them
            self.save(epoch, 0, elapsed, numbered=cfg.saveckp_freq > 0 and (epoch - 1) % cfg.saveckp_freq == 0)
            t_eval = time.monotonic()
            self._log_epoch(epoch - 1, stats, elapsed, final=self.sched.finished(epoch, elapsed))
            if self.dist.enabled:
                dist.barrier()  # the main process evaluates; all leave together so none counts it
            t0 += time.monotonic() - t_eval  # evaluation does not eat into a time budget
        return epoch, stats, elapsed  # as the checkpoint holds it, so a resumed run reports the same

    def _resume_advice(self) -> str:
        return (f"restart all processes with the same torchrun command: training resumes from the last "
                f"checkpoint in {self.out}")

    def _write_report(self) -> None:
        from ..viz.report import write_report
        try:
            path = write_report(self.out)
            log.info("training report: %s", path)
        except Exception as e:  # the run is saved; a failed picture must not fail it
            log.warning("could not write the training report: %s: %s", type(e).__name__, e)

    def train_one_epoch(self, epoch: int, t0: float, elapsed: float) -> dict:
        """One pass over the data from the clock ``t0``; ``elapsed``: seconds so far, as all processes agree."""
        cfg = self.cfg
        self.student.train()
        self.teacher.train()
        niter = len(self.data)
        skip = self.start_iter if epoch == self.start_epoch else 0
        bar = ProgressBar(total=niter, enabled=self.main)
        loss_sum, n_steps, images_seen, t_epoch = torch.zeros((), device=self.device), 0, 0, time.monotonic()
        step_s, last = 0.0, {}
        if self.overflow:
            self.overflow.start_epoch()
        for i, (images, hw) in enumerate(self.data.epoch(epoch, skip), start=skip):
            it = epoch * niter + i
            values = self.sched.at(it, epoch, elapsed)
            diagnose = i == niter - 1 or self.sched.out_of_time(elapsed + 2 * step_s) or \
                bool(cfg.max_steps and it + 1 >= cfg.max_steps)
            t_step = time.monotonic()
            loss, stats = self.train_step(images, hw, it, epoch, values, diagnose)
            last = stats or last
            loss_sum += loss.detach()
            n_steps += 1
            images_seen += images.shape[0] * self.dist.world_size
            if not math.isfinite(loss.item()):
                self._diverged(epoch, i, values)
            if self.overflow:
                self.overflow.step_done()
            rate = images_seen / max(time.monotonic() - t_epoch, 1e-9)
            if self.main and (it % cfg.log_every == 0):
                self.metrics.write({"step": it, "epoch": epoch, "loss": loss.item(), **values,
                                    "img_per_s": rate})
            bar.update(i + 1, self.sched.eta(it, niter, elapsed, rate / max(images.shape[0], 1)),
                       epoch=epoch, loss=loss.item(), lr=values["lr"], **{"img/s": round(rate, 1)})
            signum, elapsed, step_s = self._agree(time.monotonic() - t0, time.monotonic() - t_step)
            if signum:
                self._interrupted(signum, epoch, i + 1, elapsed)
            if self.sched.out_of_time(elapsed) or (cfg.max_steps and it + 1 >= cfg.max_steps):
                bar.close()
                self.save(epoch, i + 1, elapsed)
                return {"train_loss": (loss_sum / max(n_steps, 1)).item(), "img_per_s": rate,
                        "stopped_early": True, **values, **last, **self._fp16_stats()}
        bar.close()
        if n_steps == 0:
            return self._epoch_without_steps(epoch, niter, skip, t0)
        rate = images_seen / max(time.monotonic() - t_epoch, 1e-9)
        return {"train_loss": (loss_sum / max(n_steps, 1)).item(), "img_per_s": rate, **values, **last,
                **self._fp16_stats()}

    def _fp16_stats(self) -> dict:
        return self.overflow.stats() if self.overflow else {}

    def _epoch_without_steps(self, epoch: int, niter: int, skip: int, t0: float) -> dict:
        """Stats of an epoch that made no step: resumed after its last iteration, or only bad files."""
        if skip < niter:
            self.skipped.add(self.data.bad_files())
            raise DataError(f"no usable image in {self.cfg.data_path!r}: every batch of epoch {epoch} was made "
                            f"of files that cannot be decoded (see {self.skipped.path.name})")
        values = self.sched.at(epoch * niter + niter - 1, epoch, time.monotonic() - t0)
        return {"train_loss": None, "img_per_s": None, **values}

    def train_step(self, images: torch.Tensor, hw: torch.Tensor, it: int, epoch: int,
                   values: dict, diagnose: bool = False) -> tuple[torch.Tensor, dict]:
        """One iteration: views, forward both networks, loss, update student, then teacher.

        With ``diagnose``, also returns the collapse statistics of this batch."""
        cfg = self.cfg
        for i, g in enumerate(self.optimizer.param_groups):
            g["lr"] = values["lr"]
            if i == 0:
                g["weight_decay"] = values["wd"]
        seed = self.data.step_seed(it)
        torch.manual_seed(seed)  # stochastic depth: the same draws after a resume
        crops = self.data.views(images, hw, seed, values.get("global_size"), values.get("global_scale"))
        with autocast(self.device, self.precision):
            teacher_out = self.teacher_fwd(crops[:2])
            student_out, features = self.student_ddp(crops, return_features=True)
        loss, targets = self.loss(student_out, teacher_out, epoch, teacher_temp=values["teacher_temp"],
                                  return_targets=True)
        stats = self._diagnostics(crops[0], teacher_out, targets, student_out, values) if diagnose else {}
        if cfg.koleo_loss_weight:
            # per global crop, as DINOv2: neighbours are other images seen through the same view
            koleo = sum(koleo_loss(f) for f in features[:2 * len(images)].chunk(2))
            loss = loss + cfg.koleo_loss_weight * koleo
            if diagnose:
                stats["koleo"] = koleo.item()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.clip_grad:
            clip_gradients(self.student, cfg.clip_grad)
        cancel_gradients_last_layer(values["frozen_epoch"], self.student, cfg.freeze_last_layer)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(values["momentum"])
        return loss, stats

    @torch.no_grad()
    def _diagnostics(self, first_crops, teacher_out, targets, student_out, values) -> dict:
        with autocast(self.device, self.precision):
            features = self.teacher.backbone(first_crops).float()
        stats = collapse_stats(teacher_out.float(), student_out.float(), self.loss.center,
                               values["teacher_temp"], self.loss.student_temp, features, probs=targets)
        return {**stats.to_dict(), "collapse_warning": stats.warning(self.cfg.out_dim)}

    # ------------------------------------------------------------------ helpers
    def _agree(self, elapsed: float, step_s: float = 0.0) -> tuple[int, float, float]:
        """``(stop signal or 0, elapsed s, last step s)``, the largest over all processes: every process
        then reads the same clock, so time-budget schedules, diagnostics and the stop (by budget or
        by signal) happen at the same iteration everywhere. One small all-reduce per step."""
        signum = self._stop_signal or 0
        if self.dist.enabled:
            t = torch.tensor([signum, elapsed, step_s], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            signum, elapsed, step_s = t.tolist()
        return int(signum), elapsed, step_s

    def _interrupted(self, signum: int, epoch: int, done: int, elapsed: float) -> None:
        self.skipped.add(self.data.bad_files())
        self.save(epoch, done, elapsed)
        what = f"stopped by {_signal_name(signum)} after iteration {done} of epoch {epoch}"
        self._raise_if_unsaved(what)
        raise TrainingInterrupted(f"{what}; checkpoint written to {self.out / 'checkpoint.pth'}. "
                                  f"Run the same command again to resume.", signum)

    def _diverged(self, epoch: int, i: int, values: dict) -> None:
        raise TrainingDiverged(
            f"loss is not finite at epoch {epoch}, iteration {i} (lr {values['lr']:.3g}, teacher temperature "
            f"{values['teacher_temp']:.3g}, precision {self.precision}). The last good checkpoint in "
            f"{self.out} is kept. Likely causes: a learning rate too high for this batch size (try a lower "
            f"--lr or longer --warmup_epochs), reduced-precision overflow (try --precision fp32, or "
            f"--use_fp16 false on GPU), or a teacher temperature too low (try --teacher_temp 0.04 and "
            f"--warmup_teacher_temp 0.04); --clip_grad 3.0 also helps.")

    def _log_epoch(self, epoch: int, stats: dict, elapsed: float, final: bool = False) -> None:
        record = {"epoch": epoch, "train_loss": stats.get("train_loss"), "train_lr": stats.get("lr"),
                  "train_wd": stats.get("wd"), "teacher_temp": stats.get("teacher_temp"),
                  "momentum": stats.get("momentum"), "img_per_s": stats.get("img_per_s"), "elapsed_s": elapsed}
        record.update({k: stats[k] for k in (*DIAGNOSTIC_KEYS, *OverflowMonitor.KEYS) if k in stats})
        record.update(self._online_knn(epoch, final))
        self.epoch_log.write(record)
        if not self.main:
            return
        log.info("epoch %d: %s", epoch, json.dumps({k: _round(v) for k, v in record.items()
                                                     if v is not None and not k.endswith("_warning")}))
        for key in ("collapse_warning", "fp16_warning"):
            if record.get(key):
                log.warning("epoch %d: %s", epoch, record[key])

    def _online_knn(self, epoch: int, final: bool) -> dict:
        if self._knn is None or not (final or (epoch + 1) % self.cfg.knn_every == 0):  # None: off, or not rank 0
            return {}
        result = self._knn(self.teacher.backbone)
        return {"knn_top1": result["top1"], "knn_top5": result["top5"]}

    def _install_signal_handlers(self) -> None:
        self._old_handlers = {}

        def handler(signum, frame):
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            log.warning("signal %d received: finishing this step, then writing a checkpoint", signum)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)


def _try_save(ckpt: dict, path: Path) -> CheckpointWriteError | None:
    try:
        save_atomic(ckpt, path)
    except CheckpointWriteError as e:
        log.error("%s. Training goes on; the next save will try again", e)
        return e
    return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _round(v):
    return float(f"{v:.4g}") if isinstance(v, float) else v  # significant digits: lr 1e-5 is not 0.0


def _strip(sd: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in sd.items()}


def train(cfg: TrainConfig | dict) -> dict:
    """Train a DINO model as ``cfg`` says (a ``TrainConfig``, or a dict of flag values for
    ``load_config``); resumes from ``cfg.output_dir`` when a checkpoint is there."""
    if isinstance(cfg, dict):
        cfg = load_config(cfg)
    elif not isinstance(cfg, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig or a dict of flag values, not {type(cfg).__name__}")
    try:
        return Trainer(cfg).fit()
    finally:
        if dist.is_available() and dist.is_initialized():
            cleanup()
