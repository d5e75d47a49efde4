"""The abdominal organs KDSegmentation segments, in Synapse (TransUNet) label order.

One table is the source of truth for names, display colours and SNOMED CT codes:
the training export writes registry entries from it and the Slicer module builds
segments and terminology entries from the registry. Codes and colours are those of
3D Slicer's "3D Slicer General Anatomy list" terminology (category
SCT 123037004 "Anatomical Structure").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["CodedConcept", "OrganLabel", "ANATOMICAL_STRUCTURE", "SYNAPSE_ORGANS", "organ_by_name"]


@dataclass(frozen=True)
class CodedConcept:
    """A coded concept as DICOM and Slicer terminologies write it (scheme^code^meaning)."""

    scheme: str
    code: str
    meaning: str

    def serialize(self) -> str:
        return f"{self.scheme}^{self.code}^{self.meaning}"


ANATOMICAL_STRUCTURE = CodedConcept("SCT", "123037004", "Anatomical Structure")
_RIGHT = CodedConcept("SCT", "24028007", "Right")
_LEFT = CodedConcept("SCT", "7771000", "Left")


@dataclass(frozen=True)
class OrganLabel:
    """One foreground label of the organ label map.

    Args:
        index: voxel value in the label map (1..8, Synapse order).
        name: machine name used on the command line (``--structures``) and in reports.
        display_name: name shown to users and given to Slicer segments.
        color: display colour, RGB 0-255.
        type: SNOMED CT concept of the structure.
        type_modifier: laterality modifier, or None.
    """

    index: int
    name: str
    display_name: str
    color: Tuple[int, int, int]
    type: CodedConcept
    type_modifier: Optional[CodedConcept] = None


SYNAPSE_ORGANS: Tuple[OrganLabel, ...] = (
    OrganLabel(1, "aorta", "Aorta", (224, 97, 76), CodedConcept("SCT", "15825003", "Aorta")),
    OrganLabel(2, "gallbladder", "Gallbladder", (139, 150, 98), CodedConcept("SCT", "28231008", "Gallbladder")),
    # Slicer gives both kidneys one colour; the left one is lightened so the two stay
    # distinguishable in a single label map.
    OrganLabel(3, "kidney_left", "Left kidney", (212, 126, 151), CodedConcept("SCT", "64033007", "Kidney"), _LEFT),
    OrganLabel(4, "kidney_right", "Right kidney", (185, 102, 83), CodedConcept("SCT", "64033007", "Kidney"), _RIGHT),
    OrganLabel(5, "liver", "Liver", (221, 130, 101), CodedConcept("SCT", "10200004", "Liver")),
    OrganLabel(6, "pancreas", "Pancreas", (249, 180, 111), CodedConcept("SCT", "15776009", "Pancreas")),
    OrganLabel(7, "spleen", "Spleen", (157, 108, 162), CodedConcept("SCT", "78961009", "Spleen")),
    OrganLabel(8, "stomach", "Stomach", (216, 132, 105), CodedConcept("SCT", "69695003", "Stomach")),
)


def organ_by_name(name: str) -> OrganLabel:
    """Return the organ called ``name`` (case-insensitive), or raise KeyError."""
    key = name.strip().lower()
    for organ in SYNAPSE_ORGANS:
        if organ.name == key:
            return organ
    raise KeyError(name)
