"""Decoding one image as a viewer shows it, at the size asked: EXIF orientation, 16-bit greyscale, CMYK and
palettes made 8-bit L or RGB, then the centred region of the size's aspect resized to it. Run in prepare's
spawned worker processes: no torch here, so they start fast.

JPEGs are decoded at a reduced size (Pillow's draft: the DCT scaled by 1/2, 1/4 or 1/8, never below twice
the size asked, as Pillow's own reducing_gap), which is most of the speed: the full-size pixels are never made.
"""
import io
import zipfile

import numpy as np

from gantrain.errors import UserError

SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # Pillow's modes of 16-bit greyscale (PNG, TIFF)
ORIENTATION = 0x0112  # the EXIF tag
ZIP_SEP = "::"  # an image inside a zip: "<archive>::<entry>"


def image_size(value) -> tuple[int, int]:
    """data.image_size as (H, W): an int is a square, [H, W] a rectangle."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    try:
        h, w = (int(v) for v in value)
        if h > 0 and w > 0 and [h, w] == [v for v in value]:
            return h, w
    except (TypeError, ValueError):
        pass
    raise UserError(f"data.image_size must be a side (e.g. 64) or [height, width] (e.g. [64,48]), got {value!r}")


def as_shown(img, mode: str):
    """An opened image as a viewer shows it, in `mode` (L or RGB): turned upright by its EXIF orientation (a
    phone stores an upright photo sideways and says so), 16-bit greyscale scaled to 8 bits by a fixed 255/65535
    (not stretched per image: 12-bit data stored in 16 bits comes out dark, as it is), anything else converted
    by Pillow (CMYK, palettes, alpha dropped; 48-bit RGB keeps each channel's high byte)."""
    from PIL import Image, ImageOps

    if img.getexif().get(ORIENTATION, 1) != 1:  # reading the tag is cheap; a transpose copies the image
        img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT:
        grey = np.asarray(img, dtype=np.float64).clip(0, 65535) * (255 / 65535)
        img = Image.fromarray(grey.round().astype(np.uint8), "L")
    return img if img.mode == mode else img.convert(mode)  # a converted copy costs 15% of a decode


def cover_box(image: tuple[int, int], out: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of an image (width, height) with the aspect of `out` (width, height), as large as fits:
    what remains of it once resized to cover `out` and centre-cropped (left, top, right, bottom)."""
    scale = max(out[0] / image[0], out[1] / image[1])
    crop_w, crop_h = out[0] / scale, out[1] / scale
    left, top = (image[0] - crop_w) / 2, (image[1] - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def decode(path, size: tuple[int, int], channels: int) -> np.ndarray | None:
    """One image (a path or an open file) as it is shown: the centred region of H x W's aspect, as large as fits,
    resized to H x W (bicubic, antialiased; aspect kept exactly); (C, H, W) uint8, or None when unreadable."""
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(path) as img:
            mode = "L" if channels == 1 else "RGB"
            full = img.size
            img.draft(mode, (2 * max(h, w), 2 * max(h, w)))  # JPEG: decode at >= 2x the size asked (Pillow's reducing_gap)
            scale_x, scale_y = img.size[0] / full[0], img.size[1] / full[1]  # the reduced decode's, per axis
            turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
            img = as_shown(img, mode)
            if turned:
                full, scale_x, scale_y = full[::-1], scale_y, scale_x
            box = cover_box(full, (w, h))  # in full-size pixels; mapped onto the reduced decode, whose geometry is the same
            box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
            pixels = np.asarray(img.resize((w, h), Image.BICUBIC, box=box))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_chunk(paths: list[str], size: tuple[int, int], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of one task, (n, C, H, W) uint8 (zeros where unreadable), and which ones were read."""
    out, ok = np.zeros((len(paths), channels, *size), np.uint8), np.zeros(len(paths), bool)
    archives = {}
    try:
        for i, path in enumerate(paths):
            if ZIP_SEP in path:  # one open archive per task, read entry by entry
                name, entry = path.split(ZIP_SEP, 1)
                archive = archives.get(name) or archives.setdefault(name, zipfile.ZipFile(name))
                try:
                    with archive.open(entry) as f:
                        pixels = decode(io.BytesIO(f.read()), size, channels)
                except (zipfile.BadZipFile, OSError, KeyError):
                    pixels = None
            else:
                pixels = decode(path, size, channels)
            if pixels is not None:
                out[i], ok[i] = pixels, True
    finally:
        for archive in archives.values():
            archive.close()
    return out, ok
