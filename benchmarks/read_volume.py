"""Reading a CT and writing its label map: kdseg's paths against the alternatives a user would accept.

    python benchmarks/read_volume.py [--slices 150] [--repeats 5] [--json FILE]
                                     [--parts nifti,scaled,dicom,write]

Four parts, each timed side by side in this one run (round robin: every repeat runs
every variant once, so a change in the machine's load hits them all alike):

(a) ``.nii.gz``: the benchmark CT of ``segment_volume.py`` (the real example CT of
    ../shared/data resampled to 512 x 512 x N, int16) read by kdseg (``read_image``:
    one CRC-checked decode streamed into the image), the same with the standard
    library's zlib instead of ISA-L, the previous one-shot decode (whole file, then
    ``GetImageFromArray``) with each installed inflate (zlib, ISA-L, zlib-ng,
    libdeflate), SimpleITK's ``ReadImage`` with 1 and 2 threads (which does not check
    the gzip CRC, tested in Testing/Lib/test_nifti_gzip.py; so also with the CRC pass
    it then needs), nibabel with and without ``indexed_gzip``, and the bare decoders
    (rapidgzip with 1 and 2 threads, indexed_gzip); kdseg's read in its two parts
    (allocating the image, the streamed decode alone); then the peak memory of kdseg's
    read and of the previous one, each in a fresh process.
(a2) the same CT stored as dcm2niix stores CT (int16 scanner values, ``scl_slope`` 1,
    ``scl_inter`` -1024; ITK reads float32 HU): kdseg's ``read_image`` (values scaled
    while decompressing), and as before (a CRC pass, then ITK's full reader).
(b) DICOM series: the real 20-slice JPEG 2000 series of ../shared/data and a
    512 x 512 x N uncompressed series written here from the benchmark CT (temporary
    folder): kdseg's ``read_image`` (one pass: slice positions from the tags the series
    reader keeps), the previous read (a folder scan per question, then a header pass,
    then the pixels), ``ImageSeriesReader`` alone with 1 or 2 threads and with or without
    its per-slice tags, and pydicom + numpy (headers only, and pixels rescaled to HU).
    SimpleITK's wheels have one DICOM ImageIO (GDCM); its list is printed.
(c) writing the label map (the real TotalSegmentator labels of the example CT on the
    same 512 x 512 x N grid, uint8): kdseg's ``write_image_atomic`` (ITK's writer plus
    the read-back check), ITK's .nii.gz writer at several compression levels, the
    read-back check alone (voxels compared while they are decompressed) and as before
    (read into an image, then compared), and ITK's uncompressed .nii followed by
    ISA-L/zlib/libdeflate gzip at several levels (time and size).

Every variant's result is compared with SimpleITK's own reader (voxels, pixel type and
geometry to the bit; nibabel's and pydicom's geometry within a tolerance) and the
comparison is printed next to its time. Times are wall clock (median and best) and CPU
seconds of this process (all threads; on a shared machine CPU time moves least with
the load); ratios are against kdseg's path. The load average is printed before and after.
Optional packages that are not installed are listed and skipped. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.imaging import image_files
from KDSegmentationLib.imaging.dicom_series_checks import read_slice_headers, series_grid, unreadable_dicom_files
from KDSegmentationLib.imaging.image_files import read_image, write_image_atomic
from KDSegmentationLib.imaging.nifti_gzip import inflate_gzip, plain_nifti_gz, read_nifti_gz
from KDSegmentationLib.imaging.written_image_check import image_check
from segment_volume import resampled_ct  # the same benchmark CT, built one way

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
EXAMPLE_LABELS = DATA / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"
REAL_DICOM = DATA / "totalsegmentator_dicom" / "example_ct_dicom"


READ_NIFTI = "kdseg read_nifti_gz (streamed decode into the image, ISA-L)"
SCALED_READ = "kdseg read_image (scaled to float32 while decompressing)"


def optional(module: str):
    """The module, or None when it is not installed."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


# --------------------------------------------------------------------------- timing


