"""The organ-volume table node: one row per kept structure with its volume in millilitres."""

from __future__ import annotations

from typing import Mapping

import vtk

__all__ = ["STRUCTURE_COLUMN", "VOLUME_COLUMN", "fill_volume_table", "table_rows"]

STRUCTURE_COLUMN = "Structure"
VOLUME_COLUMN = "Volume (mL)"


def fill_volume_table(table_node, volumes_ml: Mapping[str, float], display_names: Mapping[str, str]) -> None:
    """Replace ``table_node``'s content with one row per structure of ``volumes_ml``, in its order.

    Args:
        table_node: a ``vtkMRMLTableNode``.
        volumes_ml: structure name -> volume (mL), as the CLI prints it (kept structures only).
        display_names: structure name -> name shown to users (the segment name).
    """
    names = vtk.vtkStringArray()
    names.SetName(STRUCTURE_COLUMN)
    volumes = vtk.vtkDoubleArray()
    volumes.SetName(VOLUME_COLUMN)
    for name, volume in volumes_ml.items():
        names.InsertNextValue(display_names.get(name, name))
        volumes.InsertNextValue(float(volume))
    table = vtk.vtkTable()
    table.AddColumn(names)
    table.AddColumn(volumes)
    table_node.SetAndObserveTable(table)
    table_node.SetColumnUnitLabel(VOLUME_COLUMN, "mL")
    table_node.SetLocked(True)  # a report of the segmentation, not for editing


def table_rows(table_node):
    """``[(structure, volume mL), ...]`` read back from a table filled by :func:`fill_volume_table`."""
    table = table_node.GetTable()
    names = table.GetColumnByName(STRUCTURE_COLUMN)
    volumes = table.GetColumnByName(VOLUME_COLUMN)
    return [(names.GetValue(row), volumes.GetValue(row)) for row in range(table.GetNumberOfRows())]
