"""Lib helpers the Slicer module calls: settings validation, status text, dependencies, plausibility, polling."""

import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.slicer_support.background_task import BackgroundTask, TaskFinished
from KDSegmentationLib.slicer_support.dependencies import (
    describe_auto_device,
    install_requirements,
    onnxruntime_build,
    nvidia_gpu_present,
    onnxruntime_requirement,
    protected_pins,
)
from KDSegmentationLib.errors import DeviceError, KDSegError, ModelNotFoundError
from KDSegmentationLib.progress import ProgressEvent, Stage
from KDSegmentationLib.weights.model_registry import load_registry, write_registry
from KDSegmentationLib.resources import registry_path
from KDSegmentationLib.slicer_support.run_settings import (
    gui_inference_threads,
    join_structure_list,
    parse_structure_list,
    run_settings,
)
from KDSegmentationLib.slicer_support.status_text import format_bytes, format_result_status, progress_bar_state, volume_rows
from KDSegmentationLib.slicer_support.model_choices import model_choices
from KDSegmentationLib.slicer_support.organ_volume_ranges import PLAUSIBLE_VOLUME_ML, implausible_volumes
from KDSegmentationLib.inference.label_volumes import label_volumes_ml

# --- settings ------------------------------------------------------------------------


def test_run_settings_accept_the_module_defaults(plumbing_registry):
    settings, card = run_settings(load_registry(plumbing_registry))
    assert (settings.model_id, settings.device, settings.structures, settings.postprocess, settings.batch_size) == \
        ("plumbing", "auto", None, True, 8)
    assert card.id == "plumbing"


def test_run_settings_canonicalise_structures_in_label_order(plumbing_registry):
    registry = load_registry(plumbing_registry)
    settings, _ = run_settings(registry, structures="Spleen, liver,kidney_left,liver")
    assert settings.structures == ("kidney_left", "liver", "spleen")
    everything = ",".join(label.name for label in registry.get().foreground_labels())
    assert run_settings(registry, structures=everything)[0].structures is None


def test_run_settings_bound_threads_by_the_cores_and_keep_the_download_timeout(plumbing_registry, caplog):
    from KDSegmentationLib.inference.thread_limits import usable_cores

    registry = load_registry(plumbing_registry)
    with caplog.at_level("WARNING", logger="KDSegmentationLib"):
        settings, _ = run_settings(registry, threads=100_000, download_timeout=90)
    assert settings.threads == usable_cores() and settings.download_timeout == 90.0
    assert "100000 inference threads requested" in caplog.text
    assert run_settings(registry, threads=1)[0].threads == 1


@pytest.mark.parametrize("kwargs, error, text", [
    ({"model_id": "nope"}, ModelNotFoundError, "Unknown model id 'nope'"),
    ({"structures": "liver,heart"}, ModelNotFoundError, "Unknown structure 'heart'"),
    ({"device": "gpu"}, DeviceError, "Unknown device 'gpu'"),
    ({"batch_size": 0}, KDSegError, "between 1 and 64"),
    ({"batch_size": 65}, KDSegError, "between 1 and 64"),
    ({"threads": 0}, KDSegError, "at least 1"),
    ({"download_timeout": 0}, KDSegError, "between 1 and 3600 seconds"),
    ({"download_timeout": float("nan")}, KDSegError, "between 1 and 3600 seconds"),
])
def test_run_settings_reject_bad_values_with_a_fix(plumbing_registry, kwargs, error, text):
    with pytest.raises(error, match=text) as info:
        run_settings(load_registry(plumbing_registry), **kwargs)
    assert info.value.hint


def test_module_defaults_pick_the_shipped_model():
    registry = load_registry(registry_path())
    settings, card = run_settings(registry)
    assert settings.model_id == registry.default_model_id == card.id
    assert "not for clinical use" in card.intended_use


def test_model_list_shows_every_bundled_model_default_first():
    registry = load_registry(registry_path())
    choices = model_choices(registry)
    assert [choice.model_id for choice in choices] == sorted(registry.ids(), key=lambda i: i != registry.default_model_id)
    assert choices[0].is_default and not any(choice.is_default for choice in choices[1:])
    assert all(choice.offline for choice in choices)  # bundled and verified
    card = registry.get(choices[0].model_id)
    assert choices[0].text == f"{card.title} {card.version}" and choices[0].size_bytes == card.size_bytes


