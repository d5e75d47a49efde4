"""The package's public entry point: re-exported names resolve, and resolve lazily."""

import subprocess
import sys

import pytest

import KDSegmentationLib

HEAVY = ("numpy", "SimpleITK", "onnxruntime")


def _modules_loaded_by(code: str):
    run = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(run.stdout.split())


@pytest.mark.parametrize("name", [n for n in KDSegmentationLib.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_definition(name):
    value = getattr(KDSegmentationLib, name)
    assert value.__name__ == name and value.__module__.startswith("KDSegmentationLib.")


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'segment_everything'"):
        KDSegmentationLib.segment_everything


def test_importing_the_package_and_the_cli_loads_no_numerics():
    for code in ("import KDSegmentationLib", "import KDSegmentationLib.cli"):
        loaded = _modules_loaded_by(code)
        assert not [m for m in HEAVY if m in loaded], code


def test_first_use_of_a_public_name_loads_its_module():
    loaded = _modules_loaded_by("from KDSegmentationLib import Segmenter")
    assert "KDSegmentationLib.inference.pipeline" in loaded and "numpy" in loaded
