"""gantrain prepare: a folder of images decoded once, in parallel, into the prepared copy that every later
`gantrain train data=folder` with the same data.* settings reads back in seconds (data/prepared.py)."""
import logging

from gantrain.cache import cache_dir
from gantrain.data.prepared import image_size, prepare_folder
from gantrain.errors import UserError
from gantrain.processes import console_logging

log = logging.getLogger("gantrain")


def prepare_command(cfg) -> None:
    console_logging()
    if cfg.data.name != "folder":
        raise UserError(f"gantrain prepare takes data=folder (a folder of images), got data={cfg.data.name}, "
                        f"which gantrain train reads directly")
    if not isinstance(cfg.workers, int) or cfg.workers < 0:
        raise UserError(f"workers must be an integer >= 0 (0 = one per core), got {cfg.workers!r}")
    images, _, classes = prepare_folder(cfg.data.root, cfg.data.image_size, cfg.data.channels, cfg.data.labels,
                                        workers=cfg.workers or None)
    height, width = image_size(cfg.data.image_size)
    log.info(f"prepared: {len(images)} images of {height}x{width}x{cfg.data.channels}, "
             f"{images.nbytes / 2**20:.0f} MiB as uint8, "
             + (f"{len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})" if classes else "no labels")
             + f", under {cache_dir() / 'prepared'}; gantrain train data=folder data.root={cfg.data.root} reads it back")
