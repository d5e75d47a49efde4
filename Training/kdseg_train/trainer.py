"""Training and distillation loop: SGD + poly schedule, periodic validation, atomic checkpoints, resume.

Data order is a permutation drawn from ``seed + epoch`` and every sample's augmentation
from ``(seed, epoch, index)``, so a run resumed from a checkpoint replays exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import save_config
from .data import AxialSliceDataset, CTVolume, IGNORE_INDEX, load_ct_volume
from .export import export_safetensors, load_safetensors_model
from .losses import DistillationCriterion, SegmentationLoss
from .models import TransUNet, create_model

__all__ = ["load_volumes", "predict_volume", "dice_per_class", "Trainer", "TrainingInterrupted"]

_log = logging.getLogger("kdseg_train")


class TrainingInterrupted(RuntimeError):
    """Raised after SIGTERM/SIGINT once a checkpoint has been written."""


def load_volumes(entries: List[Dict[str, Any]], hu_window) -> List[CTVolume]:
    """Load the ``data.train``/``data.val`` entries of a config.

    An entry is an image/label pair (image, label, remap, unlabeled, slices, name) or a
    Synapse-layout dataset ``{format: synapse, root: DIR, split: train|test_vol}``.
    """
    volumes = []
    for entry in entries:
        if entry.get("format") == "synapse":
            from .data.synapse import read_synapse_split

            volumes.extend(read_synapse_split(Path(entry["root"]), entry.get("split", "train")))
            continue
        volume = load_ct_volume(Path(entry["image"]), Path(entry["label"]), entry.get("remap", "identity"),
                                entry.get("unlabeled", ()), hu_window, entry.get("name"))
        if "slices" in entry:
            volume = volume.slice_range(*entry["slices"])
        volumes.append(volume)
    return volumes


@torch.no_grad()
def predict_volume(model: nn.Module, volume: CTVolume, img_size: int, batch_size: int = 8) -> np.ndarray:
    """Label map (Z, Y, X) the way the Lib computes it: resize slices, logits back bilinearly, argmax."""
    model.eval()
    z, h, w = volume.image.shape
    out = np.zeros((z, h, w), dtype=np.uint8)
    for first in range(0, z, batch_size):
        x = torch.from_numpy(volume.image[first:first + batch_size])[:, None]
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        logits = F.interpolate(model(x), size=(h, w), mode="bilinear", align_corners=False)
        out[first:first + batch_size] = logits.argmax(1).numpy().astype(np.uint8)
    return out


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> Dict[int, float]:
    """Dice of each foreground class present in ``target`` (ignored voxels excluded)."""
    valid = target != IGNORE_INDEX
    scores = {}
    for c in range(1, num_classes):
        t = (target == c) & valid
        if not t.any():
            continue
        p = (pred == c) & valid
        scores[c] = float(2 * (p & t).sum() / (p.sum() + t.sum()))
    return scores


@dataclass
class _Batches:
    dataset: AxialSliceDataset
    batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.dataset) // self.batch_size)

    def batch(self, step: int):
        epoch, position = divmod(step, self.steps_per_epoch)
        self.dataset.set_epoch(epoch)
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
        ids = order[position * self.batch_size:(position + 1) * self.batch_size].tolist()
        images, labels = zip(*(self.dataset[i] for i in ids))
        return torch.stack(images), torch.stack(labels)


class Trainer:
    """Runs ``kdseg-train train`` (no teacher) or ``distill`` (frozen teacher + KD terms)."""

    def __init__(self, config: Dict[str, Any], distill: bool = False) -> None:
        self.config = config
        self.distill = distill
        self.out = Path(config["output"])
        train_cfg = config["train"]
        if train_cfg.get("threads"):
            torch.set_num_threads(int(train_cfg["threads"]))
        torch.manual_seed(int(train_cfg["seed"]))
        m = config["model"]
        self.img_size = int(m["img_size"])
        self.num_classes = int(m["num_classes"])
        self.model: TransUNet = create_model(m["name"], num_classes=self.num_classes, img_size=self.img_size)
        if m.get("pretrained"):
            from .models.vit_npz import load_vit_r50_npz

            load_vit_r50_npz(self.model, Path(m["pretrained"]))
        data = config["data"]
        if not data["train"]:
            raise ValueError("config data.train lists no volumes")
        self.train_volumes = load_volumes(data["train"], data["hu_window"])
        self.val_volumes = load_volumes(data.get("val", []), data["hu_window"])
        dataset = AxialSliceDataset(self.train_volumes, self.img_size, bool(data.get("augment", True)),
                                    int(train_cfg["seed"]))
        self.batches = _Batches(dataset, int(data["batch_size"]), int(train_cfg["seed"]))
        self.seg_loss = SegmentationLoss(self.num_classes)
        self.teacher: Optional[TransUNet] = None
        self.criterion: Optional[DistillationCriterion] = None
        if distill:
            self._setup_teacher(config["distill"])
        o = config["optim"]
        # Learned projections of distillation terms (MISTKD) train with the student.
        parameters = list(self.model.parameters()) + (list(self.criterion.parameters()) if self.criterion else [])
        self.optimizer = torch.optim.SGD(parameters, lr=float(o["lr"]), momentum=float(o["momentum"]),
                                         weight_decay=float(o["weight_decay"]))
        self.loss_names = ["total", "seg"] + (list(self.criterion.terms) if self.criterion else [])
        self._stop_signal: Optional[int] = None

    def _setup_teacher(self, cfg: Dict[str, Any]) -> None:
        if not cfg.get("teacher"):
            raise ValueError("distill.teacher must name the teacher's run folder (its final/ export)")
        teacher_dir = Path(cfg["teacher"])
        final = teacher_dir / "final" if (teacher_dir / "final").is_dir() else teacher_dir
        if not (final / "model.safetensors").is_file():
            raise FileNotFoundError(f"teacher weights not found in {final} (expected model.safetensors from a "
                                    "finished `kdseg-train train` run)")
        self.teacher = load_safetensors_model(final).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.criterion = DistillationCriterion(cfg, self.model, self.teacher, self.num_classes)
        if not self.criterion.terms:
            raise ValueError("distill: no distillation term has a weight > 0")

    # -- loop -------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        o, max_steps = self.config["optim"], int(self.config["train"]["max_steps"])
        return float(o["lr"]) * (1 - step / max_steps) ** float(o["poly_power"])

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        need_features = self.criterion is not None and self.criterion.needs_features
        out = self.model(images, return_features=need_features)
        logits = out.logits if need_features else out
        terms = {"seg": self.seg_loss(logits, labels)}
        if self.criterion is not None:
            with torch.no_grad():
                t_out = self.teacher(images, return_features=need_features)
            _, kd_terms = self.criterion(out, t_out, labels)
            terms.update(kd_terms)
        terms["total"] = sum(terms.values())
        return terms

    def validate(self) -> Dict[str, float]:
        if not self.val_volumes:
            return {}
        result: Dict[str, float] = {}
        all_scores: List[float] = []
        for volume in self.val_volumes:
            scores = dice_per_class(predict_volume(self.model, volume, self.img_size), volume.labels,
                                    self.num_classes)
            for c, s in scores.items():
                result[f"{volume.name}/dice_{c}"] = s
                all_scores.append(s)
        result["mean_dice"] = float(np.mean(all_scores)) if all_scores else float("nan")
        self.model.train()
        return result

    def _handle_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def run(self, resume: bool = False) -> Path:
        train_cfg = self.config["train"]
        max_steps = int(train_cfg["max_steps"])
        ckpt = self.out / "checkpoint.pt"
        step = 0
        if resume:
            if not ckpt.is_file():
                raise FileNotFoundError(f"--resume given but no checkpoint at {ckpt}")
            step = load_checkpoint(ckpt, self.model, self.optimizer, self.criterion)
            _log.info("resumed from %s at step %d", ckpt, step)
        elif ckpt.exists():
            raise FileExistsError(f"{self.out} already holds a run; pass --resume to continue it or choose "
                                  "another output folder")
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out / "config.yaml")
        log_path, val_path = self.out / "train_log.csv", self.out / "val_log.csv"
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._handle_signal),
                    signal.SIGINT: signal.signal(signal.SIGINT, self._handle_signal)}
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=step, desc="distill" if self.distill else "train", unit="step")
        writer = self._tensorboard()
        self.model.train()
        started = time.time()
        try:
            with open(log_path, "a", newline="") as log_file, open(val_path, "a", newline="") as val_file:
                log = csv.writer(log_file)
                val_log = csv.writer(val_file)
                if log_file.tell() == 0:
                    log.writerow(["step", "lr", *self.loss_names, "seconds"])
                while step < max_steps:
                    lr = self._lr(step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    images, labels = self.batches.batch(step)
                    terms = self._loss(images, labels)
                    self.optimizer.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    self.optimizer.step()
                    step += 1
                    values = {k: float(v.detach()) for k, v in terms.items()}
                    if not math.isfinite(values["total"]):
                        raise FloatingPointError(f"loss became {values['total']} at step {step}; lower optim.lr")
                    log.writerow([step, f"{lr:.6g}", *(f"{values[k]:.5f}" for k in self.loss_names),
                                  f"{time.time() - started:.1f}"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['total']:.3f}")
                    if writer is not None:
                        for key, value in values.items():
                            writer.add_scalar(f"loss/{key}", value, step)
                        writer.add_scalar("lr", lr, step)
                    if step % int(train_cfg["checkpoint_every"]) == 0 or step == max_steps:
                        save_checkpoint(ckpt, self.model, self.optimizer, step, self.criterion)
                        log_file.flush()
                    if self.val_volumes and (step % int(train_cfg["val_every"]) == 0 or step == max_steps):
                        metrics = self.validate()
                        if val_file.tell() == 0:
                            val_log.writerow(["step"] + list(metrics))
                        val_log.writerow([step] + [f"{v:.4f}" for v in metrics.values()])
                        val_file.flush()
                        if writer is not None:
                            for key, value in metrics.items():
                                writer.add_scalar(f"val/{key}", value, step)
                        _log.info("step %d validation mean Dice %.3f", step, metrics["mean_dice"])
                    if self._stop_signal is not None:
                        save_checkpoint(ckpt, self.model, self.optimizer, step, self.criterion)
                        raise TrainingInterrupted(
                            f"stopped by signal {self._stop_signal} at step {step}; checkpoint saved to {ckpt}. "
                            f"Resume with the same command plus --resume.")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        final = self.out / "final"
        export_safetensors(self.model, final, {"steps": step, "kind": "distill" if self.distill else "train"})
        summary = {"steps": step, "wall_seconds_this_session": time.time() - started, "final": str(final)}
        if self.val_volumes:
            summary["validation"] = self.validate()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        self._write_figures(summary.get("validation"))
        return final

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            _log.warning("tensorboard is not installed; logging to CSV only")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _write_figures(self, validation: Optional[Dict[str, float]]) -> None:
        from .plots import plot_losses, plot_validation_dice, save_overlay

        figures = self.out / "figures"
        figures.mkdir(exist_ok=True)
        plot_losses(self.out / "train_log.csv", figures / "losses.png")
        if validation:
            plot_validation_dice(validation, figures / "validation_dice.png")
        for volume in self.val_volumes:
            pred = predict_volume(self.model, volume, self.img_size)
            z = int(np.argmax((volume.labels % 255 > 0).sum(axis=(1, 2))))
            save_overlay(volume.image[z], pred[z], figures / f"overlay_{volume.name.split('[')[0]}.png",
                         volume.labels[z], volume.name)
