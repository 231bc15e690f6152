"""Image files opened safely and decoded with Pillow (runtime.preprocess turns them into the model's input)."""

from __future__ import annotations

import bisect
import os
import stat
from array import array
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, overload

import numpy as np

from gap_deploy.runtime.errors import ArtifactError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def collect_images(paths, *, recursive: bool = False) -> list[Path]:
    """Files as given; folders expanded to their image files (by suffix), sorted, and their sub-folders' too when
    ``recursive``; a glob pattern (``photos/**/*.jpg``, quoted so the shell leaves it) expanded as Python's glob
    does with ``**`` (the same rule gap-run --ray follows)."""
    return [Path(p) for p in image_paths(paths, recursive=recursive)]


class PathList(Sequence[str]):
    """Paths held compactly for a long run: each folder's path once, and its file names packed into one string
    (NUL-separated: no file name holds NUL) with an array of where each starts. 100,000 names cost their
    characters plus 4 bytes each, where a list of strings costs about 60 bytes more per path (measured: 7.9 MB
    for a folder of 100,000 images as strings); gap-run keeps its list for the whole run. Indexing rebuilds the
    path as ``os.path.join(folder, name)`` spells it, so it equals what os.scandir's ``entry.path`` was."""

    def __init__(self) -> None:
        self._chunks: list[tuple[str, str, array]] = []  # (prefix, names joined by NUL, start of each name)
        self._ends = array("Q")  # the number of paths up to and including each chunk

    def add(self, prefix: str, names: list[str]) -> None:
        """Append ``prefix + name`` for each name, in order (``prefix`` is a folder with its separator, or "")."""
        if not names:
            return
        starts = array("I")
        position = 0
        for name in names:
            starts.append(position)
            position += len(name) + 1
        if position > 0xFFFFFFFF:  # an offset must fit the array's type: split the folder's names in two
            half = len(names) // 2
            self.add(prefix, names[:half])
            self.add(prefix, names[half:])
            return
        self._chunks.append((prefix, "\0".join(names), starts))
        self._ends.append((self._ends[-1] if self._ends else 0) + len(names))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("PathList index out of range")
        chunk = bisect.bisect_right(self._ends, index)
        prefix, text, starts = self._chunks[chunk]
        local = index - (self._ends[chunk - 1] if chunk else 0)
        end = starts[local + 1] - 1 if local + 1 < len(starts) else len(text)
        return prefix + text[starts[local]:end]


def image_paths(paths, *, recursive: bool = False) -> PathList:
    """:func:`collect_images` as a :class:`PathList` of strings: a Path object costs several times a string's
    memory, and a string several times a packed name, which shows when a folder holds 100,000 images (gap-run
    keeps the list for its whole run)."""
    found = PathList()
    for item in map(str, paths):
        if os.path.isdir(item):
            _images_in(item, recursive, found)
        elif not os.path.exists(item) and is_glob(item):
            found.add("", [str(p) for p in glob_images(item)])
        else:
            found.add("", [item])
    return found


def is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def glob_images(pattern: str) -> list[Path]:
    """The image files a glob pattern matches (``**`` crosses folders), sorted, each file once: Python's glob
    follows links to folders, so a link loop would list a file under ever longer paths (until the OS's link
    limit); the shortest path to each real file is kept."""
    import glob

    matches = [m for m in glob.glob(pattern, recursive=True)
               if Path(m).suffix.lower() in IMAGE_SUFFIXES and not os.path.isdir(m)]
    first: dict[str, str] = {}
    for match in sorted(matches, key=lambda m: (m.count(os.sep), m)):
        first.setdefault(os.path.realpath(match), match)
    return [Path(m) for m in sorted(first.values())]


