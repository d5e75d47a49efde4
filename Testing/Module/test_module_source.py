"""The Slicer module's files without Slicer: syntax for Slicer's Pythons, UI wiring, build files, API list."""

import ast
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from KDSegmentationLib.inference.onnx_engine import DEVICES
from KDSegmentationLib.slicer_support.run_settings import MAX_BATCH_SIZE

from slicer_api_names import (
    MODULE,
    MODULE_FILES,
    Declaration,
    check,
    declares,
    listed_names,
    missing_by_revision,
    read_declarations,
    used_names,
)

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "KDSegmentation"
LIB_DIR = MODULE_DIR / "KDSegmentationLib"
MRML_DIR = MODULE_DIR / "KDSegmentationMRML"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "KDSegmentation.ui"
SLICER_PYTHONS = {"3.9": "Slicer 5.2-5.8", "3.12": "Slicer 5.10 and later"}


def _python(version):
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    if pyenv:
        return str(pyenv[-1])
    found = shutil.which(f"python{version}")
    return found if found and "shims" not in found else None


def _module_python_files():
    return [*MODULE_FILES, *sorted(LIB_DIR.rglob("*.py")), *sorted(MRML_DIR.rglob("*.py"))]


def test_module_files_parse_as_python_39():
    for path in _module_python_files():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, feature_version=(3, 9))
        for node in ast.walk(tree):
            annotation = getattr(node, "annotation", None) or getattr(node, "returns", None)
            if annotation is not None and path == MODULE:
                # The parameter node wrapper evaluates annotations at runtime.
                assert not any(isinstance(n, ast.BinOp) for n in ast.walk(annotation)), \
                    f"{path.name}:{node.lineno}: `X | Y` annotations fail on Slicer 5.8's Python 3.9"
    for path in LIB_DIR.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(torch|slicer|qt|vtk)\b", text, re.M), path
        assert "from __future__ import annotations" in text or not text.strip() or path.name == "__init__.py", path


