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

import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

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
           "select_feature", "LOGIT_TERMS", "DistillationTerm", "register_term"]


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


# --- the terms: typed options, registered by name --------------------------------------
# Each term is a frozen dataclass of its options (``weight`` plus its own, with their
# defaults) that builds its loss module and applies it to the two networks' outputs.
# ``@register_term(name)`` adds it to the registry, like timm's ``@register_model``: the
# YAML keys a term accepts are its fields, so options and code cannot drift apart.


@dataclass(frozen=True)
class DistillationTerm(ABC):
    """Base of a distillation term's options; subclasses add fields and implement build/apply.

    Attributes:
        weight: multiplies the term's value in the total; 0 switches the term off.
        needs_features: class-level: the term reads taps beyond the logits.
        teacher_logits_only: class-level: the term reads only the teacher's logits, so
            cached teacher logits can replace the teacher's forward pass.
        needs_labels: class-level: the term reads the ground-truth labels.
    """

    weight: float = 0.0

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = True
    teacher_logits_only: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False

    @abstractmethod
    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        """The loss module (its parameters, e.g. projections, train with the student)."""

    @abstractmethod
    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The term's (unweighted) value on ``TransUNetOutput``-like outputs and (B, H, W) labels."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "DistillationTerm":
        """The typed options of ``distill.<name>``; unknown options and wrong types are refused by path."""
        known = [f.name for f in fields(cls)]
        bad = set(options) - set(known)
        if bad:
            raise UsageError(f"distill.{cls.name}: unknown option(s) {sorted(bad)}; known: weight, "
                             f"{', '.join(sorted(set(known) - {'weight'}))}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _coerce(cls.name, key, value, hints[key]) for key, value in options.items()})


_TERMS: Dict[str, Type[DistillationTerm]] = {}


def register_term(name: str) -> Callable[[Type[DistillationTerm]], Type[DistillationTerm]]:
    """Class decorator: register a :class:`DistillationTerm` subclass as ``distill.<name>``."""

    def decorator(cls: Type[DistillationTerm]) -> Type[DistillationTerm]:
        if name in _TERMS:
            raise ValueError(f"distillation term {name!r} is registered twice")
        cls.name = name
        _TERMS[name] = cls
        return cls

    return decorator


def _coerce(term: str, key: str, value: Any, hint: Any) -> Any:
    """A YAML value as the option's type (numbers written as strings included), or UsageError."""
    target = hint
    if typing.get_origin(hint) is Union:
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        target = arms[0] if len(arms) == 1 else Any
    try:
        if target is float:
            return float(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typing.get_origin(target) in (tuple, list) and int in typing.get_args(target):
            items = [int(v) for v in value]  # grid sizes, stage indices
            return tuple(items) if typing.get_origin(target) is tuple else items
    except (TypeError, ValueError):
        raise UsageError(f"distill.{term}.{key} must be {_KINDS.get(target, 'a list of integers')}, "
                         f"got {value!r}") from None
    return value


_KINDS = {float: "a number", int: "an integer"}


def _stage_mean(term: nn.Module, s_maps: Sequence[torch.Tensor], t_maps: Sequence[torch.Tensor],
                stages: Sequence[int]) -> torch.Tensor:
    return sum(term(s_maps[i], t_maps[i]) for i in stages) / len(stages)


def _stages(stages: Optional[Sequence[int]], count: int) -> Sequence[int]:
    """Decoder stage indices of a term (default all ``count``), checked."""
    chosen = list(range(count)) if stages is None else [int(i) for i in stages]
    if not chosen or any(not -count <= i < count for i in chosen):
        raise UsageError(f"stages {chosen} must index the {count} decoder stages")
    return chosen


@register_term("pixel_kd")
@dataclass(frozen=True)
class PixelKD(DistillationTerm):
    """Hinton KL divergence on the logits at ``temperature``."""

    temperature: float = 4.0

    needs_features: ClassVar[bool] = False
    teacher_logits_only: ClassVar[bool] = True

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return PixelKLDivergence(self.temperature)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(student.logits, teacher.logits, getattr(teacher, "valid", None))


@register_term("partial_pixel_kd")
@dataclass(frozen=True)
class PartialPixelKD(DistillationTerm):
    """Hinton KL on the logits with the teacher constrained by the case's partial labels."""

    temperature: float = 4.0

    needs_features: ClassVar[bool] = False
    teacher_logits_only: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return PartialLabelPixelKD(self.temperature)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(student.logits, teacher.logits, labels, getattr(teacher, "valid", None))


@register_term("attention_kd")
@dataclass(frozen=True)
class AttentionKD(DistillationTerm):
    """Student attention maps vs teacher head-mean maps on (student, teacher) layer ``pairs``."""

    pairs: Optional[List[Any]] = None

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return AttentionMapDistillation(student.depth, teacher.depth, self.pairs)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(student.attention_mean, teacher.attention_mean, student.grid, teacher.grid)


@register_term("token_kd")
@dataclass(frozen=True)
class TokenKD(DistillationTerm):
    """MISTKD token MSE through learned projections on layer ``pairs``."""

    pairs: Optional[List[Any]] = None

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return TokenSequenceDistillation(student.hidden_size, teacher.hidden_size, student.depth, teacher.depth,
                                         self.pairs)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(student.tokens, teacher.tokens, student.grid, teacher.grid)


@register_term("channel_kd")
@dataclass(frozen=True)
class ChannelKD(DistillationTerm):
    """Channel-wise distillation (CWD) of tap ``feature`` at temperature ``tau``."""

    tau: float = 1.0
    feature: str = "logits"

    needs_features: ClassVar[bool] = False  # unless a feature is named (see DistillationCriterion)

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return ChannelWiseDistillation(self.tau, student.channels(self.feature), teacher.channels(self.feature))

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(select_feature(student, self.feature), select_feature(teacher, self.feature))


@register_term("pairwise_kd")
@dataclass(frozen=True)
class PairwiseKD(DistillationTerm):
    """Structured KD: pair-wise affinities of tap ``feature`` pooled to ``grid``."""

    grid: Tuple[int, ...] = (16, 16)
    feature: str = "decoder:0"

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return PairwiseAffinityDistillation(tuple(self.grid))

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(select_feature(student, self.feature), select_feature(teacher, self.feature))


@register_term("importance_kd")
@dataclass(frozen=True)
class ImportanceKD(DistillationTerm):
    """EMKD importance maps (power ``p``) on the decoder ``stages`` (default all)."""

    p: float = 4.0
    stages: Optional[List[int]] = None

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return ImportanceMapDistillation(self.p)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return _stage_mean(module, student.decoder_features, teacher.decoder_features,
                           _stages(self.stages, len(student.decoder_features)))


@register_term("region_affinity_kd")
@dataclass(frozen=True)
class RegionAffinityKD(DistillationTerm):
    """EMKD region affinity between the K organs on tap ``feature`` (on hard labels)."""

    feature: str = "decoder:0"

    needs_labels: ClassVar[bool] = True

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return RegionAffinityDistillation(student.num_classes)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(select_feature(student, self.feature), select_feature(teacher, self.feature),
                      hard_labels(labels))


@register_term("ranking_kd")
@dataclass(frozen=True)
class RankingKD(DistillationTerm):
    """RSKD-style ListNet on the ``top_k`` token importances of ``layer`` (teacher: ``teacher_layer``)."""

    top_k: int = 16
    temperature: float = 1.0
    layer: int = -1
    teacher_layer: Optional[int] = None  # default: the same index as ``layer``

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return TokenRankingDistillation(self.top_k, self.temperature)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        teacher_layer = self.layer if self.teacher_layer is None else self.teacher_layer
        return module(student.attention_mean[self.layer], teacher.attention_mean[teacher_layer], student.grid,
                      teacher.grid)


@register_term("sccf")
@dataclass(frozen=True)
class SpaceChannelCascadeKD(DistillationTerm):
    """Spatial + channel attention transfer, cascaded over the decoder ``stages`` (default all)."""

    tau: float = 1.0
    spatial_weight: float = 1.0
    channel_weight: float = 1.0
    stages: Optional[List[int]] = None

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return SpaceChannelCascadeDistillation(
            [student.decoder_channels[i] for i in _stages(self.stages, len(student.decoder_channels))],
            [teacher.decoder_channels[i] for i in _stages(self.stages, len(teacher.decoder_channels))],
            self.tau, self.spatial_weight, self.channel_weight)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module([student.decoder_features[i] for i in _stages(self.stages, len(student.decoder_features))],
                      [teacher.decoder_features[i] for i in _stages(self.stages, len(teacher.decoder_features))])


@register_term("contourlet_kd")
@dataclass(frozen=True)
class ContourletKD(DistillationTerm):
    """CDM texture energy of tap ``feature``: ``levels`` pyramid levels, ``directions`` per level (int or list)."""

    levels: int = 2
    directions: Any = 8
    feature: str = "decoder:1"

    def build(self, student: FeatureDims, teacher: FeatureDims) -> nn.Module:
        return ContourletDistillation(self.levels, self.directions)

    def apply(self, module: nn.Module, student: Any, teacher: Any, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return module(select_feature(student, self.feature), select_feature(teacher, self.feature))


DISTILLATION_TERMS = tuple(_TERMS)

# Terms that read only the teacher's logits: cached logits can replace the teacher's forward pass.
LOGIT_TERMS = tuple(name for name, term in _TERMS.items() if term.teacher_logits_only)


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
        unknown = set(config) - set(_TERMS) - {"teacher"}
        if unknown:
            raise UsageError(f"unknown distillation term(s) {sorted(unknown)}; known: {', '.join(_TERMS)}")
        s_dims, t_dims = _as_dims(student, num_classes), _as_dims(teacher, num_classes)
        if num_classes is not None:
            s_dims = FeatureDims(num_classes, *_tail(s_dims))
            t_dims = FeatureDims(num_classes, *_tail(t_dims))
        self.student_dims, self.teacher_dims = s_dims, t_dims
        self.weights: Dict[str, float] = {}
        self.options: Dict[str, Dict[str, Any]] = {}  # the options each term was given (without weight)
        self.specs: Dict[str, DistillationTerm] = {}  # their typed form, defaults filled in
        terms: Dict[str, nn.Module] = {}
        for name, term_class in _TERMS.items():  # registry order: log columns do not follow the YAML's order
            if name not in config:
                continue
            raw = config[name]
            if raw is not None and not isinstance(raw, Mapping):
                raise UsageError(f"distill.{name} must be a mapping such as {{weight: 0.5}}, got {raw!r}")
            spec = term_class.from_options(dict(raw or {}))
            if spec.weight < 0:
                raise UsageError(f"distill.{name}.weight must be >= 0, got {spec.weight}")
            if spec.weight == 0:
                continue
            terms[name] = spec.build(s_dims, t_dims)
            self.weights[name] = spec.weight
            self.options[name] = {k: v for k, v in dict(raw or {}).items() if k != "weight"}
            self.specs[name] = spec
        self.terms = nn.ModuleDict(terms)
        # A named feature tap (channel_kd's ``feature``) also needs the taps.
        self.needs_features = any(self.specs[n].needs_features or "feature" in self.options[n] for n in terms)

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
            if self.specs[name].needs_labels and labels is None:
                raise ValueError(f"{name} needs the ground-truth labels")
            with torch.autocast(device_type, enabled=False):
                value = self.specs[name].apply(term, student, teacher, labels)
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
                         f"known terms: {', '.join(_TERMS)}")
    return criterion
