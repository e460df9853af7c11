"""A folder of images decoded once: every image resized and centre-cropped into one uint8 array on disk, found
again by what it was made from, and memory-mapped by every later run, stack member and Slurm requeue.

A prepared folder is a directory <cache>/prepared/<key>/ holding images.npy (N, C, H, W) uint8, labels.npy
(N,) int64 when the sub-folders are classes, and meta.json (what it was made from, the class names, how many
files were unreadable). The key hashes the file list (relative paths, sizes, modification times), the size
(H, W), the channels, the labels, the crop policy and FORMAT: a folder changed since it was prepared has
another key. It is written under a temporary name and renamed into place whole, so a killed preparation
leaves nothing a later run would use, and of two runs preparing the same folder at once one rename wins and
both use it. The temporary folder names its writer, so the next preparation removes it once the writer is
gone; a new copy removes the copies it supersedes (cache.py says when that is safe).

images.npy is written with plain writes, never through a writable memory map: on a full disk a write into a
map is SIGBUS, which kills the process, where a write() is an OSError that becomes one line.

A .zip of such a folder reads the same as the folder, without being extracted (its entries' sizes and CRCs
stand in for the files' sizes and times; a single top-level folder inside the archive is not a class).

Decoding (decode.py) runs in spawned worker processes over all cores; no torch here either.
"""
import hashlib
import io
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from pathlib import Path, PurePosixPath

import numpy as np

from gantrain import cache
from gantrain.data.decode import ZIP_SEP, decode_chunk, image_size
from gantrain.errors import UserError

log = logging.getLogger("gantrain")
FORMAT = 2  # 2: EXIF orientation, 16-bit grey scaled, (H, W) sizes, plain writes; older copies are made again
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHUNK = 256  # images a worker decodes per task
HEADER = 128  # bytes of images.npy's header, fixed: a smaller shape is written over it in place


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


def fingerprint(files: list[tuple], size: tuple[int, int], channels: int, classes) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "size": list(size), "channels": channels, "classes": classes,
                                   "crop": "cover, bicubic, centre"}).encode())
    for _, parts, signature in files:
        h.update(f"{'/'.join(parts)}\0{signature}\n".encode())
    return h.hexdigest()[:20]


def open_prepared(folder: Path, meta: dict) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The prepared arrays, memory-mapped, or None when the folder is incomplete, truncated or foreign."""
    try:
        images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: torch wants it writable; never written
        labels = np.load(folder / "labels.npy") if meta["classes"] else None
        shape = (meta["n"], meta["channels"], *meta["size"])
    except (OSError, ValueError, EOFError, KeyError, TypeError):
        return None
    if images.dtype != np.uint8 or images.shape != shape or (labels is not None and labels.shape != shape[:1]):
        return None
    return images, labels


def prepare_folder(root: str, size, channels: int, labels: str = "auto", workers: int | None = None):
    """(images (N, C, H, W) uint8 memory-mapped, labels (N,) or None, class names or None) of every image
    under root at `size` (a side, or (H, W)): prepared now if no prepared folder matches, else read back."""
    size = image_size(size)
    top = Path(root).expanduser()
    if not top.is_dir() and not (top.is_file() and top.suffix.lower() == ".zip"):
        raise UserError(f"data.root={top} is not a folder or a .zip; point it at a folder of images")
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 or 3, got {channels}")
    files = image_files(top)
    classes = class_names(top, files, labels)
    home = cache.cache_dir() / "prepared"
    folder = home / fingerprint(files, size, channels, classes)
    meta, found = read_back(folder)
    shown = "x".join(map(str, size))
    if found is not None:
        log.info(f"data: {meta['n']} images of {top} prepared at {shown} ({folder})")
        return (*found, classes)
    if not cache.writable("prepared"):
        raise UserError(f"the cache {cache.cache_dir()} cannot be written and holds no prepared copy of {top} at "
                        f"{shown}x{channels}; set GANTRAIN_CACHE_DIR to a writable folder")
    if folder.exists():  # there, but not whole: never trusted
        log.warning(f"data: the prepared copy {folder} is incomplete or corrupt; preparing {top} again")
        shutil.rmtree(folder, ignore_errors=True)
    else:
        new = {"root": str(top.resolve()), "size": list(size), "channels": channels, "labels": labels,
               "format": FORMAT, "created": time.time()}
        earlier = [m for m in map(cache.read_meta, home.glob("*")) if m and cache.supersedes(new, m)]
        if earlier:
            log.info(f"data: {top} changed since it was prepared ({earlier[0]['files']} files then, {len(files)} "
                     f"now); preparing it again")
    write_prepared(top, files, classes, size, channels, labels, folder, workers)
    meta, found = read_back(folder)
    if found is None:
        raise UserError(f"could not read back the prepared copy {folder}; delete it and run again")
    cache.remove_superseded(folder, meta)
    return (*found, classes)


def read_back(folder: Path) -> tuple[dict | None, tuple | None]:
    """A prepared folder's meta.json and its arrays, memory-mapped (None where missing or not whole); a copy
    found is marked used now (`gantrain cache` shows it, `prune` goes by it)."""
    meta = cache.read_meta(folder)
    found = open_prepared(folder, meta) if meta else None
    if found is not None:
        cache.touch(folder / cache.LAST_USE)
    return meta, found


def npy_header(shape: tuple[int, ...]) -> bytes:
    """images.npy's header (format 1.0) for a uint8 array of `shape`, padded to HEADER bytes, so the header of
    a smaller shape fits over it in place."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    return b"\x93NUMPY\x01\x00" + (HEADER - 10).to_bytes(2, "little") + text.ljust(HEADER - 11).encode() + b"\n"


