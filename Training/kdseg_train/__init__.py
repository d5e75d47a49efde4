"""kdseg_train: TransUNet teacher, SHSA student, distillation losses and the `kdseg-train` command.

Depends on KDSegmentationLib for preprocessing and inference so that evaluation
matches what users get in Slicer; the Lib never imports this package.
"""

__version__ = "0.1.0"
