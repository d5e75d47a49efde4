"""3D Slicer terminology entries (SNOMED CT coded) for the labels of a model card.

Slicer stores a segment's terminology as one string of 7 '~'-separated fields:
context ~ category ~ type ~ type modifier ~ anatomic context ~ region ~ region modifier,
each coded field written ``scheme^code^meaning`` (empty: ``^^``).
"""

from __future__ import annotations

from typing import Dict, Optional

from ..weights.model_registry import LabelInfo

__all__ = ["GENERAL_ANATOMY_CONTEXT", "ANATOMIC_CONTEXT", "terminology_entry", "parse_terminology_entry"]

GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def _coded(code: Optional[Dict[str, str]]) -> str:
    if not code:
        return "^^"
    return f"{code['scheme']}^{code['code']}^{code['meaning']}"


def terminology_entry(label: LabelInfo, context: str = GENERAL_ANATOMY_CONTEXT) -> Optional[str]:
    """The Slicer terminology string of ``label``, or None when the card gives no codes."""
    if not label.terminology:
        return None
    t = label.terminology
    return "~".join([context, _coded(t.get("category")), _coded(t.get("type")), _coded(t.get("type_modifier")),
                     ANATOMIC_CONTEXT, "^^", "^^"])


def parse_terminology_entry(entry: str) -> Dict[str, object]:
    """Split an entry into its 7 fields, validating the format Slicer's deserialiser requires.

    Raises:
        ValueError: not 7 fields, a coded field without 3 parts, or an empty category.
    """
    fields = entry.split("~")
    if len(fields) != 7:
        raise ValueError(f"a terminology entry has 7 '~'-separated fields, got {len(fields)}")
    coded = {}
    for name, index in (("category", 1), ("type", 2), ("type_modifier", 3), ("region", 5), ("region_modifier", 6)):
        parts = fields[index].split("^")
        if len(parts) != 3:
            raise ValueError(f"{name} must be scheme^code^meaning, got {fields[index]!r}")
        coded[name] = tuple(parts)
    if not all(coded["category"]):
        raise ValueError("the category of a terminology entry must not be empty")
    return {"context": fields[0], "anatomic_context": fields[4], **coded}
