"""Named TransUNet configurations: the R50-ViT-B/16 teacher and the lightweight students."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Tuple
from ..errors import UsageError

__all__ = ["TransUNetConfig", "MODEL_CONFIGS", "get_config", "list_models"]


@dataclass(frozen=True)
class TransUNetConfig:
    """Hyper-parameters of one encoder (ResNetV2 + ViT) - decoder (cascaded upsampler) network.

    Args:
        name: registry name.
        cnn_width: ResNetV2 base width (64 in R50).
        cnn_units: bottleneck units per stage (R50: (3, 4, 9)).
        cnn_norm: normalisation in the ResNetV2 encoder: ``"group"`` (GroupNorm(32), TransUNet)
            or ``"batch"`` (BatchNorm, folded into the convolutions at export: no per-sample
            statistics left in the deployed graph).
        hidden_size: transformer token width D.
        depth: number of transformer layers.
        num_heads: heads of multi-head attention (ignored by ``shsa``).
        mlp_ratio: MLP hidden width / D.
        attention: ``"mhsa"`` (multi-head, ViT) or ``"shsa"`` (single-head on a partial
            channel slice, SHViT).
        shsa_partial_ratio: fraction of D the single head attends over (SHViT: 1 / 4.67).
        shsa_qk_dim: query/key width of the single head (SHViT: 16).
        head_channels: width of the conv after the transformer (768 -> 512 in TransUNet).
        decoder_channels: output widths of the four upsampling blocks.
        n_skip: how many CNN skips the decoder uses (TransUNet: 3).
        dropout: dropout in embeddings and MLPs.
        attention_dropout: dropout on attention probabilities.
    """

    name: str
    cnn_width: int = 64
    cnn_units: Tuple[int, int, int] = (3, 4, 9)
    cnn_norm: str = "group"
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    attention: str = "mhsa"
    shsa_partial_ratio: float = 1 / 4.67
    shsa_qk_dim: int = 16
    head_channels: int = 512
    decoder_channels: Tuple[int, int, int, int] = (256, 128, 64, 16)
    n_skip: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.attention not in ("mhsa", "shsa"):
            raise UsageError(f"attention must be 'mhsa' or 'shsa', got {self.attention!r}")
        if self.attention == "mhsa" and self.hidden_size % self.num_heads:
            raise UsageError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.cnn_width % 32:
            raise UsageError(f"cnn_width must be a multiple of 32 (GroupNorm(32)), got {self.cnn_width}")
        if self.cnn_norm not in ("group", "batch"):
            raise UsageError(f"cnn_norm must be 'group' or 'batch', got {self.cnn_norm!r}")
        if not 0 <= self.n_skip <= 3:
            raise UsageError(f"n_skip must be in 0..3, got {self.n_skip}")

    @property
    def shsa_partial_dim(self) -> int:
        """Channels the single head attends over (at least the q/k width)."""
        return max(self.shsa_qk_dim, int(round(self.hidden_size * self.shsa_partial_ratio)))

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> "TransUNetConfig":
        values = dict(data)
        for key in ("cnn_units", "decoder_channels"):
            if key in values:
                values[key] = tuple(values[key])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


_TEACHER = TransUNetConfig(
    name="teacher-r50-b16",
    description="TransUNet R50-ViT-B/16 (Chen et al. 2021): ResNetV2-50 (3,4,9) + 12 x ViT-B (D768, 12 heads), "
                "CUP decoder 256-128-64-16",
)

_STUDENT_COMMON = dict(
    cnn_width=32,
    cnn_units=(2, 2, 2),
    hidden_size=256,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    head_channels=128,
    decoder_channels=(128, 64, 32, 16),
)

MODEL_CONFIGS: Dict[str, TransUNetConfig] = {
    cfg.name: cfg
    for cfg in (
        _TEACHER,
        TransUNetConfig(
            name="student-shsa",
            attention="shsa",
            description="default student: ResNetV2 w32 (2,2,2) + 4 x D256 SHSA (1 head on 55 ch, q/k 16), MLP x2, "
                        "decoder 128-64-32-16",
            **_STUDENT_COMMON,  # type: ignore[arg-type]
        ),
        TransUNetConfig(
            name="student-shsa-lite",
            attention="shsa",
            description="student-shsa with a half-width decoder (head 64, decoder 64-32-16-16): the decoder is 70 % "
                        "of student-shsa's MACs at 128x128; 9.35-10.7x faster than the teacher there (benchmarks/models.py)",
            **dict(_STUDENT_COMMON, head_channels=64, decoder_channels=(64, 32, 16, 16)),  # type: ignore[arg-type]
        ),
        TransUNetConfig(
            name="student-shsa-lite-bn",
            attention="shsa",
            cnn_norm="batch",
            description="student-shsa-lite with BatchNorm instead of GroupNorm in the ResNetV2 encoder: folded "
                        "into the convolutions at export, it removes the run-time normalisation (and ONNX "
                        "Runtime's layout conversions around it) that cost a quarter of student-shsa-lite's time",
            **dict(_STUDENT_COMMON, head_channels=64, decoder_channels=(64, 32, 16, 16)),  # type: ignore[arg-type]
        ),
        TransUNetConfig(
            name="student-mhsa",
            attention="mhsa",
            description="student-shsa with 4-head attention instead of SHSA (the SHSA-vs-MHSA ablation)",
            **_STUDENT_COMMON,  # type: ignore[arg-type]
        ),
        TransUNetConfig(
            name="student-shsa-tiny",
            attention="shsa",
            cnn_width=32,
            cnn_units=(1, 1, 1),
            hidden_size=128,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            head_channels=64,
            decoder_channels=(64, 32, 16, 16),
            description="smallest SHSA student (w32 (1,1,1), 2 x D128, decoder 64-32-16-16): tests, fastest CPU",
        ),
    )
}


def list_models() -> List[str]:
    """Names of the registered configurations."""
    return list(MODEL_CONFIGS)


def get_config(name: str, **overrides: object) -> TransUNetConfig:
    """Return the named config, optionally with fields replaced.

    Raises:
        ValueError: unknown name (the message lists the known ones) or unknown field.
    """
    if name not in MODEL_CONFIGS:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(MODEL_CONFIGS)}")
    cfg = MODEL_CONFIGS[name]
    if overrides:
        unknown = set(overrides) - set(cfg.to_dict())
        if unknown:
            raise UsageError(f"unknown config field(s) for {name}: {', '.join(sorted(unknown))}")
        cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    return cfg
