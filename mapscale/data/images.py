"""Images: decoded and transformed per item (`ImageTransform`, `ImageDataset`, which serve image folders and image
columns read through ``datasets``, `mapscale.data.tables`), segmentation folders of images and masks
(``data.name=segfolder``), and the training-time shift augmentation (`shifted_images`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mapscale.data.splits import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD, DataError, DataSplits, cap, normalisation, split_indices

if TYPE_CHECKING:
    import datasets
    from PIL import Image as PILImage

    from mapscale.data.section import DataSection


def shifted_images(images: Tensor, indices: Tensor, max_shift: int, key: int) -> Tensor:
    """``images`` (``(N, C, H, W)``) each moved by up to ``max_shift`` pixels in each direction, with zero fill
    (``torchvision.transforms.v2`` pad, then crop back to ``H x W``); example ``i``'s shift is a hash of
    (``key``, ``indices[i]``), the same on any rank and device."""
    from torchvision.transforms.v2 import functional as TF

    if images.dim() != 4:
        raise DataError(f"data.augment_shift moves images; these inputs have shape {tuple(images.shape[1:])}")
    span = 2 * max_shift + 1
    mixed = (indices.to(torch.int64) * 0x9E3779B1 + (key & 0x7FFFFFFF)) & 0x7FFFFFFF  # below 2**62 before the mask
    mixed = ((mixed ^ (mixed >> 15)) * 0x2C1B3C6D) & 0x7FFFFFFF
    tops, lefts = (mixed % span).tolist(), ((mixed >> 12) % span).tolist()
    padded = TF.pad(images, [max_shift] * 4)
    height, width = images.shape[-2:]
    return torch.stack([TF.crop(image, top, left, height, width) for image, top, left in zip(padded, tops, lefts)])



# -- segmentation: image and mask folders ------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def build_segfolder(section: DataSection, task: str, cache_dir=None) -> DataSplits:
    """Segmentation pairs ``path/images/<stem>.png|jpg`` + ``path/masks/<stem>.png``.

    A mask is a single-channel (``L`` or palette ``P``) PNG whose pixel values are class ids, 255 marking
    pixels to ignore. ``num_classes`` is inferred as the largest class id over all masks (255 left out) + 1,
    which reads every mask once here; a class that never occurs above the largest id is invisible to it.
    Images are converted to ``data.channels`` (default 3) and resized bilinearly, masks by nearest neighbour,
    to ``data.image_size`` when set (else each mask must match its image's size). Normalisation as for
    ``imagefolder``. The split is a seeded random one by ``test_size`` (not stratified); ``max_examples`` caps
    each split.
    """
    expects = "a folder holding images/ (*.png or *.jpg) and masks/ (one <image stem>.png of class ids each)"
    if section.path is None:
        raise DataError(f"data.path is not set: data.name=segfolder reads local files; set data.path to {expects}")
    root = Path(section.path).expanduser()
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"data.path {root} has no {folder.name}/ folder: segfolder expects {expects}")
    unused = {"input_column": section.input_column, "target_column": section.target_column,
              "feature_columns": section.feature_columns}
    if any(v is not None for v in unused.values()):
        names = ", ".join(f"data.{k}" for k, v in unused.items() if v is not None)
        raise DataError(f"{names} do not apply to segfolder (images/ and masks/ folders); remove them")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{image_dir} holds no .png or .jpg images: segfolder expects {expects}")
    masks = [mask_dir / f"{p.stem}.png" for p in images]
    missing = [m.name for m in masks if not m.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(images)} images in {image_dir} have no mask in {mask_dir} "
            f"(missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
            "each image needs masks/<stem>.png"
        )
    largest = -1
    for mask in masks:
        ids = np.unique(_read_mask(mask))
        ids = ids[ids != IGNORE_INDEX]
        largest = max(largest, int(ids.max()) if len(ids) else -1)
    if largest < 0:
        raise DataError(f"every mask in {mask_dir} is all 255 (ignored): there is no class to learn")

    train_idx, test_idx = split_indices(len(images), section.test_size, section.split_seed, None)
    train_idx, test_idx = cap(train_idx, section.max_examples), cap(test_idx, section.max_examples)
    channels = section.channels or 3
    defaults = ([MNIST_MEAN], [MNIST_STD]) if channels == 1 else (list(IMAGENET_MEAN), list(IMAGENET_STD))
    transform = ImageTransform(channels, section.image_size, *normalisation(section, channels, *defaults))

    def pairs(idx: np.ndarray) -> _SegmentationDataset:
        return _SegmentationDataset([images[i] for i in idx], [masks[i] for i in idx], transform, section.image_size)

    train, test = pairs(train_idx), pairs(test_idx)
    if section.image_size is not None:
        input_shape: tuple[int, ...] = (channels, section.image_size, section.image_size)
    else:
        input_shape = tuple(train[0][0].shape)
    return DataSplits(train, test, largest + 1, input_shape)


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as mask:
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(
                f"mask {path} has mode {mask.mode}; masks must be single-channel PNGs whose values are class ids"
            )
        return np.array(mask)


class _SegmentationDataset(Dataset):
    """Reads one image and its mask per item: ``(float32 (C, H, W), int64 (H, W))``."""

    def __init__(self, images: list[Path], masks: list[Path], transform: ImageTransform, size: int | None) -> None:
        self.images, self.masks, self.transform, self.size = images, masks, transform, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        with Image.open(self.images[index]) as image:
            pixels = self.transform(image)
        mask = Image.fromarray(_read_mask(self.masks[index]))
        if self.size is not None:
            mask = mask.resize((self.size, self.size), Image.Resampling.NEAREST)  # nearest: ids stay ids
        target = torch.from_numpy(np.array(mask).astype(np.int64))
        if target.shape != pixels.shape[1:]:
            raise DataError(
                f"mask {self.masks[index]} is {tuple(target.shape)} but its image is {tuple(pixels.shape[1:])} "
                "(height, width); set data.image_size to resize both, or fix the mask"
            )
        return pixels, target



# -- one image per item ---------------------------------------------------------------------------------------


class ImageTransform:
    """PIL image -> normalised float32 ``(channels, H, W)`` tensor, resized to ``size`` x ``size`` if given."""

    def __init__(self, channels: int, size: int | None, mean: Tensor, std: Tensor) -> None:
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size
        self.mean, self.std = mean, std

    def __call__(self, image: PILImage.Image) -> Tensor:
        return self.normalise(self.pixels(image))

    def pixels(self, image: PILImage.Image) -> Tensor:
        """The decoded, converted and resized image: uint8 ``(channels, H, W)``."""
        from PIL import Image

        image = image.convert(self.mode)
        if self.size is not None and image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
        return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)

    def normalise(self, pixels: Tensor) -> Tensor:
        """uint8 ``(..., channels, H, W)`` pixels (one image or a batch: the same values element by element) to
        normalised float32."""
        return (pixels.float().div_(255.0) - self.mean.to(pixels.device)) / self.std.to(pixels.device)


class ImageDataset(Dataset):
    """Decodes and transforms one image per item, so image folders larger than memory work; targets are
    held as a tensor."""

    def __init__(
        self, images: datasets.Dataset, column: str, targets: Tensor, transform: Callable[[Any], Tensor]
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.column, self.targets, self.transform = images, column, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[int(index)][self.column]), self.targets[index]

    def pixels_item(self, index: int) -> tuple[Tensor, Tensor]:
        """Item ``index`` before normalisation, uint8 (a quarter of the bytes from a loader's worker processes);
        `finish_batch` of a batch of them equals the batch of items."""
        return self.transform.pixels(self.images[int(index)][self.column]), self.targets[index]

    def finish_batch(self, inputs: Tensor) -> Tensor:
        """A batch of `pixels_item` inputs normalised (on the device they are on)."""
        return self.transform.normalise(inputs)

    @property
    def loads_pixels(self) -> bool:
        """Whether loaders may read `pixels_item` and `finish_batch` (the transform is an `ImageTransform`)."""
        return isinstance(self.transform, ImageTransform)
