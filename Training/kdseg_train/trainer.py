"""Training and distillation loop behind ``kdseg-train train`` and ``kdseg-train distill``.

One :class:`Trainer` runs a config end to end: SGD + polynomial LR decay (TransUNet),
AMP on CUDA, DistributedDataParallel under ``torchrun``, periodic validation Dice on
held-back cases, atomic checkpoints every ``train.checkpoint_every`` steps, exact resume
(``--resume``) and a clean stop on SIGTERM/SIGINT (checkpoint, then a non-zero exit that
says how to resume). Rank 0 alone writes files.

Exact resume rests on three facts: batches are a pure function of (seed, step)
(:mod:`kdseg_train.batch_plan`), augmentation of sample i in epoch e is seeded by
(seed, e, i), and the checkpoint holds the optimiser, scheduler, grad-scaler and every
process's random state (dropout).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from KDSegmentationLib.atomic_files import write_text_atomic

from .balanced_batch_plan import BalancedBatchPlan
from .batch_plan import BatchPlan, EpochIndexedDataset
from .checkpoint import (CheckpointError, capture_rng_state, latest_checkpoint, load_checkpoint,
                         restore_rng_state, save_checkpoint)
from .config import save_config
from .distributed import DistributedContext, init_distributed, select_device
from .errors import UsageError
from .metrics import validation_dice
from .run_data import EvaluationCase, build_training_dataset, has_partial_labels, load_cases, model_grid
from .run_logs import CsvLog, open_tensorboard
from .volume_inference import predict_case

__all__ = ["Trainer", "TrainingInterrupted", "TrainingObjective", "RunExistsError", "build_model",
           "load_teacher"]

_log = logging.getLogger("kdseg_train")

# Config sections that must not change between a run and its resume.
_FROZEN_ON_RESUME = ("model", "data", "loss", "optim", "distill")
# Free on resume: loader workers, and the validation cases (they change what is measured, never the weights).
_FREE_DATA_KEYS = ("num_workers", "val")
SAMPLINGS = ("uniform", "class_balanced")
# distill keys that configure where the teacher's signal comes from, not a loss term.
_DISTILL_SETTINGS = ("teacher", "logit_cache")


class TrainingInterrupted(RuntimeError):
    """Raised after SIGTERM/SIGINT once a checkpoint has been written; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class RunExistsError(FileExistsError):
    """The output folder already holds a run and ``--resume`` was not given."""


def build_model(model_cfg: Dict[str, Any]) -> nn.Module:
    """The network a ``model:`` section names (plus ImageNet-21k weights when ``pretrained`` is set)."""
    from .models import create_model

    model = create_model(model_cfg["name"], num_classes=int(model_cfg["num_classes"]),
                         img_size=int(model_cfg["img_size"]), in_channels=int(model_cfg["in_channels"]),
                         **dict(model_cfg.get("overrides") or {}))
    if model_cfg.get("pretrained"):
        from .models.pretrained import load_pretrained

        load_pretrained(model, Path(model_cfg["pretrained"]))  # fails on a wrong file before any step
    return model


def load_teacher(path: Path) -> nn.Module:
    """A frozen network from a finished run folder (its ``final/``) or an export folder."""
    from .export import load_safetensors_model

    path = Path(path)
    final = path / "final" if (path / "final").is_dir() else path
    if not (final / "model.safetensors").is_file():
        raise FileNotFoundError(f"teacher weights not found: {final / 'model.safetensors'} does not exist; set "
                                "distill.teacher to the output folder of a finished `kdseg-train train` run")
    teacher = load_safetensors_model(final).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def _build_criterion(cfg: Dict[str, Any], student: nn.Module, teacher: nn.Module, num_classes: int) -> nn.Module:
    from .losses import DistillationCriterion

    terms = {k: v for k, v in cfg.items() if k not in _DISTILL_SETTINGS}
    criterion = DistillationCriterion(terms, student, teacher, num_classes)
    if not list(criterion.terms):
        raise UsageError("distill: no distillation term has a weight > 0 (e.g. distill.pixel_kd.weight=0.5); "
                         "use `kdseg-train train` for a run without a teacher")
    return criterion


