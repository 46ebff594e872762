"""``data.name=deepfake``: real and fake frames, one sub-folder per class under ``data.path`` (read as ``imagefolder``);
without ``data.path``, the embedded real-versus-generated set (`embedded_deepfake_folder`), so a deepfake recipe
runs on a fresh machine.

The embedded set is made, at first use and without network, from the photographs that ship inside installed
packages (scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's ``grace_hopper.jpg``): seeded square crops
of them, resized to the recipe's ``data.image_size``, are the *real* class; the *fake* class is the same crops
passed through what a generator's decoder does to an image: 2x down-sampling, then 2x up-sampling (nearest,
bilinear or a seeded transposed convolution: the checkerboard of learned up-sampling), then JPEG re-compression.
Both classes are saved as JPEG at the same seeded quality, so the compression level tells nothing; what tells
the classes apart is the up-sampling's spectrum, the artefact real detectors key on. Everything is computed in
numpy float64 or by PIL, so the same seed gives the same bytes. The folder (``real/``, ``fake/``, ``MANIFEST.json``
with every file's sha256) is written to a temporary folder and renamed into the cache (`cache_root`) when
complete; a folder whose files do not match its manifest (a killed build, a truncated file) is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mapscale.data.splits import DataError, DataSplits
from mapscale.data.tables import build_files

if TYPE_CHECKING:
    from mapscale.data.section import DataSection

VERSION = 1
"""Bumped whenever the construction changes: a new version is a new cache folder."""
CROPS = 400
"""Crops per class: 800 images in all (640 train, 160 test at the recipes' ``test_size=0.2``)."""
DEFAULT_SIZE = 64
"""Side of the images when ``data.image_size`` is not set."""
MANIFEST = "MANIFEST.json"
UPSAMPLERS = ("nearest", "bilinear", "transposed")


def build_deepfake(section: DataSection, task: str, cache_dir=None) -> DataSplits:
    """``data.path`` as an ``imagefolder`` of real and fake frames; without it, the embedded set at
    ``data.image_size`` (announced in the splits' ``note``)."""
    if task != "classification":
        raise DataError(f"data.name=deepfake holds real and fake images for classification; it cannot serve task={task}")
    if section.path is not None:
        return build_files(section.model_copy(update={"name": "imagefolder"}), task, cache_dir)
    size = section.image_size or DEFAULT_SIZE
    folder, built = embedded_deepfake_folder(size, section.split_seed)
    splits = build_files(section.model_copy(update={"name": "imagefolder", "path": folder}), task, cache_dir)
    note = (
        f"data: no data.path, so the embedded real-versus-generated set: {2 * CROPS} images at {size}x{size} from the "
        f"photos inside scikit-learn and matplotlib, {'built at' if built else 'read from'} {folder}; "
        "set data.path to a folder of real/ and fake/ frames for real data"
    )
    return replace(splits, note=note)


def cache_root() -> Path:
    """``$MAPSCALE_CACHE``, else ``$XDG_CACHE_HOME/mapscale``, else ``~/.cache/mapscale``."""
    if os.environ.get("MAPSCALE_CACHE"):
        return Path(os.environ["MAPSCALE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mapscale"


def embedded_deepfake_folder(size: int, seed: int = 0, root: Path | None = None) -> tuple[Path, bool]:
    """``(folder, built)``: the embedded set's image folder at ``size`` x ``size`` from ``seed``, built unless a
    complete copy is in the cache (``root``, default `cache_root`). Safe when several processes build at once:
    each writes its own temporary folder and the first complete one renamed into place wins."""
    if size < 8:
        raise DataError(f"data.image_size={size} is too small for the embedded deepfake set (at least 8 pixels)")
    folder = (root or cache_root()) / f"deepfake-{size}px-seed{seed}-v{VERSION}"
    if _complete(folder):
        return folder, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{folder.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    write_embedded_set(staging, size, seed)
    if folder.exists() and not _complete(folder):
        shutil.rmtree(folder, ignore_errors=True)  # a killed or truncated build: never read, rebuilt
    try:
        os.replace(staging, folder)
    except OSError:  # another process renamed its complete copy first
        shutil.rmtree(staging, ignore_errors=True)
        if not _complete(folder):
            raise
    return folder, True


def write_embedded_set(folder: Path, size: int, seed: int) -> None:
    """Write the ``2 * CROPS`` JPEG images and their manifest to ``folder``."""
    photos = _photos()
    digests = {}
    for label in ("real", "fake"):
        (folder / label).mkdir(parents=True)
    for i in range(CROPS):
        rng = np.random.default_rng([seed, VERSION, i])  # PCG64: the same draws on any platform
        real = _crop(photos[i % len(photos)], size, rng)
        fake = _generated(real, UPSAMPLERS[int(rng.integers(len(UPSAMPLERS)))], rng)
        quality = int(rng.integers(70, 96))
        for label, pixels in (("real", real), ("fake", fake)):
            data = _jpeg(pixels, quality)
            name = f"{label}/{i:04d}.jpg"
            (folder / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
    manifest = {"version": VERSION, "size": size, "seed": seed, "files": digests}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")  # last: its presence marks a complete set


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds every file of its manifest with the recorded bytes."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        return len(files) == 2 * CROPS and all(hashlib.sha256((folder / n).read_bytes()).hexdigest() == h for n, h in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _photos() -> list[np.ndarray]:
    """The shipped photographs as ``(H, W, 3)`` uint8 arrays (no download: files inside the installed packages)."""
    from importlib.resources import files

    import matplotlib
    from PIL import Image

    paths = [files("sklearn.datasets") / "images" / "china.jpg", files("sklearn.datasets") / "images" / "flower.jpg",
             Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    photos = []
    for path in paths:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            photos.append(np.asarray(image.convert("RGB")))
    return photos


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded square crop of ``photo`` (its side between ``max(size, 64)`` and the photo's short side), mirrored
    or not, resized to ``size`` (Lanczos, antialiased)."""
    from PIL import Image

    height, width = photo.shape[:2]
    short = min(height, width)
    side = int(rng.integers(min(max(size, 64), short), short + 1))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    crop = photo[top : top + side, left : left + side]
    if rng.integers(2):
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.LANCZOS))


def _generated(real: np.ndarray, upsampler: str, rng: np.random.Generator) -> np.ndarray:
    """``real`` 2x down (box filter), then 2x up by ``upsampler``, back at ``real``'s size."""
    from PIL import Image

    size = real.shape[0]
    half = max(size // 2, 1)
    small = Image.fromarray(real).resize((half, half), Image.Resampling.BOX)
    if upsampler in ("nearest", "bilinear"):
        method = Image.Resampling.NEAREST if upsampler == "nearest" else Image.Resampling.BILINEAR
        return np.asarray(small.resize((size, size), method))
    up = _transposed_conv(np.asarray(small, dtype=np.float64), rng)
    if up.shape[0] != size:  # odd sizes: one more row and column by edge copy
        up = np.pad(up, ((0, size - up.shape[0]), (0, size - up.shape[1]), (0, 0)), mode="edge")
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)


def _transposed_conv(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stride-2 transposed convolution (4x4 kernel, padding 1) of ``(h, w, 3)`` float64 ``image``: the bilinear
    kernel with seeded perturbations, each of its four phases normalised to sum 1 (brightness kept), so the
    phases differ: the checkerboard of a learned up-sampling layer."""
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    kernel = np.outer(taps, taps) * (1 + 0.25 * rng.standard_normal((4, 4)))
    for a in range(2):
        for b in range(2):
            kernel[a::2, b::2] /= kernel[a::2, b::2].sum()
    h, w = image.shape[:2]
    out = np.zeros((2 * h + 2, 2 * w + 2, image.shape[2]))
    for u in range(4):
        for v in range(4):
            out[u : u + 2 * h : 2, v : v + 2 * w : 2] += image * kernel[u, v]
    return out[1 : 2 * h + 1, 1 : 2 * w + 1]


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