class Timings:
    """Round-robin timing of named variants; each call's wall and CPU seconds are kept."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self.wall: Dict[str, List[float]] = {}
        self.cpu: Dict[str, List[float]] = {}
        self.notes: Dict[str, str] = {}

    def run(self, variants: Dict[str, Callable[[], object]], check: Callable[[str, object], str]) -> None:
        names = list(variants)
        for repeat in range(self.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                wall, cpu = time.perf_counter(), time.process_time()
                result = variants[name]()
                self.wall.setdefault(name, []).append(time.perf_counter() - wall)
                self.cpu.setdefault(name, []).append(time.process_time() - cpu)
                if repeat == 0:
                    self.notes[name] = check(name, result)
                del result

    def print_table(self, reference: str, title: str) -> Dict[str, Dict[str, object]]:
        ref_wall, ref_cpu = statistics.median(self.wall[reference]), statistics.median(self.cpu[reference])
        print(f"\n{title}")
        print(f"  {'variant':58s} {'wall med':>9s} {'best':>7s} {'CPU med':>8s} {'x wall':>7s} {'x CPU':>6s}  result")
        rows = {}
        for name in self.wall:
            wall, cpu = statistics.median(self.wall[name]), statistics.median(self.cpu[name])
            rows[name] = {"wall_median_s": wall, "wall_best_s": min(self.wall[name]), "cpu_median_s": cpu,
                          "wall_ratio": wall / ref_wall, "cpu_ratio": cpu / ref_cpu, "result": self.notes[name]}
            print(f"  {name:58s} {wall:8.3f}s {min(self.wall[name]):6.3f}s {cpu:7.3f}s {wall / ref_wall:6.2f}x "
                  f"{cpu / ref_cpu:5.2f}x  {self.notes[name]}")
        return rows


@contextlib.contextmanager
def without_module(name: str):
    """``import name`` raises ImportError inside the block (as inside Slicer without the package)."""
    saved = sys.modules.get(name)
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved


# --------------------------------------------------------------------------- comparisons


def same_image(got: sitk.Image, expected: sitk.Image) -> str:
    """'identical' when pixel type, size, geometry (bitwise) and voxels match, else what differs."""
    if (got.GetPixelID(), got.GetSize()) != (expected.GetPixelID(), expected.GetSize()):
        return f"DIFFERENT type/size {got.GetPixelIDTypeAsString()} {got.GetSize()}"
    geometry = [name for name, a, b in (("origin", got.GetOrigin(), expected.GetOrigin()),
                                        ("spacing", got.GetSpacing(), expected.GetSpacing()),
                                        ("direction", got.GetDirection(), expected.GetDirection())) if a != b]
    voxels = np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected))
    if geometry or not voxels:
        return "DIFFERENT " + ", ".join(geometry + ([] if voxels else ["voxels"]))
    return "identical"


def same_array_and_geometry(voxels_zyx: np.ndarray, origin, spacing, direction, expected: sitk.Image) -> str:
    """For readers that give an array and a geometry (nibabel, pydicom): exact voxels, geometry within float32."""
    if voxels_zyx.shape != sitk.GetArrayViewFromImage(expected).shape:
        return f"DIFFERENT shape {voxels_zyx.shape}"
    equal = np.array_equal(voxels_zyx, sitk.GetArrayViewFromImage(expected))
    error = max(np.max(np.abs(np.subtract(origin, expected.GetOrigin()))),
                np.max(np.abs(np.subtract(spacing, expected.GetSpacing()))),
                np.max(np.abs(np.subtract(direction, expected.GetDirection()))))
    return (f"voxels {'equal' if equal else 'DIFFERENT'} ({voxels_zyx.dtype}), geometry "
            f"{'bitwise equal' if error == 0 else f'within {error:.1e}'}")


# --------------------------------------------------------------------------- (a) .nii.gz


def decoders() -> Dict[str, Callable[[bytes], bytes]]:
    """Whole-buffer gzip decoders that verify CRC and length: the standard library and installed faster ones."""
    found = {"zlib (standard library)": gzip.decompress}
    isal = optional("isal.igzip")
    if isal:
        found["ISA-L (isal)"] = isal.decompress
    zlib_ng = optional("zlib_ng.gzip_ng")
    if zlib_ng:
        found["zlib-ng"] = zlib_ng.decompress
    deflate = optional("deflate")
    if deflate:
        found["libdeflate (deflate)"] = deflate.gzip_decompress
    return found


def one_shot_read(path: Path, decompress: Callable[[bytes], bytes]) -> sitk.Image:
    """The read before this change: the whole file decoded at once, then copied into an image."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    stream = decompress(path.read_bytes())
    offset = int(struct.unpack_from("<f", stream, 108)[0])
    dtype = sitk.GetArrayViewFromImage(sitk.Image(1, 1, 1, reader.GetPixelID())).dtype
    voxels = np.frombuffer(stream, dtype, int(np.prod(reader.GetSize())), offset)
    image = sitk.GetImageFromArray(voxels.reshape(tuple(reversed(reader.GetSize()))))
    image.SetOrigin(reader.GetOrigin())
    image.SetSpacing(reader.GetSpacing())
    image.SetDirection(reader.GetDirection())
    return image


