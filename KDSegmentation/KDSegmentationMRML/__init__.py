"""Everything KDSegmentation does to the MRML scene, without Qt.

Imports only ``slicer`` (MRML and module logics), ``vtk`` and numpy, never ``qt``,
``ctk`` or ``slicer.app``, and takes the scene and the logics it needs as
arguments: the Slicer module passes ``slicer.mrmlScene`` and
``slicer.modules.segmentations.logic()``, the tests pass the scene and logics of
slicer-core's application set-up (trame-slicer's ``SlicerApp``). Python 3.9 syntax.
"""