def test_model_list_puts_the_default_first_whatever_the_file_order(tmp_path, plumbing_registry):
    from dataclasses import replace

    plumbing = load_registry(plumbing_registry).get()
    second = replace(plumbing, id="second", title="Second", file="second.onnx", urls=("https://example.org/s.onnx",))
    third = replace(plumbing, id="third", title="Third")
    path = write_registry(tmp_path / "registry.json", [plumbing, second, third], "second")
    (tmp_path / plumbing.file).write_bytes((plumbing_registry.parent / plumbing.file).read_bytes())
    choices = model_choices(load_registry(path))
    assert [(c.model_id, c.is_default, c.offline) for c in choices] == [
        ("second", True, False), ("plumbing", False, True), ("third", False, True)]


def test_a_registry_without_models_says_none_is_installed(tmp_path):
    empty = tmp_path / "registry.json"
    write_registry(empty, [], None)
    with pytest.raises(ModelNotFoundError, match="No trained model is installed") as info:
        run_settings(load_registry(empty))
    assert "kdseg-train" in info.value.hint


def test_structure_lists_round_trip():
    assert parse_structure_list(" liver, ,spleen,liver ,") == ["liver", "spleen"]
    assert parse_structure_list("") == []
    assert parse_structure_list(join_structure_list(["kidney_left", "aorta"])) == ["kidney_left", "aorta"]
    with pytest.raises(ValueError, match="commas"):
        join_structure_list(["a,b"])


def test_gui_threads_leave_one_core_to_slicer():
    assert gui_inference_threads(8) == 7
    assert gui_inference_threads(2) == 1
    assert gui_inference_threads(1) is None


# --- status text ---------------------------------------------------------------------


def test_progress_bar_shows_stage_and_position():
    state = progress_bar_state(ProgressEvent(Stage.INFERRING, 40, 112, "slice 40 of 112"))
    assert (state.maximum, state.value) == (1000, 357)
    assert state.text == "Inferring: slice 40 of 112 (%p%)"
    busy = progress_bar_state(ProgressEvent(Stage.PREPROCESSING, 0, None, "Reorienting 100% of it"))
    assert (busy.maximum, busy.value, busy.text) == (0, 0, "Preprocessing: Reorienting 100 of it")
    download = progress_bar_state(ProgressEvent(Stage.DOWNLOADING, 5 * 2 ** 20, 20 * 2 ** 20, "x"))
    assert download.text == "Downloading: 5.0 MB of 20.0 MB (%p%)" and download.value == 250
    assert progress_bar_state(ProgressEvent(Stage.INSTALLING)).text == "Installing"


def test_result_status_and_volume_table():
    text = format_result_status({"preprocess": 0.25, "infer": 3.5, "postprocess": 0.5}, "cpu", "KD student", "1.0",
                                ["intensities look like MR"], apply_seconds=1.0)
    assert text == ("Done in 5.2 s on CPU (preprocess 0.2 s, infer 3.5 s, postprocess 0.5 s, segments 1.0 s) with "
                    "KD student v1.0.\nWarning: intensities look like MR")
    assert format_result_status({}, "cuda", "m", "2").startswith("Done in 0.0 s on GPU (CUDA) with m v2.")
    rows = volume_rows({"liver": 1523.44, "kidney_left": 150.0}, {"liver": "Liver", "kidney_left": "Left kidney"})
    assert rows == [("Liver", "1523.4"), ("Left kidney", "150.0")]
    assert (format_bytes(512), format_bytes(3 * 2 ** 30)) == ("512 B", "3.0 GB")


# --- dependencies --------------------------------------------------------------------


def test_install_requirements_pick_the_build_and_pin_slicers_packages():
    versions = {"numpy": "2.0.2", "SimpleITK": "2.4.0"}
    assert install_requirements(gpu=True, version_of=versions.get, python_version=(3, 12)) == [
        "onnxruntime-gpu[cuda,cudnn]>=1.17", "numpy==2.0.2", "SimpleITK==2.4.0"]
    assert install_requirements(gpu=False, version_of={"numpy": "2.0.2"}.get, python_version=(3, 12)) == [
        "onnxruntime>=1.17", "numpy==2.0.2"]
    import numpy

    assert f"numpy=={numpy.__version__}" in protected_pins()
    assert onnxruntime_requirement(gpu=False) == "onnxruntime>=1.17"
    assert nvidia_gpu_present(which=lambda name: None) is False
    assert nvidia_gpu_present(which=lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None) is True


