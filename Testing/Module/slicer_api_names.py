"""The Slicer API names the module uses, each checked in the Slicer source file that declares it.

    python Testing/Module/slicer_api_names.py                    # names used by the module files
    python Testing/Module/slicer_api_names.py --check-git GITDIR [REV ...]  # check the table against a clone
    python Testing/Module/slicer_api_names.py --write-git GITDIR REV ...    # refresh the table's REV columns

The module files are KDSegmentation/KDSegmentation.py, the Qt-free MRML layer
KDSegmentation/KDSegmentationMRML and the in-Slicer tests under KDSegmentation/Testing/Python.
Names are imports from Slicer's Python packages, ``slicer.*`` / ``sitkUtils.*`` /
``SampleData.*`` attribute paths, and CamelCase methods called on MRML/VTK objects; Qt
and VTK core names are left out.

``Testing/Module/slicer_api_declarations.tsv`` names, for each used name, the file of
Slicer/Slicer that declares it (the header of the class whose method the module calls,
or the Python file defining it) and records, per release tag, whether that file declares
it. A name merely mentioned elsewhere does not count: ``vtkSlicerTerminologyEntry::IsValid``
is declared in vtkSlicerTerminologyEntry.h from 5.10 only, so a module calling it is
flagged for v5.8.0 even though the word appears in 5.8's sources. The table holds facts
only (no Slicer code); ``--write-git`` recomputes the version columns from a clone.
"""

from __future__ import annotations

import ast
import csv
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "KDSegmentation" / "KDSegmentation.py"
MODULE_FILES = [MODULE, *sorted((REPO / "KDSegmentation" / "Testing" / "Python").glob("*.py")),
                *sorted((REPO / "KDSegmentation" / "KDSegmentationMRML").glob("*.py"))]
DECLARATIONS = Path(__file__).resolve().parent / "slicer_api_declarations.tsv"
_SLICER_ROOTS = ("slicer", "sitkUtils", "SampleData")
_NOT_SLICER = {
    # Qt
    "QTimer", "QListWidgetItem", "QTableWidgetItem", "Qt", "UserRole", "ItemIsUserCheckable", "Checked", "Unchecked",
    # VTK core and Python
    "vtkMatrix4x4", "vtkStringArray", "vtkCommand", "ModifiedEvent", "SetValue", "SetNumberOfValues", "IsA",
    "AddObserver", "GetName", "GetSpacing", "GetImageData", "GetOrigin", "GetDirection", "Annotated", "Optional",
    "List", "AddColumn", "GetColumnByName", "GetNumberOfRows", "GetDimensions", "GetNumberOfScalarComponents",
    "GetClassName", "GetItemAsObject", "GetNumberOfItems", "UnRegister", "InsertNextValue", "SetName", "GetValue",
    "GetMTime", "RemoveObserver",
}
# Lowercase API of Slicer base classes and widgets the module calls (ScriptedLoadableModule*,
# VTKObservationMixin, parameterNodeWrapper, qSlicerAbstractModuleWidget, qMRMLWidget).
_BASE_METHODS = {"resourcePath", "delayDisplay", "getParameterNode", "connectGui", "disconnectGui", "addObserver",
                 "removeObserver", "removeObservers", "isEntered", "setMRMLScene"}
_NOT_SLICER_ROOTS = ("qt", "vtk", "np", "ast", "sitk", "Stage", "unittest", "logging", "time", "importlib",
                     "ViewState")


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


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Declaration:
    """Where Slicer declares one used name, and whether it does in each checked revision.

    Args:
        name: the name the module uses (method, class, function, attribute).
        path: the declaring file in Slicer/Slicer.
        token: what that file declares when it differs from ``name`` (e.g. the module
            class ``qSlicerSegmentationsModule`` behind ``slicer.modules.segmentations``).
        present: revision -> declared there.
    """

    name: str
    path: str
    token: str
    present: Dict[str, bool]


def read_declarations(path: Path = DECLARATIONS) -> List[Declaration]:
    rows = [row for row in csv.reader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t")
            if row and not row[0].startswith("#")]
    header, body = rows[0], rows[1:]
    revisions = header[3:]
    declarations = []
    for row in body:
        name, file, token = row[:3]
        present = {rev: flag == "yes" for rev, flag in zip(revisions, row[3:])}
        declarations.append(Declaration(name, file, token if token != "-" else name, present))
    return declarations


