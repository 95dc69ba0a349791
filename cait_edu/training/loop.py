"""The training loop: the :class:`Trainer` that :func:`~cait_edu.training.run.train` drives.

What a run does, in order (each step raises a clear error before any work when it cannot go on):

1. **Config**: checked value by value (:func:`~cait_edu.training.validate.validate_config`).
2. **Place**: device, precision (:mod:`~cait_edu.training.hardware`), process group under torchrun.
3. **Resume decision**: a new run refuses a directory that holds one; ``resume=True`` reads
   ``last.pt`` and refuses a changed recipe or number of processes
   (:func:`~cait_edu.training.validate.check_resume`).
4. **Data**: a fine-tune's checkpoint and a teacher are read (:mod:`~cait_edu.training.finetune`,
   :mod:`~cait_edu.training.distill`), the data found and loaded (a ``FileNotFoundError`` says how to
   get it) and one train and one val image checked; then the model (fine-tune weights loaded) is built.
5. **Loop**: each rank reads its shard of every global batch through
   :class:`~cait_edu.data.EpochSampler` (augmentation seeded per sample), mixes it with
   :class:`~cait_edu.data.MixupCutmix`, and takes one AdamW step on the soft-target cross-entropy
   (plus the teacher's term under hard distillation), the learning rate a pure function of the
   step. All randomness is derived from ``(seed, step, rank)`` (:mod:`~cait_edu.training.seeds`),
   so a run resumed from any checkpoint, even one written mid-epoch, continues bit for bit.
6. **Files** in ``out/`` (rank 0): ``last.pt`` at epoch ends (and every ``save_every_steps``),
   ``best.pt``, ``metrics.jsonl``, ``config.json`` (:mod:`~cait_edu.training.checkpoints`).
7. **Divergence**: a non-finite loss or gradient stops the run with :class:`DivergenceError`
   before the optimizer touches the weights, so ``last.pt`` keeps the last good state.

Under ``torchrun`` ``batch_size`` is the GLOBAL batch: each of the ``world`` ranks takes
``batch_size / world`` images, the model is wrapped in ``DistributedDataParallel``, and evaluation
is sharded over the ranks with the counts summed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .. import data as D
from ..registry import create_model
from .checkpoints import (CHECKPOINT_FORMAT, atomic_torch_save, read_resume_checkpoint, remove_stale_temporaries,
                          write_run_config)
from .config import ConfigError, DivergenceError, TrainConfig, model_overrides
from .datasets import build_datasets
from .distill import make_criterion, prepare_teacher
from .ema import ModelEma
from .evaluate import evaluate
from .finetune import open_finetune_source
from .hardware import Dist, adamw_options, autocast, choose_amp, device_type, setup_distributed
from .metrics import MetricsLog, progress_enabled
from .optim import lr_at_step, param_groups
from .seeds import MIX_STREAM, STEP_STREAM, derived_seed
from .validate import check_resume

__all__ = ["Trainer", "build_datasets", "progress_enabled"]


class Trainer:
    """Everything a run holds. ``setup()`` builds it (or restores it from ``last.pt``); ``fit()`` trains."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, allow_world_size_change: bool = False,
                 extra_metrics: Callable[[nn.Module], dict] | None = None):
        self.cfg, self.resume, self.allow_world_size_change = cfg, resume, allow_world_size_change
        self.extra_metrics = extra_metrics
        self.out = Path(cfg.out)
        self.t0 = time.time()
        self.elapsed_before = 0.0  # wall time of the run's earlier pieces (from last.pt when resuming)
        self.dd, self.bar = Dist(), None

    def elapsed(self) -> float:
        """Wall time of the whole run so far, in seconds: this piece (setup, data loading and
        evaluation included) plus every earlier piece it resumed from."""
        return self.elapsed_before + time.time() - self.t0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        kind = device_type(cfg.device)
        self.dd = dd = setup_distributed(kind)
        self.device = torch.device(f"cuda:{dd.local_rank}" if kind == "cuda" else "cpu")
        self.amp = choose_amp(cfg.amp, self.device)
        self.ckpt = read_resume_checkpoint(self.out, self.resume)
        if self.ckpt is not None:
            check_resume(self.ckpt, cfg, world_size=dd.world, allow_world_size_change=self.allow_world_size_change)
        # files that a fresh fine-tune or a teacher need: read and checked before the data
        self.finetune = open_finetune_source(cfg) if cfg.finetune and self.ckpt is None else None
        self.teacher_src = prepare_teacher(cfg) if cfg.distillation != "none" else None
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=dd.main)
        self._setup_data()
        self._setup_model()
        self._restore()
        self._write_run_files()

    def _setup_data(self) -> None:
        cfg, dd = self.cfg, self.dd
        self.train_ds, self.val_ds, self.classes, self.source = build_datasets(cfg)
        self.num_classes = len(self.classes)
        per_rank = cfg.batch_size // dd.world
        self.sampler = D.EpochSampler(len(self.train_ds), batch_size=per_rank, seed=cfg.seed, shuffle=True,
                                      num_replicas=dd.world, rank=dd.rank, repeats=cfg.repeats, drop_last=True)
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.train_ds)} training images give no full batch of {cfg.batch_size} "
                              f"({per_rank} per rank x {dd.world}); lower batch_size or use more data")
        for what, (x, _) in (("train", D.SeededDataset(self.train_ds)[(0, 0)]), ("val", self.val_ds[0])):
            if tuple(x.shape) != (3, cfg.img_size, cfg.img_size):
                raise ConfigError(f"{what} images come out of the '{cfg.recipe}' transform as {tuple(x.shape)}, "
                                  f"expected (3, {cfg.img_size}, {cfg.img_size}); recipe 'cifar' does not resize: "
                                  "use recipe=deit or images of size img_size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)

    def _setup_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = create_model(cfg.model, **model_overrides(cfg, self.num_classes))
        self.init_report = self.finetune.apply(self.model, cfg.finetune_head) if self.finetune else None
        self.model.to(self.device)
        self.teacher, self.teacher_print = (None, None) if self.teacher_src is None else self.teacher_src.build(
            self.num_classes, cfg.img_size, self.device, cfg.seed)
        self.criterion = make_criterion(self.teacher)
        groups = param_groups(self.model, cfg.weight_decay, exempt=cfg.exempt_from_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                           **adamw_options(self.device))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema else None
        self.mixer = D.MixupCutmix(self.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_switch_prob,
                                   cfg.mixup_prob, cfg.label_smoothing)
        self.train_model: nn.Module = self.model
        if self.dd.world > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def _restore(self) -> None:
        """Start from step 0, or load every piece of state ``last.pt`` holds."""
        self.step, self.start_epoch, self.start_batch = 0, 0, 0
        self.best_top1, self.best_epoch, self.last_eval = -1.0, -1, None
        self.log_sums = {"loss": 0.0, "steps": 0}  # train loss since the last metrics line
        ck = self.ckpt
        if ck is None:
            return
        if self.teacher_src is not None:
            self.teacher_src.check_resume(ck.get("teacher_fingerprint"), self.teacher_print)
        self.init_report = ck.get("finetune_report")  # the fine-tune source is not read again
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None:
            if ck.get("ema") is None:
                raise ConfigError("the checkpoint has no EMA weights but ema=true")
            self.ema.load_state_dict(ck["ema"])
        self.step = int(ck["step"])
        self.elapsed_before = float(ck.get("elapsed_s", 0.0))  # absent in checkpoints of older versions
        self.start_epoch, self.start_batch = int(ck["epoch"]), int(ck["batch_in_epoch"])
        self.best_top1, self.best_epoch = float(ck["best_top1"]), int(ck["best_epoch"])
        self.last_eval = ck.get("last_eval")
        self.log_sums = dict(ck.get("log_sums") or self.log_sums)

    def _write_run_files(self) -> None:
        cfg, dd = self.cfg, self.dd
        if dd.main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
            if self.ckpt is None:
                self.metrics.start_fresh()
            else:  # drop what the interrupted run logged after its checkpoint
                self.metrics.keep_up_to(self.step)
            runtime = {"world_size": dd.world, "device": str(self.device), "amp": self.amp,
                       "num_classes": self.num_classes, "classes": self.classes[:100],
                       "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                       "warmup_steps": self.warmup_steps, "num_train": len(self.train_ds),
                       "num_val": len(self.val_ds), "data_source": self.source, "torch": torch.__version__,
                       "finetune": self.init_report, "teacher": self.teacher_src and self.teacher_src.about}
            write_run_config(self.out, cfg, runtime)
        dd.barrier()

    # ------------------------------------------------------------ checkpoints
    def _config_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self.cfg)))

    def save_last(self, epoch: int, batch_in_epoch: int) -> None:
        """Write last.pt (rank 0), refusing to store non-finite weights."""
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise DivergenceError(f"parameter {name} is non-finite after step {self.step}; not saving it: "
                                      f"{self.out / 'last.pt'} keeps the last good state")
        if self.dd.main:
            atomic_torch_save({
                "format": CHECKPOINT_FORMAT, "config": self._config_json(), "world_size": self.dd.world,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "step": self.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "best_top1": self.best_top1, "best_epoch": self.best_epoch, "last_eval": self.last_eval,
                "log_sums": dict(self.log_sums), "finetune_report": self.init_report,
                "teacher_fingerprint": self.teacher_print, "elapsed_s": self.elapsed(),
            }, self.out / "last.pt")
        self.dd.barrier()

    # ------------------------------------------------------------- evaluation
    def run_eval(self, epoch: int) -> dict:
        def on_val(model: nn.Module) -> dict:
            return evaluate(model, self.val_ds, batch_size=self.cfg.batch_size // self.dd.world, device=self.device,
                            amp=self.amp, num_workers=self.cfg.num_workers, dd=self.dd,
                            hflip=self.cfg.eval_hflip)

        res = on_val(self.model)
        if self.ema is not None and self.cfg.eval_ema:
            res.update({f"{k}_ema": v for k, v in on_val(self.ema.module).items() if k != "val_samples"})
        if self.extra_metrics is not None:
            with torch.no_grad():
                res.update(self.extra_metrics(self.model))
        rec = {"kind": "eval", "epoch": epoch, "step": self.step, **res, "elapsed_s": round(self.elapsed(), 2)}
        self.metrics.write(rec)
        self.last_eval = rec
        self.say(f"eval epoch {epoch} step {self.step}: val loss {res['val_loss']:.4f} "
                 f"top-1 {res['val_top1']:.2f}% top-5 {res['val_top5']:.2f}% ({res['val_samples']} images)")
        if res["val_top1"] > self.best_top1:
            self.best_top1, self.best_epoch = res["val_top1"], epoch
            if self.dd.main:
                atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                                   "ema": self.ema.state_dict() if self.ema is not None else None,
                                   "epoch": epoch, "step": self.step, "metrics": rec,
                                   "config": self._config_json()}, self.out / "best.pt")
            self.dd.barrier()
        return rec

    # ------------------------------------------------------------------ steps
    def train_step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int) -> tuple[float, float]:
        """One optimizer step on a batch; returns (loss averaged over ranks, gradient norm)."""
        cfg, dd = self.cfg, self.dd
        step = self.step  # 0-based index of this update
        torch.manual_seed(derived_seed(cfg.seed, STEP_STREAM, step, dd.rank))  # stochastic depth, dropout
        gen = torch.Generator().manual_seed(derived_seed(cfg.seed, MIX_STREAM, step, dd.rank))
        images, targets = self.mixer(images, labels, gen)  # (B, C, H, W), (B, classes)
        lr = lr_at_step(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps, lr=cfg.lr,
                        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with autocast(self.amp, self.device):  # the teacher, if any, runs in it too
            loss = self.criterion(images, self.train_model(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        loss_value = dd.all_reduce_sum(loss.detach().float().clone()).item() / dd.world
        where = f"step {step + 1} (epoch {epoch}, batch {batch + 1} of {self.steps_per_epoch})"
        keeps = f"weights not updated, {self.out / 'last.pt'} keeps the last good checkpoint"
        if not math.isfinite(loss_value):
            raise DivergenceError(f"non-finite loss ({loss_value}) at {where}; {keeps}. "
                                  "Try a lower lr, grad_clip, or amp=off.")
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if cfg.grad_clip is not None:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        else:
            gnorm = float(torch.nn.utils.get_total_norm(grads))
        if self.scaler is not None:  # fp16: inf gradients are expected now and then; the scaler skips them
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif not math.isfinite(gnorm):
            raise DivergenceError(f"non-finite gradient norm ({gnorm}) at {where}; {keeps}.")
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss_value, gnorm

    def epoch_loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """This rank's batches of ``epoch``, from batch ``start_batch`` on when resuming into it."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start_batch(self.start_batch if epoch == self.start_epoch else 0)
        return D.make_loader(self.train_ds, self.sampler, num_workers=self.cfg.num_workers,
                             pin_memory=self.device.type == "cuda")

    def say(self, msg: str) -> None:
        if not self.dd.main:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def _log_train(self, epoch: int, loss: float, gnorm: float, throughput: float) -> bool:
        """Add a step's loss to the running sums (checkpointed, so a resumed run logs the same means);
        every ``log_every`` steps write their mean to metrics.jsonl. True when a line was written."""
        self.log_sums["loss"] += loss
        self.log_sums["steps"] += 1
        if self.step % self.cfg.log_every:
            return False
        self.metrics.write({"kind": "train", "step": self.step, "epoch": epoch,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "loss": self.log_sums["loss"] / self.log_sums["steps"], "grad_norm": gnorm,
                            "throughput_img_s": throughput})
        self.log_sums = {"loss": 0.0, "steps": 0}
        return True

    # ------------------------------------------------------------------- loop
    def _announce(self) -> None:
        cfg = self.cfg
        self.say(f"data: {self.source}; {len(self.train_ds)} train / {len(self.val_ds)} val images, "
                 f"{self.num_classes} classes")
        self.say(f"model: {cfg.model} ({sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params) on "
                 f"{self.device} x {self.dd.world}, amp={self.amp}; {self.steps_per_epoch} steps/epoch, "
                 f"{self.total_steps} steps in total" + (f" (resuming at step {self.step})" if self.ckpt else ""))
        if self.ckpt is None and self.init_report:
            self.say("fine-tune: " + "; ".join(f"{k} {v}" for k, v in self.init_report.items()))
        if self.teacher_src:
            self.say(f"teacher: {self.teacher_src.about}")

    def fit(self) -> dict:
        cfg, dd = self.cfg, self.dd
        self._announce()
        stop_at = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        if progress_enabled(cfg) and dd.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=stop_at, initial=min(self.step, stop_at), unit="step", dynamic_ncols=True)
        self.train_model.train()
        t_log, n_img, last_loss, epoch = time.time(), 0, None, self.start_epoch
        try:
            while epoch < cfg.epochs and self.step < stop_at:
                batch = self.start_batch if epoch == self.start_epoch else 0
                for images, labels in self.epoch_loader(epoch):
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                    last_loss, gnorm = self.train_step(images, labels, epoch, batch)
                    batch += 1
                    n_img += images.shape[0] * dd.world
                    if self.bar is not None:
                        self.bar.set_postfix(epoch=epoch, loss=f"{last_loss:.3f}", refresh=False)
                        self.bar.update(1)
                    if self._log_train(epoch, last_loss, gnorm, n_img / max(time.time() - t_log, 1e-9)):
                        t_log, n_img = time.time(), 0
                    if batch == self.steps_per_epoch:
                        continue  # the end-of-epoch save below covers it
                    if self.step >= stop_at:  # max_steps reached mid-epoch
                        break
                    if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                        self.save_last(epoch, batch)
                if batch < self.steps_per_epoch:  # stopped early by max_steps
                    self.run_eval(epoch)
                    self.save_last(epoch, batch)
                    break
                epoch += 1
                if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or self.step >= stop_at:
                    self.run_eval(epoch)
                self.save_last(epoch, 0)
                t_log, n_img = time.time(), 0  # throughput counts training time only
            if self.last_eval is None or self.last_eval.get("step") != self.step:
                self.run_eval(epoch)  # final numbers for the weights we end with
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        return self._summary(epoch, last_loss)

    def _summary(self, epoch: int, last_loss: float | None) -> dict:
        """What :func:`train` returns (see there); also said in one line."""
        result = {
            "step": self.step, "epoch": epoch, "train_loss": last_loss,
            **{k: v for k, v in (self.last_eval or {}).items() if k.startswith("val_")},
            "best_top1": self.best_top1, "best_epoch": self.best_epoch, "wall_time_s": time.time() - self.t0,
            "elapsed_s": self.elapsed(), "out": str(self.out), "data_source": self.source,
            "num_train": len(self.train_ds), "num_val": len(self.val_ds), "world_size": self.dd.world,
        }
        self.say(f"done in {result['wall_time_s']:.1f} s: step {self.step}, val top-1 "
                 f"{result.get('val_top1', float('nan')):.2f}% (best {self.best_top1:.2f}% at epoch {self.best_epoch}); "
                 f"files in {self.out}")
        return result
