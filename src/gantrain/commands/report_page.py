"""report.html: a sweep on one self-contained page (images embedded, no script or style from elsewhere, so it
opens offline from a file manager): the jobs' table, sortable by any column, and every job's last sample
grid under its swept keys and its metric, the best first."""
import base64
import html
from pathlib import Path

from gantrain.commands.tables import fmt
from gantrain.errors import naming

# Clicking a header sorts by it (numbers as numbers, blanks last); a second click reverses. A link to
# report.html#sort=fd (or #sort=-fd, descending) opens the page sorted so.
SORT_SCRIPT = """
const headers = Array.from(document.querySelectorAll("th"));
headers.forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const down = th.dataset.order !== "asc"; th.dataset.order = down ? "asc" : "desc";
  const key = r => { const t = r.cells[col].textContent.trim(), n = parseFloat(t);
                     return t === "" ? null : (isNaN(n) || !/^[-+.\\d]/.test(t) ? t : n); };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return down ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}));
const wanted = decodeURIComponent(location.hash).match(/^#sort=(-?)(.+)$/);
const th = wanted && headers.find(h => h.textContent === wanted[2]);
if (th) { th.click(); if (wanted[1]) th.click(); }
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eee; cursor: pointer; user-select: none; }
th:hover { background: #ddd; }
.grids { display: flex; flex-wrap: wrap; gap: 14px; margin-top: 1.5em; }
figure { margin: 0; width: 240px; }
figure img { width: 240px; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 12px; line-height: 1.35; }
"""


def embedded(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def write_page(path: Path, title: str, rows: list[dict], notes: list[str], cards: list[tuple[Path | None, list[str]]]) -> None:
    """rows: the table, one dict per job (every row has the same keys); notes: lines under it (the metrics'
    protocols); cards: each job's last sample grid (or None) and its caption lines, in the order shown."""
    e = html.escape
    head = "".join(f"<th>{e(str(k))}</th>" for k in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{e(fmt(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
    figures = "".join(
        "<figure>" + (f'<img src="{embedded(png)}" alt="{e(lines[0])}">' if png else "<p>(no samples)</p>")
        + "<figcaption>" + "<br>".join(e(line) for line in lines) + "</figcaption></figure>"
        for png, lines in cards)
    with naming(path):
        path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{STYLE}</style></head>
<body><h2>{e(title)}</h2>
<p>Click a column's header to sort by it (a link to this page ending in #sort=NAME opens it so sorted).
Below: each job's last sample grid, the best first.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{"".join(f'<p class="note">{e(line)}</p>' for line in notes)}
<div class="grids">{figures}</div>
<script>{SORT_SCRIPT}</script></body></html>
""")