def write_at(fd: int, data, offset: int) -> None:
    """Every byte of `data` at `offset`, or an OSError (a full disk: ENOSPC)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(28, "No space left on device")
        view, offset = view[n:], offset + n


def write_file(path: Path, data: bytes) -> None:
    """A small file written whole and synced, or an OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        write_at(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def decoded_chunks(chunks: list[list[str]], size, channels: int, workers: int):
    """(i, pixels, ok) of every chunk, as they finish: in `workers` spawned processes, else here. Closed early
    (a write failed), the pool's queued chunks are cancelled."""
    done = set()
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(decode_chunk, c, size, channels): i for i, c in enumerate(chunks)}
            for future in as_completed(futures):
                pixels, ok = future.result()
                done.add(futures[future])
                yield futures[future], pixels, ok
        except (BrokenProcessPool, RuntimeError) as e:  # workers that cannot start cost only the speed-up
            log.warning(f"data: decoding in {workers} processes failed ({type(e).__name__}); decoding here")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for i, chunk in enumerate(chunks):
        if i not in done:
            yield i, *decode_chunk(chunk, size, channels)


def compact(fd: int, ok: np.ndarray, per_image: int, shape: tuple[int, ...]) -> None:
    """Keep only the readable images of images.npy, in file order, chunk by chunk in place (never the whole
    set in memory): each kept image moves down over the unreadable ones, the header gets the smaller shape at
    the same length, and the file is cut after the last one."""
    kept = 0
    for start in range(0, len(ok), CHUNK):
        rows = np.flatnonzero(ok[start:start + CHUNK])
        n = min(CHUNK, len(ok) - start)
        block = np.frombuffer(os.pread(fd, n * per_image, HEADER + start * per_image), np.uint8)
        if len(block) != n * per_image:
            raise OSError(5, "short read while compacting")
        write_at(fd, block.reshape(n, per_image)[rows], HEADER + kept * per_image)
        kept += len(rows)
    write_at(fd, npy_header((kept, *shape[1:])), 0)
    os.ftruncate(fd, HEADER + kept * per_image)


def write_prepared(top: Path, files: list[tuple], classes, size: tuple[int, int], channels: int, labels: str,
                   folder: Path, workers: int | None) -> None:
    """Decode every file into images.npy in a temporary folder beside `folder`, then rename it into place."""
    from tqdm import tqdm

    if not files:
        raise UserError(f"no image files under {top}; point data.root at a folder of .png/.jpg images")
    home, shape = folder.parent, (len(files), channels, *size)
    per_image = channels * size[0] * size[1]
    need = HEADER + len(files) * per_image + (8 * len(files) if classes else 0)  # images and labels
    home.mkdir(parents=True, exist_ok=True)
    for dead in cache.remove_dead_temporaries(home):  # a killed preparation's folder: its disk space comes back now
        log.info(f"data: removed {dead.name}, left by a preparation that was killed")
    free = shutil.disk_usage(home).free
    if need + 2**16 > free:  # and room for meta.json and the file system's own blocks
        raise UserError(f"not enough space for the prepared copy of {top}: it needs {cache.human(need)} and {home} "
                        f"has {cache.human(free)} free; free some space there (gantrain cache lists what it holds) "
                        f"or set GANTRAIN_CACHE_DIR to a folder with room")
    tmp = home / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.mkdir()
        cache.mark_writer(tmp)
        chunks = [[path for path, _, _ in files[i:i + CHUNK]] for i in range(0, len(files), CHUNK)]
        workers = min(workers or os.cpu_count() or 1, len(chunks))
        log.info(f"data: preparing {len(files)} images of {top} at {'x'.join(map(str, size))} once, in {workers} process(es)")
        ok = np.zeros(len(files), bool)
        fd = os.open(tmp / "images.npy", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            write_at(fd, npy_header(shape), 0)
            with tqdm(total=len(files), unit="img", desc="prepare", disable=None) as bar, \
                    closing(decoded_chunks(chunks, size, channels, workers)) as decoded:
                for i, pixels, read in decoded:
                    write_at(fd, pixels, HEADER + i * CHUNK * per_image)
                    ok[i * CHUNK:i * CHUNK + len(read)] = read
                    bar.update(len(read))
            broken = int((~ok).sum())
            if broken == len(files):
                raise UserError(f"no readable images under {top} ({len(files)} image files, all unreadable); "
                                f"point data.root at a folder of .png/.jpg images")
            if broken:
                log.warning(f"skipped {broken} unreadable image file(s) under {top}")
                compact(fd, ok, per_image, shape)
            os.fsync(fd)
        finally:
            os.close(fd)
        if classes:
            index = {name: i for i, name in enumerate(classes)}
            buffer = io.BytesIO()
            np.save(buffer, np.array([index[parts[0]] for _, parts, _ in files], np.int64)[ok])
            write_file(tmp / "labels.npy", buffer.getvalue())
        meta = {"format": FORMAT, "root": str(top.resolve()), "files": len(files), "n": len(files) - broken,
                "unreadable": broken, "size": list(size), "channels": channels, "labels": labels, "classes": classes,
                "created": time.time()}
        write_file(tmp / "meta.json", json.dumps(meta).encode())
        (tmp / cache.WRITER).unlink()
        try:
            os.rename(tmp, folder)  # whole or not at all; another run that got there first wins
        except OSError:
            if cache.read_meta(folder) is None:  # a broken leftover, not a winner: replace it
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    except OSError as e:
        raise UserError(f"could not write the prepared copy of {top} in {home} ({e.strerror or e}; it needs "
                        f"{cache.human(need)}); free some space there (gantrain cache lists what it holds) or set "
                        f"GANTRAIN_CACHE_DIR to another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