def itk_read(path: Path, threads: int, check_crc: bool) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetNumberOfThreads(threads)
    image = reader.Execute()
    if check_crc:  # ITK does not notice a corrupt stream: the CRC needs its own pass
        isal = optional("isal.igzip")
        with (isal.open if isal else gzip.open)(path, "rb") as handle:
            while handle.read(1 << 22):
                pass
    return image


def nibabel_read(path: Path, indexed: bool) -> Tuple[np.ndarray, tuple, tuple, tuple]:
    """nibabel's voxels as [z, y, x] and its affine as ITK's LPS origin, spacing and direction."""
    import nibabel
    from nibabel import _compression  # where nibabel decides whether to use indexed_gzip (5.x)

    saved = _compression.HAVE_INDEXED_GZIP
    _compression.HAVE_INDEXED_GZIP = indexed and saved
    try:
        image = nibabel.load(str(path))
        voxels = np.asanyarray(image.dataobj)
    finally:
        _compression.HAVE_INDEXED_GZIP = saved
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # RAS -> LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = (affine[:3, :3] / spacing).ravel()
    return np.ascontiguousarray(voxels.T), tuple(affine[:3, 3]), tuple(spacing), tuple(direction)


def bare_decoders(path: Path) -> Dict[str, Callable[[], object]]:
    variants = {f"decode only, {name}": (lambda d=d: d(path.read_bytes())) for name, d in decoders().items()}
    rapidgzip = optional("rapidgzip")
    if rapidgzip:
        for threads in (1, 2):
            variants[f"decode only, rapidgzip {threads} thread(s)"] = (
                lambda t=threads: rapidgzip.open(str(path), parallelization=t).read())
    indexed_gzip = optional("indexed_gzip")
    if indexed_gzip:
        variants["decode only, indexed_gzip"] = lambda: indexed_gzip.IndexedGzipFile(str(path)).read()
    return variants


def nifti_part(path: Path, repeats: int) -> Dict[str, Dict[str, object]]:
    reference = sitk.ReadImage(str(path))
    expected_bytes = reference.GetNumberOfPixels() * reference.GetSizeOfPixelComponent()
    isal = optional("isal.igzip")
    variants: Dict[str, Callable[[], object]] = {
        READ_NIFTI: lambda: read_nifti_gz(path),
        "  the same, standard-library zlib (isal missing, as in Slicer)": lambda: _without_isal(
            lambda: read_nifti_gz(path)),
        "kdseg read_image (+ input checks, worker thread)": lambda: read_image(path),
    }
    if isal:
        variants["previous kdseg read_image (one-shot ISA-L decode)"] = lambda: _previous_read_image(path, isal)
    for name, decompress in decoders().items():
        variants[f"previous one-shot decode + GetImageFromArray, {name}"] = (
            lambda d=decompress: one_shot_read(path, d))
    for threads in (1, 2):
        variants[f"sitk.ReadImage, {threads} thread(s), NO CRC check"] = lambda t=threads: itk_read(path, t, False)
    variants["sitk.ReadImage, 2 threads, + CRC pass"] = lambda: itk_read(path, 2, True)
    plain = plain_nifti_gz(path)
    variants["  part: allocate the image (sitk.Image, zero-filled)"] = (
        lambda: allocated_bytes(sitk.Image(plain.header.GetSize(), plain.header.GetPixelID())))
    variants["  part: streamed decode, no image (ISA-L)"] = lambda: streamed_decode(path)
    variants["  part: streamed decode, no image (zlib)"] = lambda: _without_isal(lambda: streamed_decode(path))
    if optional("nibabel"):
        variants["nibabel (gzip module)"] = lambda: nibabel_read(path, indexed=False)
        if optional("indexed_gzip"):
            variants["nibabel + indexed_gzip"] = lambda: nibabel_read(path, indexed=True)
    variants.update(bare_decoders(path))

    def check(name: str, result: object) -> str:
        if isinstance(result, sitk.Image):
            return same_image(result, reference)
        if isinstance(result, tuple):
            return same_array_and_geometry(*result, reference)
        length = result if isinstance(result, int) else len(result)  # type: ignore[arg-type]
        return f"{length} bytes" + ("" if length >= expected_bytes else " SHORT")

    timings = Timings(repeats)
    timings.run(variants, check)
    return timings.print_table(READ_NIFTI,
                               f"(a) .nii.gz {reference.GetSize()} int16, {path.stat().st_size / 1e6:.1f} MB "
                               f"compressed, {expected_bytes / 1e6:.0f} MB of voxels")


