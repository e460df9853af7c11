"""report.html in a real browser (Debian's chromium, headless): the page renders every job's sample grid from
the file alone, and sorts its table by a column."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import missing, run_cli, write_mnist

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 160, 0)]  # one solid grid per job, to find on screen


def browser(tmp_path, *args) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        missing("no chromium on this machine (Debian: apt-get install chromium); the page is checked without it")
    done = subprocess.run([CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "--dump-dom" not in args:
        missing(f"chromium could not start here: {done.stderr.strip().splitlines()[-1:]}")
    return done


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("report_page")
    write_mnist(cwd / "data", n=100)
    result = run_cli("train", "-m", "optim.lr=1e-4,2e-4", "seed=0,1", "epochs=1", "data=mnist", "data.root=data",
                     "batch_size=20", "hidden_size=32", "latent_size=8", "eval.n=50", "device=cpu",
                     "hydra.sweep.dir=sweep", cwd=cwd)
    assert result.returncode == 0, result.stderr
    for job, colour in zip(sorted((cwd / "sweep").glob("[0-9]")), COLOURS):  # each last grid: one solid colour
        Image.new("RGB", (62, 62), colour).save(job / "samples" / "epoch_0001.png")
    report = run_cli("report", str(cwd / "sweep"), cwd=cwd)
    assert report.returncode == 0, report.stderr
    return cwd / "sweep"


def test_the_page_is_one_file_with_every_grid_and_the_table(sweep):
    page = (sweep / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 4 and not re.search(r'(src|href)="(http|file|/)', page)
    assert "<th>optim.lr</th>" in page and "<th>fd</th>" in page and "sorted by fd" in page
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    fds = [float(re.search(r"fd ([\d.e+-]+)", c).group(1)) for c in captions]
    assert fds == sorted(fds) and all("optim.lr=" in c and "seed=" in c for c in captions)  # the best first


def test_a_headless_browser_renders_every_grid(sweep, tmp_path):
    shot = tmp_path / "page.png"
    browser(tmp_path, f"--screenshot={shot}", "--window-size=1400,1400", (sweep / "report.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for colour in COLOURS:  # each grid drawn at 240 px wide: a 240x240 block of its colour
        found = (np.abs(pixels - colour).sum(axis=2) < 30).sum()
        assert found > 0.9 * 240 * 240, (colour, found)


def table_rows(page: str) -> list[list[str]]:
    table = page.split("<tbody>")[1].split("</tbody>")[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in table.split("</tr>") if "<td>" in row]


def test_a_headless_browser_sorts_the_table_by_a_column(sweep, tmp_path):
    """#sort=COL and #sort=-COL, in the page's own script: both directions, each an order the file's own table
    (sorted by fd) does not already have, so only the script can have made it."""
    as_written = table_rows((sweep / "report.html").read_text())
    columns = {"job": 0, "optim.lr": 1, "seed": 2}
    orders = {}
    for sort in ("seed", "-seed", "optim.lr", "-optim.lr"):
        dom = browser(tmp_path, "--dump-dom", "--virtual-time-budget=2000", (sweep / "report.html").as_uri() + f"#sort={sort}").stdout
        rows = table_rows(dom)
        values = [float(row[columns[sort.lstrip("-")]]) for row in rows]
        assert values == sorted(values, reverse=sort.startswith("-")) and len(set(values)) == 2, (sort, values)
        assert sorted(map(tuple, rows)) == sorted(map(tuple, as_written))  # the same rows, moved
        orders[sort] = [row[0] for row in rows]
    assert orders["seed"] != orders["-seed"] and orders["optim.lr"] != orders["-optim.lr"]
    assert any(order != [row[0] for row in as_written] for order in orders.values())
