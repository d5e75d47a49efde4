"""What ``kdseg`` loads: `segment` loads only what it uses, `models` and `--help` no numerics."""

import subprocess
import sys

# Loaded by `segment` on a bundled, verified model only if something were wrong: the download
# machinery (ssl, http, requests), the optional registry schema check, numpy's masked arrays
# (np.unique pulls them in), the progress bar when there is no terminal, and torch.
NOT_FOR_SEGMENT = ("ssl", "http.client", "urllib.request", "requests", "jsonschema", "numpy.ma", "tqdm", "torch")


def _modules_after(args, tmp_path):
    code = ("import sys\nfrom KDSegmentationLib.cli import main\ncode = main(sys.argv[1:])\n"
            "print(' '.join(sorted(sys.modules)))\nsys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    return set(run.stdout.split())


def test_segment_loads_only_what_it_uses(shared_data, tmp_path):
    ct = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    loaded = _modules_after(["segment", str(ct), "-o", str(tmp_path / "seg.nii.gz"), "--device", "cpu"], tmp_path)
    assert {"onnxruntime", "SimpleITK", "numpy"} <= loaded  # the run did happen
    assert not [name for name in NOT_FOR_SEGMENT if name in loaded]


def test_models_listing_loads_no_numerics_nor_network(tmp_path):
    loaded = _modules_after(["models"], tmp_path)
    assert not [name for name in ("numpy", "SimpleITK", "onnxruntime", "ssl", "requests", "jsonschema")
                if name in loaded]