def allocated_bytes(image: sitk.Image) -> int:
    return image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()


def streamed_decode(path: Path) -> int:
    """kdseg's CRC-checked streamed decode with the pieces dropped (what the read costs without the image)."""
    return inflate_gzip(path, 0, 0, lambda piece, start: None)  # the decompressed length


# --------------------------------------------------------------------------- (a2) scaled .nii.gz


def write_scaled_copy(ct: sitk.Image, path: Path) -> None:
    """``ct`` as dcm2niix stores CT: int16 scanner values (HU + 1024) with scl_slope 1 and scl_inter -1024, gzip level 6."""
    plain = path.with_name("plain_for_scaled.nii")
    sitk.WriteImage(ct, str(plain), useCompression=False)
    stream = bytearray(plain.read_bytes())
    plain.unlink()
    offset = int(struct.unpack_from("<f", stream, 108)[0])
    stored = np.frombuffer(stream, "<i2", offset=offset) + np.int16(1024)
    struct.pack_into("<2f", stream, 112, 1.0, -1024.0)
    path.write_bytes(gzip.compress(bytes(stream[:offset]) + stored.tobytes(), 6, mtime=0))


def previous_scaled_read(path: Path, inflate: str) -> sitk.Image:
    """The read of a scaled .nii.gz before the scaled fast path: a CRC pass (``gzip`` module before, then
    kdseg's streamed decode), then ITK's full reader."""
    if inflate == "gzip module":
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    else:
        inflate_gzip(path, 0, 0, lambda piece, start: None)
    return sitk.ReadImage(str(path))


def scaled_part(path: Path, repeats: int) -> Dict[str, Dict[str, object]]:
    reference = sitk.ReadImage(str(path))
    variants: Dict[str, Callable[[], object]] = {
        SCALED_READ: lambda: read_image(path),
        "  the same, standard-library zlib (isal missing)": lambda: _without_isal(lambda: read_image(path)),
        "previous: gzip-module CRC pass + ITK reader": lambda: previous_scaled_read(path, "gzip module"),
        "previous, ISA-L CRC pass + ITK reader": (
            lambda: previous_scaled_read(path, "streamed")),
        "sitk.ReadImage, NO CRC check": lambda: itk_read(path, 2, False),
    }
    timings = Timings(repeats)
    timings.run(variants, lambda name, result: same_image(result, reference))
    return timings.print_table(SCALED_READ, f"(a2) .nii.gz as dcm2niix writes CT: int16 with scl_slope 1, scl_inter "
                                            f"-1024 (ITK reads float32), {path.stat().st_size / 1e6:.1f} MB compressed")


def _previous_read_image(path: Path, isal) -> sitk.Image:
    saved = image_files.read_nifti_gz
    image_files.read_nifti_gz = lambda p: one_shot_read(p, isal.decompress)
    try:
        return read_image(path)
    finally:
        image_files.read_nifti_gz = saved


_PEAK_MEMORY_CODE = """
import sys
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
import read_volume

def high_water_kib():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited at fork)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

path = Path({path!r})
before = high_water_kib()
image = read_volume.read_image(path) if {kdseg!r} else read_volume._previous_read_image(path, read_volume.optional("isal.igzip"))
print((high_water_kib() - before) / 1024)
"""


