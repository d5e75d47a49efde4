"""Extract the Slicer API names the module uses, and check them against Slicer's source.

    python Testing/Module/slicer_api_names.py                     # names used by the module files
    python Testing/Module/slicer_api_names.py --check DIR         # each listed name in a Slicer checkout
    python Testing/Module/slicer_api_names.py --check-git GITDIR [REV ...]   # same, in a (bare) clone

The module files are KDSegmentation/KDSegmentation.py and the in-Slicer tests under
KDSegmentation/Testing/Python. Names are imports from Slicer's Python packages,
``slicer.*`` / ``sitkUtils.*`` / ``SampleData.*`` attribute paths, and CamelCase
methods called on MRML/VTK objects. Qt and VTK core names are left out.

A name counts as found when Slicer's source *defines* it: ``def name`` or
``class name`` in Python, a word in a C++ header (declarations), or a VTK
``vtkGet/Set...Macro(Name`` for ``GetName``/``SetName``; runtime attributes such as
``slicer.modules.segmentations`` are found as a word in Python or C++ sources.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Set

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "KDSegmentation" / "KDSegmentation.py"
MODULE_FILES = [MODULE, *sorted((REPO / "KDSegmentation" / "Testing" / "Python").glob("*.py"))]
USED_LIST = REPO / "Testing" / "slicer_api_used.txt"
_SLICER_ROOTS = ("slicer", "sitkUtils", "SampleData")
_NOT_SLICER = {
    # Qt
    "QTimer", "QListWidgetItem", "QTableWidgetItem", "Qt", "UserRole", "ItemIsUserCheckable", "Checked", "Unchecked",
    # VTK core and Python
    "vtkMatrix4x4", "vtkStringArray", "vtkCommand", "ModifiedEvent", "SetValue", "SetNumberOfValues", "IsA",
    "AddObserver", "GetName", "GetSpacing", "GetImageData", "GetOrigin", "GetDirection", "Annotated", "Optional",
    "List",
}
# Lowercase API of Slicer base classes and widgets the module calls (ScriptedLoadableModule*,
# VTKObservationMixin, parameterNodeWrapper, qSlicerAbstractModuleWidget, qMRMLWidget).
_BASE_METHODS = {"resourcePath", "delayDisplay", "getParameterNode", "connectGui", "disconnectGui", "addObserver",
                 "removeObserver", "removeObservers", "isEntered", "setMRMLScene"}
_NOT_SLICER_ROOTS = ("qt", "vtk", "np", "ast", "sitk", "Stage", "unittest", "logging", "time", "importlib")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def used_names(sources: Iterable[Path] = MODULE_FILES) -> Set[str]:
    names: Set[str] = set()
    for source in sources:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _SLICER_ROOTS:
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Attribute):
                dotted = _dotted(node)
                root = dotted.split(".")[0]
                if root in _SLICER_ROOTS and dotted.count(".") >= 1:
                    names.add(node.attr)
                elif node.attr in _BASE_METHODS:
                    names.add(node.attr)
                elif node.attr[:1].isupper() and root not in _NOT_SLICER_ROOTS and node.attr not in _NOT_SLICER:
                    names.add(node.attr)
    return names


def listed_names() -> Set[str]:
    return {line.strip() for line in USED_LIST.read_text(encoding="utf-8").splitlines() if line.strip()}


def definition_patterns(name: str) -> List[str]:
    """Extended regexes (git grep -E / grep -E) that find a definition of ``name``."""
    patterns = [rf"(def|class) {name}\b", rf"\b{name}\b"]
    match = re.match(r"^(Get|Set)(\w+)$", name)
    if match:
        patterns.append(rf"vtk{match.group(1)}\w*Macro\(\s*{match.group(2)}\b")
    return patterns


def _searches(name: str):
    """(pattern, file globs) pairs tried in order."""
    patterns = definition_patterns(name)
    searches = [(patterns[0], ["*.py"]), (patterns[1], ["*.h"])]
    if len(patterns) > 2:
        searches.append((patterns[2], ["*.h"]))
    searches.append((patterns[1], ["*.py", "*.cxx"]))  # runtime attributes (slicer.modules.x, slicer.app)
    return searches


def found_in_checkout(root: str) -> Callable[[str], bool]:
    def found(name: str) -> bool:
        for pattern, globs in _searches(name):
            includes = [f"--include={g}" for g in globs]
            if subprocess.run(["grep", "-rqE", *includes, pattern, root]).returncode == 0:
                return True
        return False
    return found


def found_in_git(git_dir: str, rev: str) -> Callable[[str], bool]:
    def found(name: str) -> bool:
        for pattern, globs in _searches(name):
            if subprocess.run(["git", "-C", git_dir, "grep", "-qE", pattern, rev, "--", *globs]).returncode == 0:
                return True
        return False
    return found


def missing_names(names: Iterable[str], found: Callable[[str], bool]) -> List[str]:
    return sorted(name for name in names if not found(name))


def main(argv: List[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--check":
        results: Dict[str, List[str]] = {argv[2]: missing_names(listed_names(), found_in_checkout(argv[2]))}
    elif len(argv) >= 3 and argv[1] == "--check-git":
        revs = argv[3:] or ["HEAD"]
        results = {rev: missing_names(listed_names(), found_in_git(argv[2], rev)) for rev in revs}
    else:
        print("\n".join(sorted(used_names())))
        return 0
    status = 0
    for where, missing in results.items():
        if missing:
            status = 1
            print(f"{where}: {len(missing)} of {len(listed_names())} names not found: {', '.join(missing)}")
        else:
            print(f"{where}: all {len(listed_names())} names found")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
