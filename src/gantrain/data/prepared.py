"""A folder of images decoded once: every image resized and centre-cropped into one uint8 array on disk, found
again by what it was made from, and memory-mapped by every later run, stack member and Slurm requeue.

A prepared folder is a directory <cache>/prepared/<key>/ holding images.npy (N, C, S, S) uint8, labels.npy
(N,) int64 when the sub-folders are classes, and meta.json (what it was made from, the class names, how many
files were unreadable). The key hashes the file list (relative paths, sizes, modification times), the side,
the channels, the labels, the crop policy and FORMAT: a folder changed since it was prepared has another key.
It is written under a temporary name and renamed into place whole, so a killed preparation leaves nothing a
later run would use, and of two runs preparing the same folder at once one rename wins and both use it.

A .zip of such a folder reads the same as the folder, without being extracted (its entries' sizes and CRCs
stand in for the files' sizes and times; a single top-level folder inside the archive is not a class).

Decoding runs in spawned worker processes over all cores; this module imports no torch, so they start fast.
JPEGs are decoded at a reduced size (Pillow's draft: the DCT scaled by 1/2, 1/4 or 1/8, never below the
side asked for), which is most of the speed: the full-size pixels are never made.
"""
import hashlib
import io
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path, PurePosixPath

import numpy as np

from gantrain.cache import cache_dir
from gantrain.errors import UserError

log = logging.getLogger("gantrain")
FORMAT = 1  # bump when decoding or the layout changes: older prepared folders are then made again
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHUNK = 256  # images a worker decodes per task


ZIP_SEP = "::"  # an image inside a zip: "<archive>::<entry>"


def image_files(top: Path) -> list[tuple[str, tuple[str, ...], str]]:
    """Every image under `top` (a folder, or a .zip of one) in path order: (what decode() opens, its path
    below the top as parts, its size and time or CRC)."""
    if top.is_dir():
        files = sorted(p for p in top.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        stats = [f.stat() for f in files]  # once per file: a folder can hold 10^5-10^6 of them
        return [(str(f), f.relative_to(top).parts, f"{st.st_size}:{st.st_mtime_ns}") for f, st in zip(files, stats)]
    try:
        with zipfile.ZipFile(top) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir() and PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES]
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"data.root={top} is neither a folder nor a readable .zip ({e}); point it at a folder of images") from None
    parts = [PurePosixPath(i.filename).parts for i in infos]
    if parts and all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]  # the archive of a folder: its top folder is the folder itself
    entries = [(f"{top}{ZIP_SEP}{i.filename}", p, f"{i.file_size}:{i.CRC}") for i, p in zip(infos, parts)]
    return sorted(entries, key=lambda e: e[1])


def class_names(top: Path, files: list[tuple], labels: str) -> list[str] | None:
    """The classes (sub-folder names, sorted, as torchvision's ImageFolder) or None for no labels.
    labels=auto: classes when every image sits in a sub-folder and there are at least two of them."""
    if labels not in ("auto", "folders", "none"):
        raise UserError(f"data.labels must be auto, folders or none, got {labels!r}")
    if labels == "none":
        return None
    parts = [p for _, p, _ in files]
    names = sorted({p[0] for p in parts if len(p) > 1})
    if all(len(p) > 1 for p in parts) and len(names) >= 2:
        return names
    if labels == "folders":
        raise UserError(f"data.labels=folders needs one sub-folder per class under {top} (found {len(names)} "
                        f"sub-folder(s), {sum(len(p) == 1 for p in parts)} image(s) at its top); "
                        f"arrange the images as root/<class>/<image> or set data.labels=none")
    return None


def decode(path, side: int, channels: int) -> np.ndarray | None:
    """One image (a path or an open file): the shorter side resized to `side` (bicubic, antialiased), then
    centre-cropped to side x side; (C, side, side) uint8, or None when the file cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = "L" if channels == 1 else "RGB"
            img.draft(mode, (side, side))  # JPEG: decode at >= side, much faster
            if img.mode != mode:  # a converted copy costs 15% of a decode when it is already that mode
                img = img.convert(mode)
            w, h = img.size
            scale = side / min(w, h)
            w2, h2 = max(side, round(w * scale)), max(side, round(h * scale))
            img = img.resize((w2, h2), Image.BICUBIC)
            left, top = (w2 - side) // 2, (h2 - side) // 2
            pixels = np.asarray(img.crop((left, top, left + side, top + side)))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_chunk(paths: list[str], side: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of one task, (n, C, side, side) uint8 (zeros where unreadable), and which ones were read."""
    out, ok = np.zeros((len(paths), channels, side, side), np.uint8), np.zeros(len(paths), bool)
    archives = {}
    try:
        for i, path in enumerate(paths):
            if ZIP_SEP in path:  # one open archive per task, read entry by entry
                name, entry = path.split(ZIP_SEP, 1)
                archive = archives.get(name) or archives.setdefault(name, zipfile.ZipFile(name))
                try:
                    with archive.open(entry) as f:
                        pixels = decode(io.BytesIO(f.read()), side, channels)
                except (zipfile.BadZipFile, OSError, KeyError):
                    pixels = None
            else:
                pixels = decode(path, side, channels)
            if pixels is not None:
                out[i], ok[i] = pixels, True
    finally:
        for archive in archives.values():
            archive.close()
    return out, ok


def fingerprint(files: list[tuple], side: int, channels: int, classes) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "side": side, "channels": channels, "classes": classes,
                                   "crop": "short-side bicubic, centre"}).encode())
    for _, parts, signature in files:
        h.update(f"{'/'.join(parts)}\0{signature}\n".encode())
    return h.hexdigest()[:20]