def read_peak_memory(path: Path) -> Dict[str, float]:
    """Peak RSS growth (MiB, Linux's VmHWM) of one read in a fresh process: kdseg's and the previous one."""
    import subprocess

    growth: Dict[str, float] = {}
    if not Path("/proc/self/status").is_file():
        return growth
    for name, kdseg in (("kdseg read_image", True), ("previous kdseg read_image", False)):
        if not kdseg and not optional("isal.igzip"):
            continue
        code = _PEAK_MEMORY_CODE.format(benchmarks=str(Path(__file__).resolve().parent), path=str(path), kdseg=kdseg)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        growth[name] = float(run.stdout.split()[-1])
    print("  peak memory of one read (RSS growth in a fresh process; the image itself is "
          f"{sitk.ReadImage(str(path)).GetNumberOfPixels() * 2 / 2**20:.0f} MiB): "
          + ", ".join(f"{name} {mb:.0f} MiB" for name, mb in growth.items()))
    return growth


def _without_isal(read: Callable[[], object]) -> object:
    with without_module("isal"):
        return read()


# --------------------------------------------------------------------------- (b) DICOM


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """``image`` as an uncompressed CT series, one file per slice, with position, orientation and rescale tags."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid, study_uid = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.9g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        tags = {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{k + 1}",
                "0008|0060": "CT", "0020|000d": study_uid, "0020|000e": series_uid, "0020|0013": str(k + 1),
                "0020|0037": orientation, "0028|1052": "0", "0028|1053": "1", "0008|103e": "benchmark CT",
                "0020|0032": "\\".join(f"{v:.9g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))}
        for tag, value in tags.items():
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:04d}.dcm"))
        writer.Execute(slice_k)


def previous_dicom_read(folder: Path) -> sitk.Image:
    """The DICOM read before this change, call for call: the folder scanned once to list the
    series and three times more for their files, a header pass over the files, then the pixels."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    listed = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in ids}
    first = sitk.ImageFileReader()
    first.SetFileName(listed[ids[0]][0])
    first.ReadImageInformation()
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    every = [f for uid in ids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
    unreadable_dicom_files(folder, every)
    grid = series_grid(read_slice_headers(files, folder), folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(grid.ordered_files))
    return grid.place(reader.Execute())


def series_reader(files: Tuple[str, ...], threads: Optional[int], tags: bool) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    if threads:
        reader.SetNumberOfThreads(threads)
    if tags:
        reader.MetaDataDictionaryArrayUpdateOn()
    return reader.Execute()


def pydicom_read(files: Tuple[str, ...]) -> Tuple[np.ndarray, tuple, tuple, tuple]:
    """pydicom + numpy: slices sorted along the normal, values rescaled to HU as int16, geometry from the tags."""
    import pydicom

    slices = [pydicom.dcmread(name) for name in files]
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda s: float(np.dot(np.array(s.ImagePositionPatient, dtype=float), normal)))
    stack = np.empty((len(slices),) + slices[0].pixel_array.shape, np.int16)
    for k, s in enumerate(slices):
        slope, intercept = float(getattr(s, "RescaleSlope", 1)), float(getattr(s, "RescaleIntercept", 0))
        stack[k] = np.round(s.pixel_array * slope + intercept)
    first, last = (np.array(s.ImagePositionPatient, dtype=float) for s in (slices[0], slices[-1]))
    step = float(np.linalg.norm(last - first)) / (len(slices) - 1)
    row, column = (float(v) for v in slices[0].PixelSpacing)
    direction = np.stack([orientation[:3], orientation[3:], normal], axis=1).ravel()
    return stack, tuple(first), (column, row, step), tuple(direction)


def pydicom_headers(files: Tuple[str, ...]) -> List[object]:
    import pydicom

    return [pydicom.dcmread(name, stop_before_pixels=True,
                            specific_tags=["ImagePositionPatient", "ImageOrientationPatient"]) for name in files]