def test_python_39_gets_the_cpu_build_even_with_a_gpu_and_the_prompt_says_why_and_how_big():
    """Slicer 5.8's Python 3.9 resolves onnxruntime-gpu 1.19.2: no pip CUDA/cuDNN, no preload_dlls."""
    build = onnxruntime_build(gpu=True, python_version=(3, 9))
    assert build.requirement == "onnxruntime>=1.17" and not build.gpu
    assert "13 MB" in build.download and "226 MB" in build.reason and "CUDA 12 and cuDNN 9" in build.reason
    assert install_requirements(gpu=True, version_of={"numpy": "1.26.4"}.get, python_version=(3, 9)) == [
        "onnxruntime>=1.17", "numpy==1.26.4"]
    assert describe_auto_device(None, gpu_present=True, python_version=(3, 9)).startswith("CPU: Slicer 5.8")
    gpu = onnxruntime_build(gpu=True, python_version=(3, 12))
    assert gpu.gpu and gpu.requirement.startswith("onnxruntime-gpu[cuda,cudnn]") and "GB" in gpu.download
    cpu = onnxruntime_build(gpu=False, python_version=(3, 12))
    assert (cpu.requirement, cpu.reason, cpu.gpu) == ("onnxruntime>=1.17", "", False) and "MB" in cpu.download
    assert onnxruntime_build(gpu=False, python_version=(3, 9)).download != cpu.download


def test_auto_device_description():
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert describe_auto_device(None, gpu_present=False) == "CPU"
    assert describe_auto_device(None, gpu_present=True, python_version=(3, 12)).startswith(
        "GPU (CUDA) after installing")
    assert describe_auto_device(["CPUExecutionProvider"], gpu_present=True).startswith("CPU: the installed")
    assert describe_auto_device(cuda, gpu_present=False) == "CPU: no NVIDIA driver found"
    assert describe_auto_device(cuda, gpu_present=True).startswith("GPU (CUDA) if a test inference succeeds")
    import onnxruntime

    assert describe_auto_device(onnxruntime.get_available_providers(), nvidia_gpu_present()) == "CPU"  # this machine


# --- plausibility ----------------------------------------------------------------------

# TotalSegmentator ids of the organs (see ../shared/data/README.md).
_TOTALSEG_IDS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6,
                 "pancreas": 7, "aorta": 52}


def test_real_organ_volumes_are_plausible_and_failures_are_not(shared_data):
    image = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))
    totalseg = sitk.GetArrayFromImage(image)
    labels = np.zeros(totalseg.shape, np.uint8)
    for index, name in enumerate(PLAUSIBLE_VOLUME_ML, start=1):
        labels[totalseg == _TOTALSEG_IDS[name]] = index
    volumes = label_volumes_ml(labels, image.GetSpacing(), dict(enumerate(PLAUSIBLE_VOLUME_ML, start=1)))
    assert implausible_volumes(volumes, PLAUSIBLE_VOLUME_ML) == []
    assert 1000 < volumes["liver"] < 1300  # 3 mm voxels of a real liver, in mL

    in_mm3 = {name: volume * 1000 for name, volume in volumes.items()}
    assert len(implausible_volumes(in_mm3, PLAUSIBLE_VOLUME_ML)) >= 6
    missing = dict(volumes, spleen=0.0)
    del missing["pancreas"]
    assert implausible_volumes(missing, PLAUSIBLE_VOLUME_ML) == ["pancreas: not segmented", "spleen: not segmented"]


# --- polling ---------------------------------------------------------------------------


def test_poll_waits_at_most_the_yield_and_returns_at_once_when_done():
    release = threading.Event()
    task = BackgroundTask(lambda progress, cancel: release.wait(5) and "result")
    task.start()
    started = time.monotonic()
    assert task.poll(yield_seconds=0.2) == []
    assert 0.15 <= time.monotonic() - started < 1.0
    release.set()
    assert task.wait(5)
    started = time.monotonic()
    messages = task.poll(yield_seconds=5.0)
    assert time.monotonic() - started < 0.5
    assert messages == [TaskFinished("result")]


def test_stop_cancels_and_joins_the_worker(example_ct, plumbing_segmenter):
    """What the module's cleanup() does when the module or the application closes."""
    from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image
    from KDSegmentationLib.inference.pipeline import SegmentationOptions
    from KDSegmentationLib.slicer_support.background_task import TaskFailed
    from KDSegmentationLib.slicer_support.module_segmentation import segment_volume_array

    array, matrix = sitk.GetArrayFromImage(example_ct), ijk_to_ras_from_image(example_ct)
    inferring = threading.Event()

    def work(progress, cancel):
        def forward(event):
            if event.stage == Stage.INFERRING:
                inferring.set()
            progress(event)
        return segment_volume_array(array, matrix, plumbing_segmenter, SegmentationOptions(batch_size=1), forward,
                                    cancel)

    task = BackgroundTask(work)
    task.start()
    assert inferring.wait(60)
    started = time.monotonic()
    assert task.stop(timeout=10)
    assert time.monotonic() - started < 2.0 and not task.running
    assert not task._thread.is_alive()
    final = task.poll()[-1]
    assert isinstance(final, TaskFailed) and final.cancelled
    assert BackgroundTask(work).stop() is True  # never started: nothing to join