def _images_in(folder: str, recursive: bool, found: PathList) -> None:
    """Add the folder's image paths (by suffix), sorted, then each sub-folder's (sorted) when ``recursive``, to
    ``found``: only the names are listed and sorted (short strings), then packed. Links to folders are not
    followed, so a loop cannot hang the walk; an entry with an image's name that is no regular file (a FIFO, a
    dangling link) is listed, so that its reader reports it instead of it vanishing."""
    names: list[str] = []
    folders: list[str] = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.is_dir():
                    if recursive and not entry.is_symlink():
                        folders.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    names.append(entry.name)
    except OSError as exc:
        raise ArtifactError(f"cannot read image folder {folder}: {exc.strerror or exc}.",
                            hint="give a folder you can read (chmod, or run as its owner).") from None
    names.sort()
    found.add(os.path.join(folder, ""), names)
    del names
    for sub in sorted(folders):
        _images_in(sub, True, found)


def no_images_message(paths, *, recursive: bool = False) -> str:
    """What to say when ``paths`` hold no image files: which suffixes were looked for, and -r when a folder
    holds folders (a class-per-folder tree)."""
    text = f"no image files in {', '.join(map(str, paths))} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})."
    if not recursive:
        def holds_folders(path: Path) -> bool:
            try:
                return path.is_dir() and any(e.is_dir() for e in path.iterdir())
            except OSError:
                return False
        nested = [p for p in map(Path, paths) if holds_folders(p)]
        if nested:
            text += f" {nested[0]} holds folders: add -r/--recursive to take the images inside them."
    return text


#: Pillow modes that hold more than 8 bits per pixel, and the full-scale value of each
_HIGH_DEPTH = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


@contextmanager
def open_regular(path: str | Path):
    """An image file opened for reading, refused unless it is a regular file."""
    path = Path(path)
    # One step, on the descriptor: opened without blocking (a FIFO opens at once with O_NONBLOCK), then checked. A
    # check of the path followed by an open of the path could be raced: a regular file when checked, a FIFO when
    # opened, and the decode thread blocked for ever.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArtifactError(f"image {path} does not exist.") from None
    except IsADirectoryError:
        raise ArtifactError(f"image {path} is a directory.") from None
    except OSError as exc:
        raise ArtifactError(f"image {path} cannot be read: {exc.strerror or exc}.") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"image {path} is a directory.")
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"image {path} is not a regular file (a pipe, device or socket); it was not read.")
        handle = os.fdopen(fd, "rb")
        fd = -1
    finally:
        if fd >= 0:
            os.close(fd)
    with handle:
        yield handle