def dicom_part(folder: Path, title: str, repeats: int) -> Dict[str, Dict[str, object]]:
    (uid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    reference = series_reader(files, None, False)
    variants: Dict[str, Callable[[], object]] = {
        "kdseg read_image (one pass: positions from the reader's tags)": lambda: read_image(folder),
        "previous read (4 folder scans, header pass, pixels)": lambda: previous_dicom_read(folder),
        "  folder scan: GetGDCMSeriesIDs": lambda: sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)),
        "  folder scan: GetGDCMSeriesFileNames": (
            lambda: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)),
        "  header pass: read_slice_headers (GDCM)": lambda: read_slice_headers(files, folder),
    }
    for threads in (1, 2):
        for tags in (False, True):
            variants[f"  ImageSeriesReader, {threads} thread(s), {'with' if tags else 'no'} per-slice tags"] = (
                lambda t=threads, m=tags: series_reader(files, t, m))
    if optional("pydicom"):
        variants["  header pass: pydicom (2 tags, no pixels)"] = lambda: pydicom_headers(files)
        variants["pydicom + numpy (pixels rescaled, geometry from tags)"] = lambda: pydicom_read(files)

    def check(name: str, result: object) -> str:
        if isinstance(result, sitk.Image):
            return same_image(result, reference)
        if isinstance(result, tuple) and len(result) == 4 and isinstance(result[0], np.ndarray):
            return same_array_and_geometry(*result, reference)
        return f"{len(result)} items"  # type: ignore[arg-type]

    def guarded(call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            try:
                return call()
            except Exception as exc:  # e.g. pydicom without a JPEG 2000 decoder: shown, not fatal
                return RuntimeError(f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
        return run

    timings = Timings(repeats)
    timings.run({name: guarded(call) for name, call in variants.items()},
                lambda name, result: f"FAILED {result}" if isinstance(result, RuntimeError) else check(name, result))
    return timings.print_table("kdseg read_image (one pass: positions from the reader's tags)",
                               f"(b) DICOM {title}: {len(files)} files, {reference.GetSize()}")


# --------------------------------------------------------------------------- (c) writing


def label_map_like(ct: sitk.Image) -> sitk.Image:
    """The real TotalSegmentator labels of the example CT on ``ct``'s grid (nearest neighbour), uint8."""
    labels = sitk.ReadImage(str(EXAMPLE_LABELS))
    return sitk.Cast(sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0), sitk.sitkUInt8)


def previous_read_back(path: Path, expected: sitk.Image) -> Path:
    """The read-back check before this change: the written file read whole into an image, then compared."""
    written = read_nifti_gz(path)
    same = (written.GetSize() == expected.GetSize()
            and np.allclose(written.GetSpacing(), expected.GetSpacing(), rtol=1e-5, atol=0)
            and np.allclose(written.GetOrigin(), expected.GetOrigin(), rtol=0, atol=1e-3)
            and np.allclose(written.GetDirection(), expected.GetDirection(), rtol=0, atol=1e-4)
            and np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected)))
    if not same:
        raise RuntimeError(f"{path} does not read back as written")
    return path


def encoders() -> Dict[str, Callable[[bytes, int], bytes]]:
    found = {"zlib": lambda data, level: gzip.compress(data, level, mtime=0)}
    isal = optional("isal.igzip")
    if isal:
        found["ISA-L"] = lambda data, level: isal.compress(data, level, mtime=0)
    deflate = optional("deflate")
    if deflate:
        found["libdeflate"] = deflate.gzip_compress
    return found


