"""Configurable combination of distillation terms, built from the ``distill:`` section of a run config.

    distill:
      teacher: runs/teacher
      pixel_kd: {weight: 0.5, temperature: 4.0}         # Hinton KL on logits
      partial_pixel_kd: {weight: 0.5, temperature: 4.0} # the same, teacher constrained by partial labels
      attention_kd: {weight: 0.1, pairs: [[0, 2], [1, 5], [2, 8], [3, 11]]}   # SHSA head vs teacher head mean
      token_kd: {weight: 1.0}                            # MISTKD token MSE through learned projections
      channel_kd: {weight: 3.0, tau: 1.0, feature: logits}        # CWD (adapter built when widths differ)
      pairwise_kd: {weight: 1.0, grid: [16, 16], feature: "decoder:0"}   # structured KD, pair-wise
      importance_kd: {weight: 0.9, p: 4.0}               # EMKD importance maps on every decoder stage
      region_affinity_kd: {weight: 0.9, feature: "decoder:0"}     # EMKD region affinity, K organs
      ranking_kd: {weight: 0.5, top_k: 16, layer: -1}    # RSKD-style token importance ranking (ListNet)
      sccf: {weight: 1.0, tau: 1.0}                      # spatial + channel attention, cascade over decoder stages
      contourlet_kd: {weight: 1.0, levels: 2, directions: 8, feature: "decoder:1"}   # CDM texture energy

A term is active when its weight is > 0. ``feature`` names a tap of ``TransUNetOutput``:
``logits``, ``decoder:i`` (decoder stage i, coarse to fine), ``skip:i`` (CNN skip i,
coarsest first) or ``encoder`` (CNN map before the patch embedding).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..data.partial_targets import hard_labels
from ..errors import UsageError
from .attention_kd import AttentionMapDistillation
from .channel_kd import ChannelWiseDistillation
from .contourlet import ContourletDistillation
from .emkd import ImportanceMapDistillation, RegionAffinityDistillation
from .pairwise_kd import PairwiseAffinityDistillation
from .partial_pixel_kd import PartialLabelPixelKD
from .pixel_kd import PixelKLDivergence
from .ranking_kd import TokenRankingDistillation
from .sccf import SpaceChannelCascadeDistillation
from .token_kd import TokenSequenceDistillation

__all__ = ["FeatureDims", "DISTILLATION_TERMS", "DistillationCriterion", "CachedTeacherLogits", "build_distillation",
           "select_feature", "LOGIT_TERMS"]


@dataclass(frozen=True)
class FeatureDims:
    """Widths of the distillation taps of one network (sizes the learned projections).

    Attributes:
        num_classes: logit channels.
        hidden_size: token width D.
        depth: transformer layers.
        decoder_channels: widths of the four decoder stages, coarse to fine.
        skip_channels: CNN skip widths, coarsest first.
        encoder_channels: width of the CNN map before the patch embedding.
    """

    num_classes: int
    hidden_size: int
    depth: int
    decoder_channels: Tuple[int, ...]
    skip_channels: Tuple[int, ...] = ()
    encoder_channels: int = 0

    @classmethod
    def from_model(cls, model: nn.Module, num_classes: Optional[int] = None) -> "FeatureDims":
        """Read the widths from a ``kdseg_train.models.TransUNet`` (its ``config``)."""
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError(f"{type(model).__name__} has no .config; pass FeatureDims explicitly")
        width = int(config.cnn_width)
        classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if classes is None:
            head = getattr(model, "segmentation_head", None)
            classes = head.out_channels if head is not None else 0
        encoder = getattr(model, "encoder", None)
        skips = tuple(getattr(encoder, "skip_channels", (8 * width, 4 * width, width)))
        return cls(int(classes), int(config.hidden_size), int(config.depth), tuple(config.decoder_channels),
                   skips, int(getattr(encoder, "out_channels", 16 * width)))

    def channels(self, feature: str) -> int:
        kind, index = _parse_feature(feature)
        if kind == "logits":
            return self.num_classes
        if kind == "encoder":
            return self.encoder_channels
        widths = self.decoder_channels if kind == "decoder" else self.skip_channels
        try:
            return int(widths[index])
        except IndexError:
            raise UsageError(f"feature {feature!r}: the network has {len(widths)} {kind} stages") from None


def _parse_feature(feature: str) -> Tuple[str, int]:
    name, _, index = str(feature).partition(":")
    if name in ("logits", "encoder") and not index:
        return name, 0
    if name in ("decoder", "skip"):
        try:
            return name, int(index)
        except ValueError:
            pass
    raise UsageError(f"unknown feature {feature!r}; use logits, encoder, decoder:<i> or skip:<i>")


def select_feature(output: Any, feature: str) -> torch.Tensor:
    """The tap ``feature`` of a ``TransUNetOutput``."""
    kind, index = _parse_feature(feature)
    if kind == "logits":
        return output.logits
    if kind == "encoder":
        return output.encoder_map
    maps = output.decoder_features if kind == "decoder" else output.skips
    if not maps:
        raise ValueError(f"the model output has no {kind} features; run the model with return_features=True")
    return maps[index]


# name -> (builder(options, student_dims, teacher_dims), apply(term, student_out, teacher_out, labels, options))
_Builder = Callable[[Dict[str, Any], FeatureDims, FeatureDims], nn.Module]
_Apply = Callable[[nn.Module, Any, Any, torch.Tensor, Dict[str, Any]], torch.Tensor]


def _stage_mean(term: nn.Module, s_maps: Sequence[torch.Tensor], t_maps: Sequence[torch.Tensor],
                stages: Sequence[int]) -> torch.Tensor:
    return sum(term(s_maps[i], t_maps[i]) for i in stages) / len(stages)


def _stages(options: Dict[str, Any], count: int) -> Sequence[int]:
    """Decoder stage indices of a term (default all ``count``), checked."""
    stages = [int(i) for i in options.get("stages", range(count))]
    if not stages or any(not -count <= i < count for i in stages):
        raise UsageError(f"stages {stages} must index the {count} decoder stages")
    return stages


_REGISTRY: Dict[str, Tuple[_Builder, _Apply, bool]] = {
    "pixel_kd": (
        lambda o, s, t: PixelKLDivergence(float(o.get("temperature", 4.0))),
        lambda m, so, to, y, o: m(so.logits, to.logits, getattr(to, "valid", None)), False),
    "partial_pixel_kd": (
        lambda o, s, t: PartialLabelPixelKD(float(o.get("temperature", 4.0))),
        lambda m, so, to, y, o: m(so.logits, to.logits, y, getattr(to, "valid", None)), False),
    "attention_kd": (
        lambda o, s, t: AttentionMapDistillation(s.depth, t.depth, o.get("pairs")),
        lambda m, so, to, y, o: m(so.attention_mean, to.attention_mean, so.grid, to.grid), True),
    "token_kd": (
        lambda o, s, t: TokenSequenceDistillation(s.hidden_size, t.hidden_size, s.depth, t.depth, o.get("pairs")),
        lambda m, so, to, y, o: m(so.tokens, to.tokens, so.grid, to.grid), True),
    "channel_kd": (
        lambda o, s, t: ChannelWiseDistillation(float(o.get("tau", 1.0)), s.channels(o.get("feature", "logits")),
                                                t.channels(o.get("feature", "logits"))),
        lambda m, so, to, y, o: m(select_feature(so, o.get("feature", "logits")),
                                  select_feature(to, o.get("feature", "logits"))), False),
    "pairwise_kd": (
        lambda o, s, t: PairwiseAffinityDistillation(tuple(o.get("grid", (16, 16)))),
        lambda m, so, to, y, o: m(select_feature(so, o.get("feature", "decoder:0")),
                                  select_feature(to, o.get("feature", "decoder:0"))), True),
    "importance_kd": (
        lambda o, s, t: ImportanceMapDistillation(float(o.get("p", 4.0))),
        lambda m, so, to, y, o: _stage_mean(m, so.decoder_features, to.decoder_features,
                                            _stages(o, len(so.decoder_features))), True),
    "region_affinity_kd": (
        lambda o, s, t: RegionAffinityDistillation(s.num_classes),
        lambda m, so, to, y, o: m(select_feature(so, o.get("feature", "decoder:0")),
                                  select_feature(to, o.get("feature", "decoder:0")), hard_labels(y)), True),
    "ranking_kd": (
        lambda o, s, t: TokenRankingDistillation(int(o.get("top_k", 16)), float(o.get("temperature", 1.0))),
        lambda m, so, to, y, o: m(so.attention_mean[int(o.get("layer", -1))],
                                  to.attention_mean[int(o.get("teacher_layer", o.get("layer", -1)))], so.grid,
                                  to.grid), True),
    "sccf": (
        lambda o, s, t: SpaceChannelCascadeDistillation([s.decoder_channels[i] for i in _stages(o, len(s.decoder_channels))],
                                                        [t.decoder_channels[i] for i in _stages(o, len(t.decoder_channels))],
                                                        float(o.get("tau", 1.0)), float(o.get("spatial_weight", 1.0)),
                                                        float(o.get("channel_weight", 1.0))),
        lambda m, so, to, y, o: m([so.decoder_features[i] for i in _stages(o, len(so.decoder_features))],
                                  [to.decoder_features[i] for i in _stages(o, len(to.decoder_features))]), True),
    "contourlet_kd": (
        lambda o, s, t: ContourletDistillation(int(o.get("levels", 2)), o.get("directions", 8)),
        lambda m, so, to, y, o: m(select_feature(so, o.get("feature", "decoder:1")),
                                  select_feature(to, o.get("feature", "decoder:1"))), True),
}

_OPTIONS: Dict[str, set] = {
    "pixel_kd": {"temperature"}, "partial_pixel_kd": {"temperature"}, "attention_kd": {"pairs"}, "token_kd": {"pairs"},
    "channel_kd": {"tau", "feature"}, "pairwise_kd": {"grid", "feature"}, "importance_kd": {"p", "stages"},
    "region_affinity_kd": {"feature"}, "ranking_kd": {"top_k", "temperature", "layer", "teacher_layer"},
    "sccf": {"tau", "spatial_weight", "channel_weight", "stages"}, "contourlet_kd": {"levels", "directions", "feature"},
}

DISTILLATION_TERMS = tuple(_REGISTRY)

# Terms that read only the teacher's logits: cached logits can replace the teacher's forward pass.
LOGIT_TERMS = ("pixel_kd", "partial_pixel_kd")


def _as_dims(network: Union[nn.Module, FeatureDims], num_classes: Optional[int]) -> FeatureDims:
    return network if isinstance(network, FeatureDims) else FeatureDims.from_model(network, num_classes)


class DistillationCriterion(nn.Module):
    """Weighted sum of the configured terms; its parameters (projections, adapters) train with the student.

    Args:
        config: the ``distill`` mapping, ``{term: {weight: w, **options}}``; a ``teacher``
            key is ignored; unknown terms or options raise ValueError.
        student, teacher: the two networks, or their :class:`FeatureDims`.
        num_classes: classes of the label map (region affinity, logit adapters).

    ``forward(student_out, teacher_out, labels)`` takes ``TransUNetOutput`` objects (or
    logits tensors when no active term needs features) and the (B, H, W) ground truth,
    and returns ``(total, {term: weight * value})``.
    """

    def __init__(self, config: Mapping[str, Any], student: Union[nn.Module, FeatureDims],
                 teacher: Union[nn.Module, FeatureDims], num_classes: Optional[int] = None) -> None:
        super().__init__()
        unknown = set(config) - set(_REGISTRY) - {"teacher"}
        if unknown:
            raise UsageError(f"unknown distillation term(s) {sorted(unknown)}; known: {', '.join(_REGISTRY)}")
        s_dims, t_dims = _as_dims(student, num_classes), _as_dims(teacher, num_classes)
        if num_classes is not None:
            s_dims = FeatureDims(num_classes, *_tail(s_dims))
            t_dims = FeatureDims(num_classes, *_tail(t_dims))
        self.student_dims, self.teacher_dims = s_dims, t_dims
        self.weights: Dict[str, float] = {}
        self.options: Dict[str, Dict[str, Any]] = {}
        terms: Dict[str, nn.Module] = {}
        for name in _REGISTRY:  # registry order, so log columns do not depend on the YAML's key order
            if name not in config:
                continue
            raw = config[name]
            if raw is not None and not isinstance(raw, Mapping):
                raise UsageError(f"distill.{name} must be a mapping such as {{weight: 0.5}}, got {raw!r}")
            options = dict(raw or {})
            weight = float(options.pop("weight", 0.0))
            bad = set(options) - _OPTIONS[name]
            if bad:
                raise UsageError(f"distill.{name}: unknown option(s) {sorted(bad)}; known: weight, "
                                 f"{', '.join(sorted(_OPTIONS[name]))}")
            if weight < 0:
                raise UsageError(f"distill.{name}.weight must be >= 0, got {weight}")
            if weight == 0:
                continue
            terms[name] = _REGISTRY[name][0](options, s_dims, t_dims)
            self.weights[name] = weight
            self.options[name] = options
        self.terms = nn.ModuleDict(terms)
        self.needs_features = any(_REGISTRY[n][2] or "feature" in self.options[n] for n in terms)

    def forward(self, student: Any, teacher: Any, labels: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if isinstance(student, torch.Tensor):
            if self.needs_features:
                raise ValueError(f"terms {sorted(self.terms)} need features: call the models with "
                                 "return_features=True")
            student = _LogitsOnly(student)
            teacher = _LogitsOnly(teacher) if isinstance(teacher, torch.Tensor) else teacher
        values: Dict[str, torch.Tensor] = {}
        # Every term in float32, also under CPU bfloat16 / CUDA float16 autocast: softmax ratios,
        # KL divergences and rankings of nearly equal values lose everything in 8 mantissa bits.
        student, teacher = _to_float32(student), _to_float32(teacher)
        device_type = student.logits.device.type
        for name, term in self.terms.items():
            if name in ("region_affinity_kd", "partial_pixel_kd") and labels is None:
                raise ValueError(f"{name} needs the ground-truth labels")
            with torch.autocast(device_type, enabled=False):
                value = _REGISTRY[name][1](term, student, teacher, labels, self.options[name])
            values[name] = self.weights[name] * value
        total = sum(values.values()) if values else student.logits.new_zeros(())
        return total, values


def _tail(dims: FeatureDims) -> Tuple[Any, ...]:
    return dims.hidden_size, dims.depth, dims.decoder_channels, dims.skip_channels, dims.encoder_channels


@dataclass
class _LogitsOnly:
    logits: torch.Tensor


@dataclass
class CachedTeacherLogits:
    """Teacher logits read from the logit cache and moved with the augmentation.

    Attributes:
        logits: (B, K, S, S).
        valid: (B, S, S) bool, pixels the cached map covers after the augmentation.
    """

    logits: torch.Tensor
    valid: Optional[torch.Tensor] = None


def _to_float32(value: Any) -> Any:
    """Floating tensors in ``value`` (a tensor, list, tuple or dataclass of them) as float32; the rest unchanged."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _to_float32(getattr(value, f.name)) for f in fields(value)})
    return value


def build_distillation(cfg: Mapping[str, Any], student_dims: Union[nn.Module, FeatureDims],
                       teacher_dims: Union[nn.Module, FeatureDims],
                       num_classes: Optional[int] = None) -> DistillationCriterion:
    """The :class:`DistillationCriterion` of a ``distill:`` config section.

    Args:
        cfg: ``{term: {weight, **options}}`` (see the module docstring; ``teacher`` ignored).
        student_dims, teacher_dims: :class:`FeatureDims` (or the networks, read with
            :meth:`FeatureDims.from_model`).
        num_classes: classes of the labels (default: the dims' ``num_classes``).

    Raises:
        ValueError: unknown term/option, negative weight, no active term.
    """
    criterion = DistillationCriterion(cfg, student_dims, teacher_dims, num_classes)
    if not len(criterion.terms):
        raise UsageError("distill: no distillation term has a weight > 0 (e.g. distill.pixel_kd.weight: 0.5); "
                         f"known terms: {', '.join(_REGISTRY)}")
    return criterion