def test_mrml_layer_uses_no_qt_and_no_application():
    """KDSegmentationMRML runs under slicer-core (no Qt, no slicer.app, no module globals):
    the scene and logics come in as arguments."""
    forbidden_modules = {"qt", "ctk", "slicer.app", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"}
    forbidden_attributes = {"app", "mrmlScene", "modules", "util.getNode", "util.arrayFromSegmentBinaryLabelmap",
                            "util.updateSegmentBinaryLabelmapFromArray", "util.loadVolume"}
    files = sorted(MRML_DIR.rglob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                names = []
            assert not [n for n in names if n.split(".")[0] in {"qt", "ctk"} or n in forbidden_modules], \
                f"{path.name}:{node.lineno}"
            if isinstance(node, ast.Attribute):
                dotted = ast.unparse(node)
                if dotted.startswith("slicer."):
                    assert dotted[len("slicer."):] not in forbidden_attributes, f"{path.name}:{node.lineno}: {dotted}"


# Which Lib subpackages each may import (the top-level modules errors, progress, anatomy,
# resources and atomic_files are open to all). The Slicer-support helpers sit on top.
_LAYERS = {
    "imaging": set(),
    "weights": set(),
    "inference": {"imaging", "weights"},
    "slicer_support": {"imaging", "inference", "weights"},
}


def _imported_lib_subpackages(path: Path):
    package = path.relative_to(LIB_DIR).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[:len(package) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("KDSegmentationLib."):
            target = node.module.split(".")[1:]
        else:
            continue
        if target and target[0] in _LAYERS:
            yield node.lineno, target[0]


def test_lib_subpackages_import_only_lower_layers():
    for path in LIB_DIR.rglob("*.py"):
        parts = path.relative_to(LIB_DIR).parts
        own = parts[0] if len(parts) > 1 else None
        allowed = _LAYERS.get(own, set(_LAYERS)) | {own}
        for lineno, target in _imported_lib_subpackages(path):
            assert target in allowed, f"{path.relative_to(LIB_DIR)}:{lineno} imports {target}; allowed: {sorted(allowed - {None})}"


@pytest.mark.parametrize("version", sorted(SLICER_PYTHONS))
def test_module_files_compile_with_slicers_python(version, tmp_path):
    python = _python(version)
    if python is None:
        pytest.fail(f"python{version} ({SLICER_PYTHONS[version]}) is not installed; install it (e.g. pyenv) to run "
                    "this check")
    files = [str(p) for p in _module_python_files()]
    code = ("import py_compile, sys\n"
            "for i, f in enumerate(sys.argv[1:]):\n"
            f"    py_compile.compile(f, cfile=r'{tmp_path}/c%d.pyc' % i, doraise=True)\n")
    run = subprocess.run([python, "-c", code, *files], capture_output=True, encoding="utf-8", errors="replace")
    assert run.returncode == 0, run.stderr


def test_every_slicer_name_used_is_listed_for_checking():
    assert used_names() - listed_names() == set(), "add them to slicer_api_declarations.tsv with the declaring file"
    assert listed_names() - used_names() == set(), "remove names the module no longer uses"


def test_every_slicer_name_is_declared_in_slicer_58_and_current():
    """The table records, per release, whether the declaring header/class declares each name
    (refreshed with `slicer_api_names.py --write-git`); the module supports all of them."""
    declarations = read_declarations()
    revisions = set(declarations[0].present)
    assert {"v5.8.0", "v5.10.0"} <= revisions and len(revisions) >= 3  # 5.8, 5.10 and a current commit
    assert all(set(item.present) == revisions for item in declarations)
    assert missing_by_revision(declarations) == {}


def test_a_name_counts_only_where_its_class_declares_it():
    """The miss the review found: a method mentioned in some header is not thereby declared by
    the class the module calls it on (synthetic sources, the shape of Slicer's headers)."""
    entry_58 = "class VTK_EXPORT vtkSlicerTerminologyEntry : public vtkObject\n{\n  vtkGetObjectMacro(TypeObject, T);\n};"
    entry_510 = entry_58.replace("};", "  /// True if the entry has a category and type.\n  bool IsValid();\n};")
    logic_58 = "class L {\n  /// Unlike IsValid() on the entry, this checks the context too\n  bool IsValidEntry(E*);\n};"
    path = "Modules/Loadable/Terminologies/Logic/vtkSlicerTerminologyEntry.h"
    assert not declares(entry_58, path, "IsValid") and declares(entry_510, path, "IsValid")
    assert not declares(logic_58, "Logic.h", "IsValid")  # a word in a comment, another method
    assert declares(entry_58, path, "GetTypeObject")  # VTK accessor macro
    assert declares("  vtkSetMacro (LabelOpacity, double);", "composite.h", "SetLabelOpacity")
    sources = {("v5.8.0", path): entry_58, ("v5.10.0", path): entry_510}
    checked = check([Declaration("IsValid", path, "IsValid", {})], ["v5.8.0", "v5.10.0"],
                    lambda rev, file: sources.get((rev, file)))
    assert missing_by_revision(checked) == {"v5.8.0": ["IsValid"]}
    # Python: definitions, attributes set at run time, documented module attributes; not mere use.
    assert declares("def loadVolume(filename, properties={}):\n", "util.py", "loadVolume")
    assert declares('    checkedSetAttr(classtype, "connectGui", _connectGui)\n', "wrapper.py", "connectGui")
    assert declares(".. py:attribute:: mrmlScene\n", "__init__.py", "mrmlScene")
    assert not declares("x = slicer.util.loadVolume(f)  # def loadVolume\n", "other.py", "loadVolume")
    assert declares("  Q_PROPERTY(QString temporaryPath READ temporaryPath)\n", "app.h", "temporaryPath")
    assert declares("  enum { StartCloseEvent = 0xd, EndCloseEvent };\n", "scene.h", "EndCloseEvent")


def _parameter_fields():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KDSegmentationParameterNode")
    return {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_parameter_node_matches_the_lib():
    fields = _parameter_fields()
    choice = next(n for n in ast.walk(fields["device"].annotation)
                  if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Choice")
    assert set(ast.literal_eval(choice.args[0])) == set(DEVICES)
    assert "MAX_BATCH_SIZE" in ast.unparse(fields["batchSize"].annotation) and MAX_BATCH_SIZE == 64
    assert ast.literal_eval(fields["device"].value) == "auto"


# Widget classes the parameterNodeWrapper connects for each hint (guiConnectors.py).
_CONNECTORS = {"bool": {"QCheckBox", "ctkCheckBox"}, "int": {"QSpinBox", "QSlider"},
               "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}, "vtkMRMLSegmentationNode": {"qMRMLNodeComboBox"},
               "str": {"QLineEdit"}}


def test_ui_file_has_every_widget_the_module_uses_and_bindable_parameters():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    assert used - set(widgets) == set()
    fields = _parameter_fields()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) <= set(fields)
    for name, widget_class in bound.items():
        hint = ast.unparse(fields[name].annotation)
        base = re.sub(r"Annotated\[(\w+),.*", r"\1", hint)
        assert widget_class in _CONNECTORS[base], f"{name}: {widget_class} cannot bind {hint}"
    assert {"inputVolume", "outputSegmentation", "postprocess", "show3D", "batchSize"} <= set(bound)


def test_module_cmake_lists_every_lib_file_resource_and_test():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"\$\{MODULE_NAME\}Lib/([\w/]+\.py)", cmake))
    assert listed == {p.relative_to(LIB_DIR).as_posix() for p in LIB_DIR.rglob("*.py")}
    listed = set(re.findall(r"\$\{MODULE_NAME\}MRML/([\w/]+\.py)", cmake))
    assert listed == {p.relative_to(MRML_DIR).as_posix() for p in MRML_DIR.rglob("*.py")}
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", cmake, re.S).group(1).split()
    for resource in resources:
        assert not Path(resource).is_absolute() and ".." not in resource  # the CTK macro copies to dest/<path>
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "KDSegmentation")).is_file(), resource
    for shared in re.findall(r"^\s+((?:Models|Samples)/\S+)$", cmake, re.M):
        assert (REPO / "Resources" / shared).is_file(), shared
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    assert "add_subdirectory(Testing)" in cmake
    testing = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in re.findall(r"SCRIPT (\S+)\)", testing):
        assert (MODULE_DIR / "Testing" / "Python" / script).is_file()
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer REQUIRED)",
                "include(${Slicer_USE_FILE})", "add_subdirectory(KDSegmentation)",
                "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert key in top
    assert top.index("include(${Slicer_USE_FILE})") < top.index("add_subdirectory(KDSegmentation)") < \
        top.index("include(${Slicer_EXTENSION_CPACK})")


