"""Extract the Slicer API names KDSegmentation.py uses, and check them against a Slicer source tree.

    python Testing/Module/slicer_api_names.py            # print the names the module uses
    python Testing/Module/slicer_api_names.py --check /path/to/Slicer   # each name must occur there
    python Testing/Module/slicer_api_names.py --check-git /path/to/Slicer.git   # same, in a bare clone

Names are ``slicer.*`` dotted paths, imports from slicer packages, and methods called
on MRML/VTK objects (CamelCase attributes). Qt and VTK core names are not listed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Set

MODULE = Path(__file__).resolve().parents[2] / "KDSegmentation" / "KDSegmentation.py"
USED_LIST = Path(__file__).resolve().parents[1] / "slicer_api_used.txt"
_NOT_SLICER = {"QTimer", "QListWidgetItem", "QTableWidgetItem", "Qt", "vtkMatrix4x4", "vtkStringArray", "vtkCommand",
               "ModifiedEvent", "UserRole", "ItemIsUserCheckable", "Checked", "Unchecked", "SetValue",
               "SetNumberOfValues", "GetName", "GetSpacing", "GetImageData", "AddObserver"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def used_names(source: Path = MODULE) -> Set[str]:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slicer":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted.startswith("slicer.") and dotted.count(".") <= 3:
                names.add(dotted.split(".")[-1])
            elif node.attr[:1].isupper() and node.attr not in _NOT_SLICER and not dotted.startswith(("qt.", "vtk.")):
                names.add(node.attr)
    return names


def listed_names() -> Set[str]:
    return {line.strip() for line in USED_LIST.read_text(encoding="utf-8").splitlines() if line.strip()}


def missing_in_source(names: Set[str], grep) -> Set[str]:
    return {name for name in names if not grep(name)}


def main(argv) -> int:
    if len(argv) == 3 and argv[1] in ("--check", "--check-git"):
        root = argv[2]
        if argv[1] == "--check":
            def grep(name):
                return subprocess.run(["grep", "-rqw", "--include=*.py", "--include=*.h", name, root]).returncode == 0
        else:
            def grep(name):
                return subprocess.run(["git", "-C", root, "grep", "-qw", name, "HEAD", "--", "*.py", "*.h"]).returncode == 0
        missing = missing_in_source(listed_names(), grep)
        print("\n".join(sorted(missing)) or "all names found")
        return 1 if missing else 0
    print("\n".join(sorted(used_names())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