def write_part(labels: sitk.Image, folder: Path, repeats: int) -> Dict[str, Dict[str, object]]:
    target = folder / "labels.nii.gz"

    def itk_write(level: Optional[int]) -> Path:
        path = folder / f"itk_{level}.nii.gz"
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(path))
        writer.UseCompressionOn()
        if level is not None:
            writer.SetCompressionLevel(level)
        writer.Execute(labels)
        return path

    def itk_nii_then(encode: Callable[[bytes, int], bytes], level: int, name: str) -> Path:
        plain = folder / "plain.nii"
        sitk.WriteImage(labels, str(plain), useCompression=False)
        path = folder / f"{name}_{level}.nii.gz"
        path.write_bytes(encode(plain.read_bytes(), level))
        return path

    sitk.WriteImage(labels, str(folder / "check.nii.gz"), useCompression=True)
    read_back = image_check(labels)
    variants: Dict[str, Callable[[], object]] = {
        "kdseg write_image_atomic (ITK .nii.gz + read-back check)": lambda: write_image_atomic(labels, target),
        "  read-back check alone (image_check: compared while decompressing)": (
            lambda: read_back(folder / "check.nii.gz") or (folder / "check.nii.gz")),
        "  previous read-back check (read into an image, then compared)": (
            lambda: previous_read_back(folder / "check.nii.gz", labels)),
        "  ITK .nii.gz writer, default level": lambda: itk_write(None),
    }
    for level in (1, 9):
        variants[f"  ITK .nii.gz writer, SetCompressionLevel({level})"] = lambda lv=level: itk_write(lv)
    variants["  ITK .nii, uncompressed"] = lambda: sitk.WriteImage(labels, str(folder / "u.nii")) or folder / "u.nii"
    for name, encode in encoders().items():
        for level in ((0, 1, 2, 3) if name == "ISA-L" else (1, 6)):
            variants[f"  ITK .nii then {name} gzip level {level}"] = (
                lambda e=encode, lv=level, n=name: itk_nii_then(e, lv, n))

    itk_written = sitk.ReadImage(str(folder / "check.nii.gz"))  # NIfTI keeps geometry as float32

    def check(name: str, result: object) -> str:
        path = Path(result)  # type: ignore[arg-type]
        back = sitk.ReadImage(str(path))
        return f"{path.stat().st_size / 1e6:5.2f} MB, reads back {same_image(back, itk_written)} to ITK's .nii.gz"

    timings = Timings(repeats)
    timings.run(variants, check)
    return timings.print_table("kdseg write_image_atomic (ITK .nii.gz + read-back check)",
                               f"(c) writing the label map {labels.GetSize()} uint8 "
                               f"({labels.GetNumberOfPixels() / 1e6:.0f} MB of voxels)")


# --------------------------------------------------------------------------- main


def installed_versions() -> Dict[str, str]:
    versions = {"SimpleITK": sitk.Version.VersionString(), "numpy": np.__version__}
    for module in ("isal", "zlib_ng", "deflate", "rapidgzip", "indexed_gzip", "nibabel", "pydicom", "pylibjpeg",
                   "openjpeg"):
        found = optional(module)
        versions[module] = getattr(found, "__version__", "installed") if found else "not installed"
    return versions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5, help="rounds over all variants (median and best shown)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--parts", default="nifti,scaled,dicom,write",
                        help="comma-separated parts to run (nifti, scaled, dicom, write)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    load_before = os.getloadavg()
    versions = installed_versions()
    print(f"load average {load_before[0]:.2f} (1 min) {load_before[1]:.2f} (5 min) on {os.cpu_count()} CPUs")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"SimpleITK ImageIOs: {', '.join(sitk.ImageFileReader().GetRegisteredImageIOs())}")
    figures: Dict[str, object] = {"versions": versions, "slices": args.slices, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="kdseg_read_bench_") as tmp:
        tmp_dir = Path(tmp)
        ct = resampled_ct(512, args.slices)
        ct_path = tmp_dir / "ct.nii.gz"
        sitk.WriteImage(ct, str(ct_path), useCompression=True)
        if "dicom" in parts:
            write_dicom_series(ct, tmp_dir / "dicom")
        if "scaled" in parts:
            write_scaled_copy(ct, tmp_dir / "ct_scaled.nii.gz")
        labels = label_map_like(ct)
        del ct
        if "nifti" in parts:
            figures["nifti"] = nifti_part(ct_path, args.repeats)
            figures["nifti_peak_memory_mib"] = read_peak_memory(ct_path)
        if "scaled" in parts:
            figures["nifti_scaled"] = scaled_part(tmp_dir / "ct_scaled.nii.gz", args.repeats)
        if "dicom" in parts:
            figures["dicom_real_jpeg2000"] = dicom_part(REAL_DICOM, f"real JPEG 2000 series ({REAL_DICOM.name})",
                                                        args.repeats)
            figures["dicom_written"] = dicom_part(tmp_dir / "dicom",
                                                  "uncompressed series written from the benchmark CT", args.repeats)
        if "write" in parts:
            (tmp_dir / "write").mkdir()
            figures["write"] = write_part(labels, tmp_dir / "write", args.repeats)
    load_after = os.getloadavg()
    figures["load_average"] = {"before": load_before, "after": load_after}
    print(f"\nload average after: {load_after[0]:.2f} (1 min) {load_after[1]:.2f} (5 min)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
