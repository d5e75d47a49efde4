"""Every terminology string the registry produces is one Slicer understands and lists.

Each string is deserialised by Slicer's terminology logic, and its category, type and
type modifier are looked up in the "3D Slicer General Anatomy list" that Slicer loads
at start-up; the segment name and colour are compared with what that list recommends.
"""

from __future__ import annotations

import pytest

from KDSegmentationLib.weights.model_registry import labels_from_anatomy, load_registry
from KDSegmentationLib.resources import registry_path
from KDSegmentationLib.slicer_support.terminology import GENERAL_ANATOMY_CONTEXT, terminology_entry

# The one deliberate departure from Slicer's recommended colours (see anatomy.py): Slicer
# gives both kidneys one colour; the left one is lightened so that they stay apart in a
# single label map.
_OWN_COLOUR = {"kidney_left"}


def _registry_labels():
    labels = {label.name: label for label in labels_from_anatomy()[1:]}
    for card in load_registry(registry_path()).models.values():
        for label in card.foreground_labels():
            labels.setdefault(f"{card.id}:{label.name}", label)
            assert terminology_entry(label) == terminology_entry(labels[label.name]), (card.id, label.name)
    return list(labels.values())


def _find(logic, context, code_value, count, nth, new):
    for index in range(count):
        item = new()
        assert nth(index, item)
        if item.GetCodeValue() == code_value:
            return item
    return None


def _listed_concepts(logic, entry):
    """(category, type, modifier or None) objects of the loaded list with the entry's codes."""
    import slicer

    context = GENERAL_ANATOMY_CONTEXT
    category = _find(logic, context, entry.GetCategoryObject().GetCodeValue(),
                     logic.GetNumberOfCategoriesInTerminology(context),
                     lambda i, c: logic.GetNthCategoryInTerminology(context, i, c), slicer.vtkSlicerTerminologyCategory)
    assert category is not None, "category not in the list"
    type_ = _find(logic, context, entry.GetTypeObject().GetCodeValue(),
                  logic.GetNumberOfTypesInTerminologyCategory(context, category),
                  lambda i, t: logic.GetNthTypeInTerminologyCategory(context, category, i, t),
                  slicer.vtkSlicerTerminologyType)
    assert type_ is not None, "type not in the list's category"
    modifier = None
    if entry.GetTypeModifierObject().GetCodeValue():
        assert type_.GetHasModifiers()
        modifier = _find(logic, context, entry.GetTypeModifierObject().GetCodeValue(),
                         logic.GetNumberOfTypeModifiersInTerminologyType(context, category, type_),
                         lambda i, m: logic.GetNthTypeModifierInTerminologyType(context, category, type_, i, m),
                         slicer.vtkSlicerTerminologyType)
        assert modifier is not None, "type modifier not in the list's type"
    return category, type_, modifier


@pytest.mark.parametrize("label", _registry_labels(), ids=lambda label: label.name)
def test_registry_terminology_is_in_slicers_general_anatomy_list(slicer_app, label):
    import vtk

    import slicer

    logic = slicer_app.terminologies_logic
    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    assert GENERAL_ANATOMY_CONTEXT in [names.GetValue(i) for i in range(names.GetNumberOfValues())]

    serialized = terminology_entry(label)
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(serialized, entry)
    assert entry.GetTerminologyContextName() == GENERAL_ANATOMY_CONTEXT
    category, type_, modifier = _listed_concepts(logic, entry)
    for ours, listed in ((entry.GetCategoryObject(), category), (entry.GetTypeObject(), type_)) + (
            ((entry.GetTypeModifierObject(), modifier),) if modifier is not None else ()):
        assert (ours.GetCodingSchemeDesignator(), ours.GetCodeValue(), ours.GetCodeMeaning()) == \
            (listed.GetCodingSchemeDesignator(), listed.GetCodeValue(), listed.GetCodeMeaning())
    recommended = modifier if modifier is not None else type_
    assert label.display_name.lower() == recommended.GetSlicerLabel().lower()
    slicer_colour = tuple(recommended.GetRecommendedDisplayRGBValue())
    if label.name in _OWN_COLOUR:
        assert tuple(label.color) != slicer_colour
    else:
        assert tuple(label.color) == slicer_colour
    # Slicer's own serialisation of what it read gives back the same string.
    assert logic.SerializeTerminologyEntry(entry) == serialized