class TrainingObjective(nn.Module):
    """The trainable modules and their loss: one forward gives every loss term.

    Holding the student and the distillation projections in one module lets
    DistributedDataParallel average the gradients of both, and lets one safetensors
    file checkpoint both.

    Args:
        model: the network being trained.
        seg_loss: segmentation loss (logits, labels) -> scalar.
        criterion: distillation criterion (student_out, teacher_out, labels) -> (total, terms), or None.
    """

    def __init__(self, model: nn.Module, seg_loss: nn.Module, criterion: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.model = model
        self.seg_loss = seg_loss
        self.criterion = criterion
        self.global_batch_loss = False

    @property
    def needs_features(self) -> bool:
        return bool(self.criterion is not None and getattr(self.criterion, "needs_features", False))

    def forward(self, images: torch.Tensor, labels: torch.Tensor, teacher_out: Any = None) -> Dict[str, torch.Tensor]:
        """Loss terms for a batch: images (B, C, S, S), labels (B, S, S) -> {"total", "seg", <kd terms>}.

        With :attr:`global_batch_loss` (set under DistributedDataParallel) the segmentation
        loss, whose Dice term is a statistic of the whole batch, is computed on the logits
        of all processes, so it equals the single-process loss on the same global batch.
        """
        features = self.needs_features
        out = self.model(images, return_features=features) if features else self.model(images)
        logits = out.logits if features else out
        if self.global_batch_loss:
            from .distributed import gather_batch

            seg = self.seg_loss(gather_batch(logits.float(), True), gather_batch(labels, False))
        else:
            seg = self.seg_loss(logits.float(), labels)
        terms: Dict[str, torch.Tensor] = {"seg": seg}
        if self.criterion is not None:
            _, kd_terms = self.criterion(out, teacher_out, labels)
            terms.update({k: v.float() for k, v in kd_terms.items()})
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms


def _amp_setting(requested: Any, device: torch.device) -> Tuple[bool, Optional[torch.dtype]]:
    if requested in (False, "false", "off", None):
        return False, None
    if requested not in ("auto", True, "true", "on"):
        raise UsageError(f"train.amp must be auto, true or false, got {requested!r}")
    if device.type == "cuda":
        return True, torch.float16
    if requested == "auto":
        return False, None
    return True, torch.bfloat16  # explicit request on CPU: bfloat16 autocast, no loss scaling needed


class Trainer:
    """Runs ``kdseg-train train`` (segmentation loss only) or ``distill`` (frozen teacher + KD terms).

    Args:
        config: resolved run config (see :mod:`kdseg_train.config`).
        distill: train against ``distill.teacher`` with the configured distillation terms.
    """

    def __init__(self, config: Dict[str, Any], distill: bool = False) -> None:
        self.config = config
        self.distill = distill
        self.out = Path(config["output"])
        train_cfg, data_cfg, model_cfg = config["train"], config["data"], config["model"]
        if train_cfg.get("threads"):
            torch.set_num_threads(int(train_cfg["threads"]))
        self.ctx: DistributedContext = init_distributed(str(train_cfg["device"]))
        self.device = select_device(str(train_cfg["device"]), self.ctx)
        self.amp, self.amp_dtype = _amp_setting(train_cfg["amp"], self.device)
        self.max_steps = int(train_cfg["max_steps"])
        if self.max_steps < 1:
            raise UsageError(f"train.max_steps must be >= 1, got {self.max_steps}")
        self.seed = int(train_cfg["seed"])
        self.img_size = int(model_cfg["img_size"])
        self.num_classes = int(model_cfg["num_classes"])
        self.grid = model_grid(model_cfg)
        self.sampling = str(data_cfg["sampling"])
        if self.sampling not in SAMPLINGS:
            raise UsageError(f"data.sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")

        torch.manual_seed(self.seed)
        model = build_model(model_cfg)
        self.teacher: Optional[nn.Module] = None
        criterion = None
        if distill:
            if not config["distill"].get("teacher"):
                raise UsageError("distill.teacher is not set: give the output folder of the teacher's `kdseg-train "
                                 "train` run (e.g. --set distill.teacher=runs/teacher_demo)")
            self.teacher = load_teacher(Path(config["distill"]["teacher"])).to(self.device)
            if getattr(self.teacher, "img_size", self.img_size) != self.img_size:
                raise UsageError(f"the teacher was trained at {self.teacher.img_size} px and the student is configured "
                                 f"for {self.img_size} px; both see the same batch, so set model.img_size="
                                 f"{self.teacher.img_size}")
            _check_teacher_grid(Path(config["distill"]["teacher"]), model_cfg)
            criterion = _build_criterion(config["distill"], model, self.teacher, self.num_classes)
        from .losses import SegmentationLoss

        loss_cfg = config["loss"]
        seg_loss = SegmentationLoss(self.num_classes, ce_weight=float(loss_cfg["ce_weight"]),
                                    dice_weight=float(loss_cfg["dice_weight"]))
        self.objective = TrainingObjective(model, seg_loss, criterion).to(self.device)
        self.model = model
        self.loss_names = ["total", "seg"] + (list(criterion.terms) if criterion is not None else [])

        o = config["optim"]
        self.optimizer = torch.optim.SGD([p for p in self.objective.parameters() if p.requires_grad],
                                         lr=float(o["lr"]), momentum=float(o["momentum"]),
                                         weight_decay=float(o["weight_decay"]))
        power = float(o["poly_power"])
        # Closed form (not the chainable PolynomialLR): the LR at step t is exactly
        # base_lr * (1 - t / max_steps) ** power, also after a resume.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: max(0.0, 1.0 - step / self.max_steps) ** power)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

        self.dataset = build_training_dataset(data_cfg, self.img_size, self.num_classes, self.seed, grid=self.grid)
        if has_partial_labels(self.dataset):
            from .losses.partial_label import PartialLabelLoss

            # Cases that label only some organs: marginal + exclusion losses, equal weights as Shi et al. 2021.
            self.objective.seg_loss = PartialLabelLoss(
                self.num_classes, ce_weight=float(loss_cfg["ce_weight"]),
                dice_weight=float(loss_cfg["dice_weight"]))
        if self.sampling == "class_balanced" and not hasattr(self.dataset, "organ_presence"):
            raise UsageError("data.sampling class_balanced needs CT slices on the model grid: set "
                             "data.augmentation=tiny_data")
        self.cached_logits = False
        if criterion is not None:
            self.cached_logits = self._use_logit_cache(config["distill"], criterion)
        self.val_cases: List[EvaluationCase] = (
            load_cases(data_cfg.get("val") or [], data_cfg["hu_window"], self.num_classes, self.img_size)
            if self.ctx.is_main else [])
        self.global_batch = int(data_cfg["batch_size"])
        # Checked now, before the run folder is created: batch size vs data and process count.
        self._batch_plan(0)
        self._stop_signal: Optional[int] = None
        self._wall_before = 0.0
        self._cpu_before = 0.0

    # -- pieces ---------------------------------------------------------------------------
    def _use_logit_cache(self, distill_cfg: Dict[str, Any], criterion: nn.Module) -> bool:
        """Replace the teacher's forward pass by its cached logits when every active term reads logits only.

        ``distill.logit_cache``: ``auto`` (default) uses the cache when possible, ``false``
        never, or a folder for the cache (default ``<teacher>/logit_cache``).
        """
        from .logit_cache import load_or_build_logit_cache
        from .losses import LOGIT_TERMS

        setting = distill_cfg.get("logit_cache", "auto")
        if setting in (False, "false", "off", None):
            return False
        logit_only = all(name in LOGIT_TERMS for name in criterion.terms) and not criterion.needs_features
        if not logit_only or not hasattr(self.dataset, "attach_logits"):
            if setting not in ("auto", True, "true", "on"):
                raise UsageError(f"distill.logit_cache {setting!r}: cached logits serve only "
                                 f"{', '.join(LOGIT_TERMS)} on data.augmentation=tiny_data; the active terms "
                                 f"{sorted(criterion.terms)} need the teacher's forward pass (set logit_cache=auto)")
            return False
        teacher_dir = Path(distill_cfg["teacher"])
        folder = teacher_dir / "logit_cache" if setting in ("auto", True, "true", "on") else Path(str(setting))
        build = dict(teacher=self.teacher, teacher_dir=teacher_dir, model_inputs=self.dataset.model_inputs(),
                     data_fingerprint=self.dataset.fingerprint(), folder=folder,
                     batch_size=int(self.config["data"]["batch_size"]), device=self.device)
        if self.ctx.is_main:
            logits = load_or_build_logit_cache(**build)
        self.ctx.barrier()
        if not self.ctx.is_main:
            logits = load_or_build_logit_cache(**build)
        self.dataset.attach_logits(logits)
        self.teacher = None  # not needed any more: every step reads the cache
        return True

    def _batch_plan(self, start_step: int):
        if self.sampling == "class_balanced":
            return BalancedBatchPlan(self.dataset.organ_presence(self.num_classes), self.global_batch, self.seed,
                                     start_step, self.max_steps, self.ctx.rank, self.ctx.world_size)
        return BatchPlan(len(self.dataset), self.global_batch, self.seed, start_step, self.max_steps,
                         self.ctx.rank, self.ctx.world_size)

    def _loader(self, start_step: int) -> DataLoader:
        plan = self._batch_plan(start_step)
        workers = int(self.config["data"]["num_workers"])
        return DataLoader(EpochIndexedDataset(self.dataset), batch_sampler=plan, num_workers=workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init if workers else None,
                          # A private generator: creating the loader must not consume the global
                          # torch RNG, whose state (dropout) the checkpoint restores.
                          generator=torch.Generator().manual_seed(self.seed))

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def engine(self) -> nn.Module:
        """The module the loop calls: the objective, wrapped in DistributedDataParallel under torchrun."""
        if not self.ctx.enabled:
            return self.objective
        self.objective.global_batch_loss = True
        if self.device.type == "cuda" and self.config["train"]["sync_batchnorm"]:
            # BatchNorm statistics over the global batch, as one process would compute them
            # (PyTorch's SyncBatchNorm runs on GPUs only; on CPU each process normalises its share).
            self.objective.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.objective.model)
            self.model = self.objective.model
        return nn.parallel.DistributedDataParallel(
            self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def forward_backward(self, engine: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         teacher_logits: Optional[torch.Tensor] = None,
                         teacher_valid: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Loss terms of one batch with gradients accumulated into the parameters (scaled under fp16 AMP).

        Args:
            images (B, C, S, S), labels (B, S, S): the batch.
            teacher_logits (B, K, S, S), teacher_valid (B, S, S): cached teacher logits moved with the
                augmentation (then the teacher does not run), or None.
        """
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        teacher_out = None
        with self._autocast():
            if teacher_logits is not None:
                from .losses import CachedTeacherLogits

                teacher_out = CachedTeacherLogits(teacher_logits.to(self.device, non_blocking=True),
                                                  None if teacher_valid is None else teacher_valid.to(self.device))
            elif self.teacher is not None:
                with torch.no_grad():
                    features = self.objective.needs_features
                    teacher_out = self.teacher(images, return_features=features) if features else self.teacher(images)
            terms = engine(images, labels, teacher_out)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        return terms

    def _step(self, engine: nn.Module, *batch: torch.Tensor) -> Dict[str, float]:
        terms = self.forward_backward(engine, *batch)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def validate(self) -> Dict[str, Any]:
        """Dice per case and organ on ``data.val`` (rank 0), and their mean."""
        per_case: Dict[str, Dict[int, float]] = {}
        for case in self.val_cases:
            pred = predict_case(self.model, case.image, self.grid, device=self.device, spacing_yx=case.spacing_zyx[1:])
            scores = validation_dice(pred, case.labels, self.num_classes)
            per_case[case.name] = {k: v for k, v in scores.items() if k in case.organs}
        values = [v for scores in per_case.values() for v in scores.values()]
        return {"mean_dice": float(np.mean(values)) if values else float("nan"), "cases": per_case}

    def _val_columns(self) -> List[str]:
        names = _organ_names(self.num_classes)
        columns = ["step", "mean_dice"]
        for case in self.val_cases:
            present = [i for i in case.organs if (case.labels == i).any()]
            columns += [f"{case.name}/{names.get(i, str(i))}" for i in present]
        return columns

    def _handle_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, the last periodic checkpoint stays
        self._stop_signal = signum
        if self.ctx.is_main:
            _log.warning("signal %d received: finishing this step, writing a checkpoint, then stopping", signum)

    def _check_resumable(self) -> None:
        saved_path = self.out / "config.yaml"
        if not saved_path.is_file():
            return
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        changed = []
        for section in _FROZEN_ON_RESUME:
            old, new = dict(saved.get(section) or {}), dict(self.config.get(section) or {})
            if section == "data":
                for key in _FREE_DATA_KEYS:
                    old.pop(key, None)
                    new.pop(key, None)
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    changed.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
        if changed:
            raise UsageError(f"cannot resume {self.out}: the config differs from the run's saved config.yaml in "
                             f"{'; '.join(changed)}. Resume with the original settings, or start a new run in "
                             "another output folder")
        if int((saved.get("train") or {}).get("max_steps", self.max_steps)) != self.max_steps:
            _log.warning("train.max_steps changed on resume; the polynomial LR schedule is recomputed for %d steps",
                         self.max_steps)

    def _restore(self) -> int:
        checkpoints = self.out / "checkpoints"
        path = latest_checkpoint(checkpoints)
        if path is None:
            raise CheckpointError(f"--resume given but {checkpoints} holds no complete checkpoint; start without "
                                  "--resume (the run saves its first checkpoint after train.checkpoint_every steps)")
        self._check_resumable()
        ckpt = load_checkpoint(path)
        try:
            self.objective.load_state_dict({k: v.to(self.device) for k, v in ckpt.weights.items()})
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model/distillation setup ({exc})") from exc
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        if ckpt.scaler is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt.scaler)
        if len(ckpt.rng_states) == self.ctx.world_size:
            restore_rng_state(ckpt.rng_states[self.ctx.rank])
        else:
            _log.warning("checkpoint written by %d process(es), resuming with %d: data order is kept, dropout "
                         "randomness is reseeded", len(ckpt.rng_states), self.ctx.world_size)
            restore_rng_state(ckpt.rng_states[0])
            torch.manual_seed(self.seed + 7919 * (ckpt.step + 1) + self.ctx.rank)
        self._wall_before = float(ckpt.meta.get("wall_seconds", 0.0))
        self._cpu_before = float(ckpt.meta.get("cpu_seconds", 0.0))
        if self.ctx.is_main:
            _log.warning("resumed from %s at step %d of %d", path, ckpt.step, self.max_steps)
        return ckpt.step

    def _save(self, step: int, started_wall: float, started_cpu: float) -> None:
        rng_states = self.ctx.gather_objects(capture_rng_state())
        cpu_seconds = self.ctx.sum(time.process_time() - started_cpu)
        if self.ctx.is_main:
            meta = {"world_size": self.ctx.world_size, "max_steps": self.max_steps, "device": str(self.device),
                    "wall_seconds": self._wall_before + time.time() - started_wall,
                    "cpu_seconds": self._cpu_before + cpu_seconds}
            save_checkpoint(self.out / "checkpoints", step, self.objective, self.optimizer, self.scheduler,
                            self.scaler, rng_states, meta, keep=int(self.config["train"]["keep_checkpoints"]))
        self.ctx.barrier()

    # -- run ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Path:
        """Train to ``train.max_steps`` and write ``final/``; returns that folder.

        Raises:
            RunExistsError: the output folder holds a run and ``resume`` is False.
            TrainingInterrupted: stopped by SIGTERM/SIGINT after writing a checkpoint.
        """
        try:
            return self._run(resume)
        finally:
            self.ctx.shutdown()

    def _run(self, resume: bool) -> Path:
        train_cfg = self.config["train"]
        checkpoints = self.out / "checkpoints"
        if resume:
            step = self._restore()
        else:
            if latest_checkpoint(checkpoints) is not None or (self.out / "final").exists():
                raise RunExistsError(f"{self.out} already holds a run; add --resume to continue it, or set another "
                                     "output folder (--set output=runs/new_name)")
            step = 0
            torch.manual_seed(self.seed + self.ctx.rank)  # dropout stream of this process
        resume_step = step if resume else None
        csv_log = val_log = writer = bar = None
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out / "config.yaml")
            csv_log = CsvLog(self.out / "train_log.csv", ["step", "epoch", "lr", *self.loss_names, "seconds"],
                             resume_step)
            if self.val_cases:
                val_log = CsvLog(self.out / "val_log.csv", self._val_columns(), resume_step)
            if train_cfg["tensorboard"]:
                writer = open_tensorboard(self.out / "tensorboard", resume_step)
            from tqdm import tqdm

            bar = tqdm(total=self.max_steps, initial=step, desc="distill" if self.distill else "train", unit="step",
                       dynamic_ncols=True)
        engine = self.engine()
        previous = {sig: signal.signal(sig, self._handle_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        started_wall, started_cpu = time.time(), time.process_time()
        checkpoint_every = max(1, int(train_cfg["checkpoint_every"]))
        val_every = max(1, int(train_cfg["val_every"]))
        log_every = max(1, int(train_cfg["log_every"]))
        plan = None
        last_val: Optional[Dict[str, Any]] = None
        self.objective.train()
        try:
            loader = self._loader(step)
            plan = loader.batch_sampler
            for batch in loader:
                lr = self.optimizer.param_groups[0]["lr"]
                values = self._step(engine, *batch)
                step += 1
                if not math.isfinite(values["total"]):
                    raise FloatingPointError(f"the loss became {values['total']} at step {step}; lower optim.lr "
                                             "(or disable train.amp) and resume from the last checkpoint")
                if self.ctx.is_main:
                    if step % log_every == 0 or step == self.max_steps:
                        csv_log.write(dict(values, step=step, epoch=plan.epoch_of(step - 1), lr=lr,
                                           seconds=round(self._wall_before + time.time() - started_wall, 2)))
                        if writer is not None:
                            for key, value in values.items():
                                writer.add_scalar(f"loss/{key}", value, step)
                            writer.add_scalar("lr", lr, step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['total']:.4f}", **(
                        {"val_dice": f"{last_val['mean_dice']:.3f}"} if last_val else {}))
                if self.val_cases and (step % val_every == 0 or step == self.max_steps):
                    last_val = self._log_validation(step, val_log, writer)
                stop = self.ctx.any_true(self._stop_signal is not None)
                if step % checkpoint_every == 0 or step == self.max_steps or stop:
                    if csv_log is not None:
                        csv_log.flush()
                    self._save(step, started_wall, started_cpu)
                if stop:
                    raise TrainingInterrupted(
                        f"stopped by signal at step {step} of {self.max_steps}; checkpoint saved in {checkpoints}. "
                        "Resume with the same command plus --resume", self._stop_signal or signal.SIGTERM)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for closeable in (bar, csv_log, val_log, writer):
                if closeable is not None:
                    closeable.close()
        return self._finish(step, started_wall, started_cpu, last_val)

    def _log_validation(self, step: int, val_log: Optional[CsvLog], writer) -> Dict[str, Any]:
        result = self.validate()
        names = _organ_names(self.num_classes)
        row: Dict[str, Any] = {"step": step, "mean_dice": result["mean_dice"]}
        for case, scores in result["cases"].items():
            for index, value in scores.items():
                row[f"{case}/{names.get(index, str(index))}"] = value
        if val_log is not None:
            val_log.write(row)
            val_log.flush()
        if writer is not None:
            for key, value in row.items():
                if key != "step":
                    writer.add_scalar(f"val/{key}", value, step)
        _log.info("step %d: validation mean Dice %.4f", step, result["mean_dice"])
        return result

    def _finish(self, step: int, started_wall: float, started_cpu: float,
                last_val: Optional[Dict[str, Any]]) -> Path:
        from .export import export_safetensors

        final = self.out / "final"
        recalibrated = self._recalibrate_batchnorm() if self.config["train"].get("recalibrate_batchnorm") else 0
        if recalibrated:
            last_val = None  # the statistics changed: validate the network that is saved
        cpu_seconds = self.ctx.sum(time.process_time() - started_cpu)
        if self.ctx.is_main:
            wall = self._wall_before + time.time() - started_wall
            export_safetensors(self.model, final, {"steps": step, "kind": "distill" if self.distill else "train"})
            summary = {
                "steps": step, "kind": "distill" if self.distill else "train",
                "model": self.config["model"]["name"], "device": str(self.device),
                "world_size": self.ctx.world_size, "threads": torch.get_num_threads(),
                "wall_hours": wall / 3600.0, "cpu_hours": (self._cpu_before + cpu_seconds) / 3600.0,
                "train_slices": len(self.dataset), "final": str(final),
            }
            if recalibrated:
                summary["batchnorm_recalibration_slices"] = recalibrated
            if last_val is None and self.val_cases:
                last_val = self.validate()
            if last_val is not None:
                names = _organ_names(self.num_classes)
                summary["validation"] = {"mean_dice": last_val["mean_dice"],
                                         "cases": {case: {names.get(i, str(i)): v for i, v in scores.items()}
                                                   for case, scores in last_val["cases"].items()}}
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2))
            if self.config["train"]["figures"]:
                self._write_figures(summary.get("validation"))
        self.ctx.barrier()
        return final

    def _recalibrate_batchnorm(self) -> int:
        """Exact BatchNorm statistics over the un-augmented training slices (every rank, same data)."""
        from .batchnorm_recalibration import batchnorm_layers, recalibrate_batchnorm

        if not batchnorm_layers(self.model):
            return 0
        data_cfg = dict(self.config["data"], augment=False)
        clean = build_training_dataset(data_cfg, self.img_size, self.num_classes, self.seed, grid=self.grid)
        loader = DataLoader(clean, batch_size=int(data_cfg["batch_size"]), shuffle=False, num_workers=0)
        images = (batch[0].to(self.device, non_blocking=True) for batch in loader)
        seen = recalibrate_batchnorm(self.model, images)
        if self.ctx.is_main:
            print(f"BatchNorm statistics recomputed over {seen} un-augmented training slices "
                  "(train.recalibrate_batchnorm)", flush=True)
        return seen

    def _write_figures(self, validation: Optional[Dict[str, Any]]) -> None:
        from .plots import plot_losses, plot_validation_curve, plot_validation_dice, save_overlay

        figures = self.out / "figures"
        figures.mkdir(exist_ok=True)
        plot_losses(self.out / "train_log.csv", figures / "losses.png")
        if validation:
            plot_validation_dice(validation, figures / "validation_dice.png")
        if (self.out / "val_log.csv").is_file():
            plot_validation_curve(self.out / "val_log.csv", figures / "validation_curve.png")
        for case in self.val_cases:
            pred = predict_case(self.model, case.image, self.grid, device=self.device, spacing_yx=case.spacing_zyx[1:])
            annotated = ((case.labels > 0) & (case.labels != 255)).sum(axis=(1, 2))
            z = int(np.argmax(annotated))
            save_overlay(case.image[z], pred[z], figures / f"overlay_{_file_safe(case.name)}.png", case.labels[z],
                         f"{case.name} z={z}")


def _check_teacher_grid(teacher_dir: Path, model_cfg: Dict[str, Any]) -> None:
    """Refuse a teacher whose run config puts slices on another grid than the student's."""
    saved = teacher_dir / "config.yaml"
    if not saved.is_file():
        return  # an export folder: its config.json records the size only (checked by the caller)
    teacher_model = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("model") or {}
    theirs, ours = teacher_model.get("pixel_spacing_mm"), model_cfg.get("pixel_spacing_mm")
    if theirs != ours:
        raise UsageError(f"the teacher in {teacher_dir} was trained with model.pixel_spacing_mm={theirs} and the "
                         f"student is configured with {ours}; both must see the same slices, so set "
                         f"model.pixel_spacing_mm={theirs}")


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers only index arrays and augment one slice at a time


def _organ_names(num_classes: int) -> Dict[int, str]:
    if num_classes != 9:
        return {i: f"class{i}" for i in range(num_classes)}
    from KDSegmentationLib.anatomy import SYNAPSE_ORGANS

    return {organ.index: organ.name for organ in SYNAPSE_ORGANS}


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