def write_declarations(declarations: List[Declaration], revisions: List[str], path: Path = DECLARATIONS) -> None:
    lines = ["# Where Slicer/Slicer declares each Slicer name the module uses (see slicer_api_names.py);",
             "# one column per checked revision: yes = that file declares it there.",
             "\t".join(["name", "declared in", "token", *revisions])]
    for item in sorted(declarations, key=lambda d: d.name):
        token = item.token if item.token != item.name else "-"
        lines.append("\t".join([item.name, item.path, token,
                                *("yes" if item.present.get(rev) else "no" for rev in revisions)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def listed_names() -> Set[str]:
    return {item.name for item in read_declarations()}


def missing_by_revision(declarations: Iterable[Declaration]) -> Dict[str, List[str]]:
    """Revision -> names the table records as not declared there."""
    missing: Dict[str, List[str]] = {}
    for item in declarations:
        for rev, present in item.present.items():
            if not present:
                missing.setdefault(rev, []).append(item.name)
    return missing


# --- is a name declared in a file -----------------------------------------------------------

_CPP_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def declares(text: str, path: str, token: str) -> bool:
    """Whether the source ``text`` of ``path`` declares ``token``.

    C++ headers (comments removed): a method ``token(``, a VTK ``vtkGet/Set/Boolean...Macro``
    for ``Get<X>``/``Set<X>``, an enum value, a Qt property or a class. Python: ``def``,
    ``class``, an assignment, ``setattr(obj, "token")`` or a documented ``py:attribute::``.
    The token ``*`` stands for the file itself (a Python module such as ``slicer.util``).
    """
    if token == "*":
        return True
    t = re.escape(token)
    if path.endswith((".h", ".cxx", ".txx")):
        code = _CPP_COMMENTS.sub(" ", text)
        patterns = [rf"\b{t}\s*\(", rf"Q_PROPERTY\([^)]*\b{t}\b", rf"\bclass\s+(\w+\s+)?{t}\b",
                    rf"\b{t}\s*(=[^=]|,|\}})"]
        accessor = re.match(r"^(Get|Set)(\w+)$", token)
        if accessor:
            patterns.append(rf"vtk{accessor.group(1)}\w*Macro\s*\(\s*{re.escape(accessor.group(2))}\b")
        return any(re.search(p, code) for p in patterns)
    code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith(".. py:") else line
                     for line in text.splitlines())
    patterns = [rf"^\s*(async\s+)?def\s+{t}\b", rf"^\s*class\s+{t}\b", rf"^\s*{t}\s*(:[^=]*)?=[^=]",
                rf"[sS]et[aA]ttr\(\s*\w+\s*,\s*[\"']{t}[\"']", rf"py:attribute::\s+{t}\b"]
    return any(re.search(p, code, re.M) for p in patterns)


def git_reader(git_dir: str) -> Callable[[str, str], Optional[str]]:
    """``read(rev, path)``: the file's text at ``rev`` in a (bare) clone, or None if absent."""
    cache: Dict[tuple, Optional[str]] = {}

    def read(rev: str, path: str) -> Optional[str]:
        if (rev, path) not in cache:
            run = subprocess.run(["git", "-C", git_dir, "show", f"{rev}:{path}"], capture_output=True)
            cache[(rev, path)] = run.stdout.decode("utf-8", "replace") if run.returncode == 0 else None
        return cache[(rev, path)]
    return read


def check(declarations: Iterable[Declaration], revisions: List[str],
          read: Callable[[str, str], Optional[str]]) -> List[Declaration]:
    """The declarations with ``present`` recomputed for ``revisions`` from the sources ``read`` gives."""
    result = []
    for item in declarations:
        present = {}
        for rev in revisions:
            text = read(rev, item.path)
            present[rev] = text is not None and declares(text, item.path, item.token)
        result.append(Declaration(item.name, item.path, item.token, present))
    return result


def main(argv: List[str]) -> int:
    if len(argv) >= 4 and argv[1] in ("--check-git", "--write-git"):
        revisions = argv[3:]
        checked = check(read_declarations(), revisions, git_reader(argv[2]))
        if argv[1] == "--write-git":
            write_declarations(checked, revisions)
        status = 0
        for rev, names in sorted(missing_by_revision(checked).items()):
            status = 1
            print(f"{rev}: not declared where listed: {', '.join(sorted(names))}")
        print(f"checked {len(checked)} names in {', '.join(revisions)}")
        return status
    if len(argv) > 1:
        print(__doc__)
        return 2
    print("\n".join(sorted(used_names())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