def decoded(source, channels: int, name: str, space: str, draft=None,
            output_size=None, orientation: str = "exif") -> tuple[Any, tuple[int, int]]:
    """Decode an image file for runtime.preprocess: ``(image, (width, height))``, the file's own size
    and its pixels as an 8-bit PIL image in L/RGB/RGBA (space "uint8") or (H, W, channels) float32 in [0, 1]
    (space "float"). ``draft(width, height)`` may name a smaller (W, H) a JPEG can be decoded at (fast
    decoding); ``output_size(width, height)`` gives the tensor's (H, W), whose memory is checked first.

    ``orientation`` "exif" turns the image as its EXIF Orientation tag says (what a phone's photo viewer shows;
    phones store most photos sideways with the tag set), "ignore" keeps the stored pixels (what
    ``Image.open(f).convert("RGB")`` gives). Sizes are the turned image's."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from gap_deploy.runtime.limits import check_memory

    if channels not in _MODES:
        raise ArtifactError(f"cannot turn images into {channels}-channel input; supported: 1, 3 or 4 channels.")
    try:
        with Image.open(source) as image:
            turn = _exif_orientation(image) if orientation == "exif" else 1
            width, height = image.size if turn < 5 else image.size[::-1]  # 5-8 swap the sides
            check_memory((1, channels, height, width), f"image {name}", activations=False)
            out = output_size(width, height) if output_size else (height, width)
            check_memory((1, channels, *out), f"image {name}" + (" at its own size" if out == (height, width)
                                                                 else " resized to"))
            smaller = draft(width, height) if draft is not None and image.format == "JPEG" else None
            if smaller is not None:
                image.draft(None, smaller if turn < 5 else smaller[::-1])  # libjpeg: 1/2, 1/4, 1/8, >= smaller
            image.load()  # decode now, so a truncated file fails here with its name
            if turn != 1:
                image = ImageOps.exif_transpose(image)
            if space == "uint8":
                return _as_8bit(image, channels, name), (width, height)
            return _pixels(image, channels, name), (width, height)
    except Image.DecompressionBombError as exc:
        raise ArtifactError(f"{name} is refused as a decompression bomb: {exc}",
                            hint="downscale the image first if it is genuine.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).replace(repr(source), repr(name)) if not isinstance(source, (str, Path)) else str(exc)
        raise ArtifactError(f"{name} is not a readable image: {reason}") from None


def header_size(path: str | Path, *, orientation: str = "exif") -> tuple[int, int]:
    """An image file's (width, height) from its header, nothing decoded; turned as its EXIF Orientation says
    when ``orientation`` is "exif" (what the preprocessing contract does before resizing)."""
    with open_regular(path) as handle:
        return header_size_of(handle, str(path), orientation=orientation)


def header_size_of(source, name: str, *, orientation: str = "exif") -> tuple[int, int]:
    """:func:`header_size` for an open binary file (``name`` for messages)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            turn = _exif_orientation(image) if orientation == "exif" else 1
            width, height = image.size
    except Image.DecompressionBombError:
        raise ArtifactError(f"{name} is refused as a decompression bomb (its header's size).") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ArtifactError(f"{name} is not a readable image: {exc}") from None
    return (height, width) if turn >= 5 else (width, height)


#: EXIF's Orientation tag (TIFF tag 274)
_ORIENTATION = 0x0112


def _exif_orientation(image) -> int:
    """The EXIF Orientation of an opened image, 1 (as stored) when it has none or an invalid one."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block is no reason to refuse the pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _as_8bit(image, channels: int, path):
    """An 8-bit PIL image in the model's mode; deeper images are scaled by their depth and rounded."""
    from PIL import Image

    if image.mode not in _HIGH_DEPTH and image.mode not in ("I", "F"):
        return image.convert(_MODES[channels])
    pixels = np.rint(_pixels(image, channels, path) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, _MODES[channels])


def as_float(image) -> np.ndarray:
    """An 8-bit PIL image as (H, W, C) float32 in [0, 1]."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _pixels(image, channels: int, path) -> np.ndarray:
    """(H, W, channels) float32 in [0, 1]."""
    mode = image.mode
    if mode not in _HIGH_DEPTH and mode not in ("I", "F"):
        pixels = np.asarray(image.convert(_MODES[channels]), dtype=np.float32) / 255.0
        return pixels[:, :, None] if pixels.ndim == 2 else pixels  # "L" (1 channel) decodes to H x W
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if finite.size != values.size:
        raise ArtifactError(f"{path} holds NaN or infinite pixel values.")
    if mode in _HIGH_DEPTH:
        scale = _HIGH_DEPTH[mode]
    elif low >= 0 and high <= 1 and mode == "F":
        scale = 1.0
    elif low >= 0 and high <= 255:
        scale = 255.0
    elif low >= 0 and high <= 65535:
        scale = 65535.0  # 16-bit PNGs open as 32-bit integer images
    else:
        raise ArtifactError(f"{path} has pixel values from {low:g} to {high:g}, which is no pixel range this tool "
                            "knows (0-1, 0-255 or 0-65535).", hint="convert it to an 8- or 16-bit image.")
    gray = (values / scale).astype(np.float32)[:, :, None]
    if channels == 1:
        return gray
    rgb = np.repeat(gray, 3, axis=2)
    return rgb if channels == 3 else np.concatenate([rgb, np.ones_like(gray)], axis=2)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
