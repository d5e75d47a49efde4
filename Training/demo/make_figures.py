"""README figures: the shipped model's organs on a slice of the bundled sample CT, and the
teacher / student-with-KD / student-without-KD validation Dice chart; prints the model card's
per-organ table (Markdown) from the same evaluation reports.

    python Training/demo/make_figures.py RUNS_DIR OUTPUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from KDSegmentationLib.anatomy import SYNAPSE_ORGANS  # noqa: E402
from KDSegmentationLib.imaging.orientation import to_canonical  # noqa: E402
from KDSegmentationLib.inference.pipeline import Segmenter, segment_image  # noqa: E402
from KDSegmentationLib.inference.preprocessing import window_to_unit  # noqa: E402
from KDSegmentationLib.resources import sample_ct_path  # noqa: E402


def overlay(output: Path) -> None:
    ct = sitk.ReadImage(str(sample_ct_path()))
    segmenter = Segmenter.from_registry(device="cpu", allow_download=False)
    labels = sitk.GetArrayFromImage(to_canonical(segment_image(ct, segmenter).labels))
    image = window_to_unit(sitk.GetArrayFromImage(to_canonical(ct)), (-160, 240))
    z = int(np.argmax([len(np.unique(s)) * 1e6 + (s > 0).sum() for s in labels]))
    colours = np.zeros((256, 4))
    for organ in SYNAPSE_ORGANS:
        colours[organ.index] = (*[c / 255 for c in organ.color], 0.6)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(image[z], cmap="gray", vmin=0, vmax=1)
    ax.imshow(colours[labels[z]])
    present = [o for o in SYNAPSE_ORGANS if (labels[z] == o.index).any()]
    for organ in present:
        ax.plot([], [], "s", color=np.array(organ.color) / 255, label=organ.display_name)
    if present:
        ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
    ax.set_title(f"{segmenter.card.id}: bundled sample CT, axial slice {z}", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(output, dpi=130)
    plt.close(fig)


MODELS = {"teacher R50-ViT-B/16": "teacher_demo", "student SHSA + KD (shipped)": "student_distill_demo",
          "student SHSA, no KD": "student_nokd_demo"}


def _summary(runs: Path, run: str) -> dict:
    return json.loads((runs / "eval" / run / "evaluation.json").read_text(encoding="utf-8"))["summary"]


def ablation_table(runs: Path) -> str:
    """Per-organ validation Dice / HD95 (mm) of the three demo models, as a Markdown table (model card)."""
    summaries = {title: _summary(runs, run) for title, run in MODELS.items()}
    lines = ["| organ (validation cases) | " + " | ".join(MODELS) + " |", "|---|" + "---|" * len(MODELS)]

    def cell(stats: dict) -> str:
        return "n/a" if not stats.get("n") else f"{stats['mean']:.3f}"

    def hd(stats: dict) -> str:
        return "–" if not stats.get("n") else f"{stats['mean']:.1f}"

    for organ in SYNAPSE_ORGANS:
        first = next(iter(summaries.values()))["transunet"]["organs"].get(organ.name)
        if first is None:
            continue
        row = [f"{organ.display_name.lower()} ({first['dice']['n']})"]
        for summary in summaries.values():
            dice = summary["transunet"]["organs"][organ.name]["dice"]
            hd95 = summary["physical"]["organs"][organ.name]["hd95_mm"]
            row.append(f"{cell(dice)} / {hd(hd95)}")
        lines.append("| " + " | ".join(row) + " |")
    means = [f"{s['transunet']['mean']['dice']['mean']:.3f}" for s in summaries.values()]
    lines.append("| **mean Dice, 8 organs** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return "\n".join(lines)


def comparison(runs: Path, output: Path) -> None:
    organs = [o.name for o in SYNAPSE_ORGANS]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.27
    for i, (title, run) in enumerate(MODELS.items()):
        per_organ = _summary(runs, run)["transunet"]["organs"]
        values = [per_organ.get(o, {}).get("dice", {}).get("mean", np.nan) for o in organs]
        ax.bar(np.arange(len(organs)) + (i - 1) * width, values, width, label=title)
    ax.set_xticks(range(len(organs)))
    ax.set_xticklabels(organs, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (validation)")
    ax.set_title("Demonstration weights (2 training patients, CPU): validation Dice per organ", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    runs_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay(out_dir / "segmentation.png")
    comparison(runs_dir, out_dir / "kd_ablation.png")
    print(ablation_table(runs_dir))
