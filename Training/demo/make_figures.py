"""README figures and model-card tables of the demonstration weights, from the evaluation reports.

- ``segmentation.png``: the shipped model's organs on a slice of the bundled sample CT;
- ``kd_ablation.png``: validation Dice per organ of teacher, KD student and no-KD student
  (full data; held-back band of the example CT and the dcmqi patient);
- ``lopo.png``: the leave-one-patient-out check, Dice per organ on the DICOM patient that
  none of these models saw, recipe v1 against recipe v2;
- printed: both tables (Markdown) for the model card, README and Training/README.

    python Training/demo/make_figures.py RUNS_DIR OUTPUT_DIR [SHIPPED_RUN]

Evaluation reports are read from ``RUNS_DIR/eval/<run>/evaluation.json`` (see
``reproduce_demo_weights_v2.sh``); a run without one is left out of tables and figures and named.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict

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
    for organ in SYNAPSE_ORGANS:  # outlines: neighbouring organs of similar terminology colours stay apart
        mask = labels[z] == organ.index
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[np.array(organ.color) / 255 * 0.6], linewidths=0.8)
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


SHIPPED = sys.argv[3] if len(sys.argv) > 3 else "student_distill_v2"

# title -> evaluation folder under RUNS_DIR/eval
FULL_DATA = {"teacher R50-ViT-B/16": "teacher_v2_fullval", "student + KD": "student_distill_v2",
             "student, no KD": "student_nokd_v2"}
LOPO = {"v1 recipe student, no KD": "student_nokd_demo_lopo", "v2 student, no KD": "student_nokd_v2_lopo",
        "v2 student + KD": "student_distill_v2_lopo", "v2 teacher": "teacher_v2"}


def _titles(models: Dict[str, str]) -> Dict[str, str]:
    return {(f"{title} (shipped)" if run == SHIPPED else title): run for title, run in models.items()}


def _summaries(runs: Path, models: Dict[str, str]) -> Dict[str, dict]:
    found = {}
    for title, run in _titles(models).items():
        path = runs / "eval" / run / "evaluation.json"
        if path.is_file():
            found[title] = json.loads(path.read_text(encoding="utf-8"))["summary"]
        else:
            print(f"(no evaluation report for {run}: left out)", file=sys.stderr)
    return found


def dice_table(runs: Path, models: Dict[str, str], mean_label: str) -> str:
    """Per-organ Dice / HD95 (mm) of ``models`` as a Markdown table; organs no case annotates are left out."""
    summaries = _summaries(runs, models)
    if not summaries:
        return "(no evaluation reports)"
    lines = ["| organ (cases) | " + " | ".join(summaries) + " |", "|---|" + "---|" * len(summaries)]

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
    lines.append(f"| **{mean_label}** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return "\n".join(lines)


def dice_chart(runs: Path, models: Dict[str, str], title: str, output: Path) -> None:
    summaries = _summaries(runs, models)
    organs = [o.name for o in SYNAPSE_ORGANS
              if any(o.name in s["transunet"]["organs"] for s in summaries.values())]
    fig, ax = plt.subplots(figsize=(10.5, 3.6))
    width = 0.8 / max(1, len(summaries))
    for i, (label, summary) in enumerate(summaries.items()):
        per_organ = summary["transunet"]["organs"]
        values = [per_organ.get(o, {}).get("dice", {}).get("mean", np.nan) for o in organs]
        ax.bar(np.arange(len(organs)) + (i - (len(summaries) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(range(len(organs)))
    ax.set_xticklabels(organs, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside the bars
    fig.tight_layout()
    fig.savefig(output, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    runs_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay(out_dir / "segmentation.png")
    dice_chart(runs_dir, FULL_DATA, "Demonstration weights v2 (2 training patients, CPU): validation Dice per organ",
               out_dir / "kd_ablation.png")
    dice_chart(runs_dir, LOPO, "Leave-one-patient-out: Dice on the DICOM patient (trained on the other patient only)",
               out_dir / "lopo.png")
    print(dice_table(runs_dir, FULL_DATA, "mean Dice, 8 organs"))
    print()
    print(dice_table(runs_dir, LOPO, "mean Dice, 5 organs"))
