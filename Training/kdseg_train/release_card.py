"""The human-readable model card of a release (Markdown), rendered from its registry entry.

Everything in it comes from the :class:`~KDSegmentationLib.weights.model_registry.ModelCard`
that ``kdseg`` and Slicer read, so the two can never disagree: identity and file (size,
SHA-256, download URLs), input contract, intended use and licences, training data with its
licences, recipe and compute, and the evaluation under both protocols.
"""

from __future__ import annotations

from typing import Any, Dict, List

from KDSegmentationLib.weights.model_registry import ModelCard

__all__ = ["render_model_card"]


def _stat(stats: Dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    # Per-organ entries count cases ("n"); the summary's mean row counts organs ("n_organs").
    n = stats.get("n", stats.get("n_organs")) if stats else None
    if not n or stats.get("mean") is None:
        return "n/a"
    std = stats.get("std")
    return f"{stats['mean'] * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _metrics_lines(metrics: Dict[str, Any]) -> List[str]:
    evaluation = metrics.get("evaluation")
    if not evaluation:
        return ["No evaluation report was given at export (run `kdseg-train evaluate` first)."]
    summary = evaluation["summary"]
    tu, ph = summary["transunet"], summary["physical"]
    lines = [f"Backend `{evaluation.get('backend')}`, {len(evaluation.get('cases') or [])} case(s): "
             f"{', '.join(evaluation.get('cases') or [])}. Each organ is scored only on the cases that label it.", "",
             "| organ | Dice % (TransUNet) | HD95 vox (TransUNet) | Dice (physical) | HD95 mm (physical) | cases |",
             "|---|---|---|---|---|---|"]
    for organ, stats in tu["organs"].items():
        phys = ph["organs"].get(organ, {})
        lines.append(f"| {organ} | {_stat(stats['dice'], 100)} | {_stat(stats['hd95'])} | "
                     f"{_stat(phys.get('dice', {}), 1, 3)} | {_stat(phys.get('hd95_mm', {}))} | {stats['dice']['n']} |")
    # The summary's mean is over organs; its std_over_cases spreads the per-case means, which is
    # not the spread of this figure, so the row shows the mean alone.
    mean_tu, mean_ph = ({k: dict(v, std_over_cases=None) for k, v in part["mean"].items()} for part in (tu, ph))
    lines.append(f"| **mean** | **{_stat(mean_tu['dice'], 100)}** | **{_stat(mean_tu['hd95'])}** | "
                 f"**{_stat(mean_ph['dice'], 1, 3)}** | **{_stat(mean_ph['hd95_mm'])}** | |")
    return lines


def _comparison_lines(metrics: Dict[str, Any]) -> List[str]:
    """Physical Dice per organ of this model next to every ``--compare`` run (empty without any)."""
    comparisons = metrics.get("comparisons") or {}
    evaluation = metrics.get("evaluation")
    if not comparisons or not evaluation:
        return []
    columns = {"this model": evaluation["summary"]}
    columns.update(comparisons)
    organs: List[str] = []
    for summary in columns.values():
        organs += [o for o in (summary.get("physical") or {}).get("organs", {}) if o not in organs]
    lines = ["", "## Comparison", "",
             "Physical Dice per organ (`kdseg-train evaluate`, ONNX pipeline) of this model and the runs given "
             "with `--compare`, each on its own validation cases (— : not scored there).", "",
             "| organ | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for organ in organs:
        cells = []
        for summary in columns.values():
            stats = ((summary.get("physical") or {}).get("organs") or {}).get(organ, {}).get("dice") or {}
            cells.append(f"{stats['mean']:.3f}" if stats.get("n") and stats.get("mean") is not None else "—")
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    means = [((summary.get("physical") or {}).get("mean") or {}).get("dice") or {} for summary in columns.values()]
    lines.append("| **mean** | " + " | ".join(f"**{m['mean']:.3f}** ({m.get('n_organs')} organs)"
                                               if m.get("mean") is not None else "n/a" for m in means) + " |")
    return lines


def _latency_and_compute_lines(metrics: Dict[str, Any]) -> List[str]:
    """Measured CPU latency and the compute of related runs, when ``--metrics-json`` gave them."""
    lines: List[str] = []
    latency = metrics.get("latency_cpu") or {}
    if latency.get("total_seconds") is not None:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in (latency.get("seconds_by_stage") or {}).items())
        lines += ["", "## Latency", "",
                  f"`kdseg segment` on the CPU, {latency.get('case', 'one case')}: {latency['total_seconds']:.2f} s "
                  f"over the pipeline's stages ({stages}; process start-up not included)."]
    runs = {name: run for name, run in (metrics.get("compute_of_the_demo_runs") or {}).items() if isinstance(run, dict)}
    if runs:
        lines += ["", "## Compute of the related runs", "", "| run | model | steps | wall h | CPU h |",
                  "|---|---|---|---|---|"]
        for name, run in runs.items():
            lines.append(f"| {name} | `{run.get('model')}` | {run.get('steps')} | {run.get('wall_hours', 0):.2f} | "
                         f"{run.get('cpu_hours', 0):.2f} |")
        total = sum(float(run.get("cpu_hours") or 0) for run in runs.values())
        lines.append(f"| **total** | | | | **{total:.2f}** |")
    return lines


def _data_lines(training: Dict[str, Any]) -> List[str]:
    data = training.get("data") or {}
    lines = []
    if data.get("description"):
        lines += [str(data["description"]).strip(), ""]
    for role in ("train", "val"):
        for entry in data.get(role) or []:
            what = entry.get("name") or entry.get("datalist") or entry.get("image") or entry.get("root")
            details = ", ".join(f"{k}: {entry[k]}" for k in ("split", "remap", "labeled", "unlabeled", "slices")
                                if k in entry)
            lines.append(f"- {role}: `{what}`" + (f" ({details})" if details else ""))
    licences = data.get("licences") or []
    lines += ["", "Data licences: " + ("; ".join(licences) if licences else "not stated")]
    return lines


def _quantisation_lines(training: Dict[str, Any], metrics: Dict[str, Any]) -> List[str]:
    """Where an int8 model comes from and how it compares with its fp32 source (empty for other models)."""
    record = training.get("quantisation")
    if not record:
        return []
    calibration = record.get("calibration") or {}
    lines = ["", "## Quantisation", "",
             f"Quantised from `{record.get('source_model')}` v{record.get('source_version')} "
             f"(SHA-256 `{record.get('source_sha256')}`) with {record.get('method')}; onnxruntime "
             f"{record.get('onnxruntime')}. Calibration: {calibration.get('slices')} slices in "
             f"{calibration.get('batches')} batches, {calibration.get('data')} "
             f"({', '.join(calibration.get('cases') or [])}).",
             "", f"Reproduce: `{record.get('command')}`"]
    comparison = (metrics.get("fp32_comparison") or {}).get("per_case_mean_dice") or {}
    if comparison:
        lines += ["", "Mean Dice over each validation case's organs (TransUNet protocol), same pipeline:", "",
                  "| case | fp32 | int8 | difference (points) |", "|---|---|---|---|"]
        lines += [f"| {name} | {row['fp32']:.4f} | {row['int8']:.4f} | {row['points']:+.2f} |"
                  for name, row in comparison.items()]
    return lines


def render_model_card(card: ModelCard) -> str:
    """Markdown text of ``card`` (one model of a release registry)."""
    training = card.training or {}
    recipe = training.get("recipe") or {}
    compute = training.get("compute") or {}
    lines = [f"# {card.title}", "", card.description, "",
             "| | |", "|---|---|",
             f"| id | `{card.id}` (version {card.version}) |",
             f"| architecture | `{card.architecture}` |",
             f"| file | `{card.file}`, {card.size_bytes:,} bytes |",
             f"| SHA-256 | `{card.sha256}` |",
             f"| download | {', '.join(card.urls)} |",
             f"| input | {card.input.channels} x {card.input.height} x {card.input.width}, HU window "
             f"{list(card.input.hu_window)} -> [0, 1], {card.input.slice_orientation} axial slices"
             + (f", {card.input.pixel_spacing_mm:g} mm per model pixel (centred)"
                if getattr(card.input, "pixel_spacing_mm", None) else ", each slice resized to the grid") + " |",
             f"| labels | {', '.join(label.name for label in card.labels)} |",
             f"| weights licence | {card.license} |",
             "", "## Intended use", "", card.intended_use or "not stated",
             "", "## Training data", ""] + _data_lines(training) + [
             "", "## Recipe and compute", "",
             f"Model {recipe.get('model', {}).get('name')} at {recipe.get('model', {}).get('img_size')} px, "
             f"batch {recipe.get('batch_size')}, {training.get('steps')} of {recipe.get('max_steps')} steps, "
             f"seed {recipe.get('seed')}, optimiser {recipe.get('optim')}, loss {recipe.get('loss')}"
             + (f", distillation {recipe.get('distill')}" if recipe.get("distill") else "") + ".",
             "", "Compute: " + (", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in compute.items()) or "not recorded")
             + f"; {training.get('framework')}.",
             ] + _quantisation_lines(training, card.metrics or {}) + [
             "", "## Evaluation", ""] + _metrics_lines(card.metrics or {}) + _comparison_lines(card.metrics or {}) + \
        _latency_and_compute_lines(card.metrics or {}) + [
             "", "## Use", "",
             "```", f"kdseg --registry registry.json segment ct.nii.gz -o seg.nii.gz --model {card.id}",
             f"kdseg --registry registry.json download {card.id}     # fetch and verify from the URL", "```", ""]
    return "\n".join(lines)