def open_prepared(folder: Path, meta: dict) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The prepared arrays, memory-mapped, or None when the folder is incomplete, truncated or foreign."""
    try:
        images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: torch wants it writable; never written
        labels = np.load(folder / "labels.npy") if meta["classes"] else None
    except (OSError, ValueError, EOFError):
        return None
    n, shape = meta["n"], (meta["channels"], meta["side"], meta["side"])
    if images.dtype != np.uint8 or images.shape != (n, *shape) or (labels is not None and labels.shape != (n,)):
        return None
    return images, labels


def prepare_folder(root: str, side: int, channels: int, labels: str = "auto", workers: int | None = None):
    """(images (N, C, side, side) uint8 memory-mapped, labels (N,) or None, class names or None) of every image
    under root: prepared now if no prepared folder matches, else read back in a moment."""
    top = Path(root).expanduser()
    if not top.is_dir() and not (top.is_file() and top.suffix.lower() == ".zip"):
        raise UserError(f"data.root={top} is not a folder or a .zip; point it at a folder of images")
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 or 3, got {channels}")
    files = image_files(top)
    classes = class_names(top, files, labels)
    key = fingerprint(files, side, channels, classes)
    home = cache_dir() / "prepared"
    folder = home / key
    meta, found = read_back(folder)
    if found is not None:
        log.info(f"data: {meta['n']} images of {top} prepared at {side}x{side} ({folder})")
        return (*found, classes)
    if folder.exists():  # there, but not whole: never trusted
        log.warning(f"data: the prepared copy {folder} is incomplete or corrupt; preparing {top} again")
        shutil.rmtree(folder, ignore_errors=True)
    else:
        earlier = [m for m in (read_meta(f) for f in home.glob("*")) if m and m.get("root") == str(top.resolve())
                   and (m["side"], m["channels"]) == (side, channels)]
        if earlier:
            log.info(f"data: {top} changed since it was prepared ({earlier[0]['files']} files then, {len(files)} now); preparing it again")
    write_prepared(top, files, classes, side, channels, folder, workers)
    _, found = read_back(folder)
    if found is None:
        raise UserError(f"could not read back the prepared copy {folder}; delete it and run again")
    return (*found, classes)


def read_back(folder: Path) -> tuple[dict | None, tuple | None]:
    """A prepared folder's meta.json and its arrays, memory-mapped (None where missing or not whole)."""
    meta = read_meta(folder)
    return meta, open_prepared(folder, meta) if meta else None


def read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def write_prepared(top: Path, files: list[tuple], classes, side: int, channels: int, folder: Path,
                   workers: int | None) -> None:
    """Decode every file into images.npy in a temporary folder beside `folder`, then rename it into place."""
    from tqdm import tqdm

    if not files:
        raise UserError(f"no image files under {top}; point data.root at a folder of .png/.jpg images")
    tmp = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.mkdir(parents=True)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(files), channels, side, side))
        ok = np.zeros(len(files), bool)
        chunks = [[path for path, _, _ in files[i:i + CHUNK]] for i in range(0, len(files), CHUNK)]
        workers = min(workers or os.cpu_count() or 1, len(chunks))
        log.info(f"data: preparing {len(files)} images of {top} at {side}x{side} once, in {workers} process(es)")
        done = set()  # chunks decoded
        with tqdm(total=len(files), unit="img", desc="prepare", disable=None) as bar:
            if workers > 1:
                try:
                    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                        futures = {pool.submit(decode_chunk, c, side, channels): i for i, c in enumerate(chunks)}
                        for future in as_completed(futures):
                            i = futures[future]
                            images[i * CHUNK:(i + 1) * CHUNK], ok[i * CHUNK:(i + 1) * CHUNK] = future.result()
                            done.add(i)
                            bar.update(len(chunks[i]))
                except (BrokenProcessPool, RuntimeError) as e:  # workers that cannot start cost only the speed-up
                    log.warning(f"data: decoding in {workers} processes failed ({type(e).__name__}); decoding here")
            for i, chunk in enumerate(chunks):
                if i not in done:
                    images[i * CHUNK:(i + 1) * CHUNK], ok[i * CHUNK:(i + 1) * CHUNK] = decode_chunk(chunk, side, channels)
                    bar.update(len(chunk))
        broken = int((~ok).sum())
        if broken == len(files):
            raise UserError(f"no readable images under {top} ({len(files)} image files, all unreadable); "
                            f"point data.root at a folder of .png/.jpg images")
        if broken:
            log.warning(f"skipped {broken} unreadable image file(s) under {top}")
            np.save(tmp / "kept.npy", images[ok])  # the readable ones only, in file order
            del images
            os.replace(tmp / "kept.npy", tmp / "images.npy")
        else:
            images.flush()
            del images
        if classes:
            index = {name: i for i, name in enumerate(classes)}
            np.save(tmp / "labels.npy", np.array([index[parts[0]] for _, parts, _ in files], np.int64)[ok])
        meta = {"format": FORMAT, "root": str(top.resolve()), "files": len(files), "n": len(files) - broken,
                "unreadable": broken, "side": side, "channels": channels, "classes": classes}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)  # whole or not at all; another run that got there first wins
        except OSError:
            if read_meta(folder) is None:  # a broken leftover, not a winner: replace it
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    except OSError as e:
        raise UserError(f"could not write the prepared copy of {top} under {folder.parent} ({e.strerror or e}); "
                        f"free some space there or set GANTRAIN_CACHE_DIR to another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