# The rules of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json.
_CATALOG_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                  "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool,
                  "tier": int}


def test_catalog_entry_follows_the_extensions_index_schema():
    path = REPO / "Resources" / "KDSegmentation.json"  # the index names entries <ExtensionName>.json
    entry = json.loads(path.read_text(encoding="utf-8"))
    assert {"$schema", "category", "scm_url"} <= set(entry) <= set(_CATALOG_TYPES)
    for key, value in entry.items():
        assert isinstance(value, _CATALOG_TYPES[key]), key
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry.get("scm_type", "git") in ("git", "local") and 1 <= entry.get("tier", 1) <= 5
    assert entry["category"] == re.search(r'EXTENSION_CATEGORY "([^"]+)"',
                                          (REPO / "CMakeLists.txt").read_text(encoding="utf-8")).group(1)


def test_icons_are_pngs_of_the_expected_size():
    from PIL import Image

    for path, size in ((REPO / "Resources" / "Icons" / "KDSegmentation.png", (128, 128)),
                       (MODULE_DIR / "Resources" / "Icons" / "KDSegmentation.png", None)):
        with Image.open(path) as image:
            assert image.format == "PNG"
            if size:
                assert image.size == size
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 16  # a drawing, not a blank square


def _method_calls(class_name: str, method: str):
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    body = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method)
    return {ast.unparse(n.func) for n in ast.walk(body) if isinstance(n, ast.Call)}


def test_widget_fixes_from_the_review_stay_wired():
    """Qt-side fixes that need a Slicer GUI to run, guarded here by their wiring:
    refilling the structure list (model change) re-evaluates Segment; closing the module
    stops and joins the worker and frees the session; auto-selection skips label maps."""
    assert "self._updateButtonState" in _method_calls("KDSegmentationWidget", "onModelChanged")
    cleanup = _method_calls("KDSegmentationWidget", "cleanup")
    assert "self._task.stop" in cleanup and "self.logic.releaseSession" in cleanup
    assert "first_ct_volume" in _method_calls("KDSegmentationWidget", "initializeParameterNode")
    assert "self._segmenters.get" in _method_calls("KDSegmentationLogic", "_work")
    # The model list is the Lib's model_choices (every registered model, default first), tested there.
    assert "self.logic.modelChoices" in _method_calls("KDSegmentationWidget", "_fillModels")
    assert "model_choices" in _method_calls("KDSegmentationLogic", "modelChoices")
