"""gantrain report PATH: one row per job of a run or sweep dir, sorted by a metric; report.csv, report.png
(the metric against each swept key, the g_loss curves, every job's last sample grid) and report.html."""
import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gantrain.commands.report_page import write_page
from gantrain.commands.tables import as_table, console, fmt, write_csv
from gantrain.errors import UserError, naming
from gantrain.evaluation.protocol import describe, differences, footing
from gantrain.outputs.curves import pyplot, read_metrics
from gantrain.outputs.status import job_overrides, read_status

HIGHER_IS_BETTER = {"precision", "recall", "classes_covered", "modes", "hq_percent", "feature_net_accuracy"}
TRAIN_COLUMNS = ("d_loss", "g_loss", "d_x", "d_g_z")


@dataclass
class Job:
    run_dir: Path
    overrides: dict[str, str]
    status: dict
    last: dict[str, float] = field(default_factory=dict)  # the final metrics.csv row
    metrics: dict[str, float] = field(default_factory=dict)  # eval metrics (metrics.json)
    features: str | None = None  # the feature space of its image metrics: classifier | contrastive | inception
    cards: dict[str, dict] = field(default_factory=dict)  # each eval metric's protocol card (protocol.py)
    sizes: dict[str, tuple] = field(default_factory=dict)  # each eval metric's (n_real, n_fake)


def find_jobs(path: Path) -> list[Job]:
    """The run in `path`, or every job dir below a sweep dir (those holding .hydra/)."""
    dirs = [path] if (path / ".hydra").is_dir() else sorted(
        (d.parent for d in path.glob("*/.hydra")), key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
    jobs = []
    for d in dirs:
        overrides = dict(o.lstrip("+~").split("=", 1) for o in job_overrides(d) if "=" in o)
        job = Job(d, overrides, read_status(d))
        if (d / "metrics.csv").exists():
            columns = read_metrics(d / "metrics.csv")
            job.last = {k: v[-1] for k, v in columns.items() if v}
        if (d / "metrics.json").exists():
            saved = json.loads((d / "metrics.json").read_text())["metrics"]
            job.metrics = {k: (math.inf if e["value"] is None else e["value"]) for k, e in saved.items()}
            job.features = next((e["features"] for e in saved.values() if "features" in e), None)
            job.cards = {k: e["protocol"] for k, e in saved.items() if "protocol" in e}
            job.sizes = {k: (e.get("n_real"), e.get("n_fake")) for k, e in saved.items()}
        jobs.append(job)
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose values differ between jobs, in the order they appear."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def sort_key(metric: str):
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    return lambda j: (metric not in j.metrics, sign * j.metrics.get(metric, 0.0))


def protocols(jobs: list[Job], metric: str | None) -> tuple[dict[str, str], list[str]]:
    """Each job's protocol label (A, B, ... by the footing of its `metric`: feature network, weights, resize,
    real side) and the lines that explain them: one per protocol, one when they differ (the jobs then rank
    only within a label), one when n_real / n_fake differ (noted, not separated)."""
    cards = {str(j.run_dir): j.cards.get(metric) for j in jobs if metric and j.cards.get(metric)}
    feet = {d: json.dumps(footing(c), sort_keys=True) for d, c in cards.items()}
    labels: dict[str, str] = {}
    for foot in feet.values():
        labels.setdefault(foot, chr(ord("A") + len(labels)))
    by_job = {d: labels[foot] for d, foot in feet.items()}
    legend = {by_job[d]: describe(c) for d, c in cards.items()}
    lines = [f"protocol {label}: {text}" for label, text in sorted(legend.items())]
    differ = differences(list(cards.values()))
    if differ:
        lines.append(f"these jobs' {metric} were measured on different footing ({', '.join(differ)} differ): they are "
                     f"ranked within each protocol (column protocol), never across")
    ns = {j.sizes[metric] for j in jobs if metric in j.sizes}
    if len(ns) > 1:
        lines.append(f"note: {metric} was measured with different numbers of images (n_real, n_fake: "
                     f"{', '.join(f'{a}, {b}' for a, b in sorted(ns))}); FID is biased upwards at smaller n")
    return by_job, lines


def with_cards(table_rows: list[dict], notes: list[str]) -> list[dict]:
    """report.csv's rows: each with its protocol written out (a CSV has no legend)."""
    legend = dict(line.removeprefix("protocol ").split(": ", 1) for line in notes if line.startswith("protocol "))
    return [row | {"protocol_card": legend.get(row.get("protocol"), "")} if legend else row for row in table_rows]


def rows(jobs: list[Job], swept: list[str], metric_names: list[str], labels: dict[str, str]) -> list[dict]:
    out = []
    for j in jobs:
        state = j.status.get("state", "unknown") + (f": {j.status['reason']}" if j.status.get("reason") else "")
        out.append({"job": j.run_dir.name, **{k: j.overrides.get(k, "") for k in swept}, "status": state,
                    "steps": int(j.last["step"]) if "step" in j.last else "",
                    **{c: j.last.get(c, "") for c in TRAIN_COLUMNS}, **{m: j.metrics.get(m, "") for m in metric_names},
                    **({"protocol": labels.get(str(j.run_dir), "")} if labels else {})})
    return out


def seed_groups(jobs: list[Job], swept: list[str]) -> dict[tuple, list[Job]]:
    """Jobs grouped by every swept key but seed (only when seed and something else are swept)."""
    others = [k for k in swept if k != "seed"]
    if "seed" not in swept or not others:
        return {}
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        groups.setdefault(tuple(j.overrides.get(k, "") for k in others), []).append(j)
    return groups


def mean_std(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "-"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2g}"


def last_grid(job: Job) -> Path | None:
    """The job's last sample grid (samples/epoch_NNNN.png), if it wrote one."""
    grids = sorted((job.run_dir / "samples").glob("epoch_*.png"))
    return grids[-1] if grids else None


def caption(job: Job, swept: list[str], metric: str | None) -> list[str]:
    """What a job's grid is shown under: its name and swept keys, its metric, its state if not done."""
    lines = [f"job {job.run_dir.name}" + "".join(f"  {k}={job.overrides.get(k, '')}" for k in swept)]
    if metric and metric in job.metrics:
        lines.append(f"{metric} {fmt(job.metrics[metric])}" + (f" ({job.features} features)" if job.features else ""))
    if job.status.get("state", "done") != "done":
        lines.append(job.status.get("state", "unknown") + (f": {job.status['reason']}" if job.status.get("reason") else ""))
    return lines


GRIDS_SHOWN = 16  # report.png's thumbnails (report.html shows every job)


def plot(jobs: list[Job], swept: list[str], metric: str | None, path: Path) -> None:
    """Top left: the metric against each swept hyperparameter. Top right: every job's g_loss curve. Below:
    the jobs' last sample grids, the best first, under their swept keys and metric."""
    plt = pyplot()
    panels = [k for k in swept if metric] or [None]
    shown = [j for j in jobs if last_grid(j)][:GRIDS_SHOWN]
    per_row = max(len(panels) + 1, min(len(shown), 4)) if shown else len(panels) + 1
    grid_rows = -(-len(shown) // per_row)
    fig = plt.figure(figsize=(4.5 * per_row, 4 + 4.2 * grid_rows))
    layout = fig.add_gridspec(1 + grid_rows, per_row)
    axes = [[fig.add_subplot(layout[0, i]) for i in range(len(panels) + 1)]]
    for i, job in enumerate(shown):
        ax = fig.add_subplot(layout[1 + i // per_row, i % per_row])
        ax.imshow(plt.imread(last_grid(job)))
        ax.set_title("\n".join(caption(job, swept, metric)), fontsize=8)
        ax.axis("off")
    for ax, key in zip(axes[0], panels):
        if key is None:
            ax.text(0.5, 0.5, "no eval metric or no swept key", ha="center", va="center")
            continue
        points = [(j.overrides.get(key, ""), j.metrics[metric]) for j in jobs if metric in j.metrics]
        labels = sorted({p[0] for p in points}, key=lambda v: (_num(v) is None, _num(v) or 0, v))
        ax.scatter([labels.index(p[0]) for p in points], [p[1] for p in points])
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    curves = axes[0][-1]
    for j in jobs:
        if (j.run_dir / "metrics.csv").exists():
            m = read_metrics(j.run_dir / "metrics.csv")
            curves.plot(m["step"], m["g_loss"], label=j.run_dir.name, alpha=0.8)
    curves.set_xlabel("step")
    curves.set_ylabel("g_loss")
    curves.set_title("every job's g_loss")
    if 0 < len(curves.get_lines()) <= 12:  # jobs without a metrics.csv (failed at once) draw no curve
        curves.legend(fontsize=7)
    fig.tight_layout()
    with naming(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)


def _num(value: str):
    try:
        return float(value)
    except ValueError:
        return None


def summary_rows(jobs: list[Job], swept: list[str], metric_names: list[str]) -> list[dict]:
    """mean ± std over seeds of every group of jobs that differ only in their seed (none if seed is not swept)."""
    others = [k for k in swept if k != "seed"]
    return [{**dict(zip(others, key)), "seeds": str(len(members)),
             "final g_loss": mean_std([m.last.get("g_loss") for m in members]),
             **{n: mean_std([m.metrics.get(n) for m in members]) for n in metric_names}}
            for key, members in seed_groups(jobs, swept).items()]


def as_markdown(rows_: list[dict]) -> str:
    lines = ["| " + " | ".join(rows_[0]) + " |", "|" + "---|" * len(rows_[0])]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row.values()) + " |" for row in rows_])


def report_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gantrain report", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run dir or a multirun (sweep) dir")
    parser.add_argument("--metric", default=None, help="sort by this eval metric (default: fid, else fd, else modes)")
    parser.add_argument("--format", choices=("table", "csv", "markdown", "json"), default="table",
                        help="table (whole values when piped), or csv / markdown / json on stdout for scripts")
    args = parser.parse_args(argv)
    path = Path(args.path).expanduser()
    jobs = find_jobs(path) if path.is_dir() else []
    if not jobs:
        raise UserError(f"no runs under {path}: pass a run dir (outputs/train/<date>/<time>) or a sweep dir "
                        f"(outputs/train-multirun/<date>/<time>)")
    metric_names = list(dict.fromkeys(m for j in jobs for m in j.metrics))
    metric = args.metric or next((m for m in ("fid", "fd", "modes") if m in metric_names), None)
    if metric and metric not in metric_names:
        raise UserError(f"no job has metric {metric!r}; choose one of {', '.join(metric_names) or '(none: no eval ran)'}")
    labels, notes = protocols(jobs, metric)
    if metric:  # the best first, within each protocol: numbers on different footing never interleave
        jobs.sort(key=lambda j, by=sort_key(metric): (labels.get(str(j.run_dir), "") if len(set(labels.values())) > 1 else "", by(j)))
    swept = swept_keys(jobs)
    table_rows, summary = rows(jobs, swept, metric_names, labels), summary_rows(jobs, swept, metric_names)
    spaces = sorted({j.features for j in jobs if j.features})  # an FD means something only within one of them
    title = (f"{path}: {len(jobs)} job(s)" + (f", sorted by {metric}" if metric else "")
             + (f"; image metrics in {' and '.join(spaces)} features" if spaces else ""))
    if args.format == "table":
        out = console()
        out.print(as_table(table_rows, title))
        if summary:
            out.print(as_table(summary, "mean ± std over seeds"))
        for line in notes:
            out.print(line, highlight=False, soft_wrap=True)
    elif args.format == "markdown":
        print(f"**{title}**\n\n{as_markdown(table_rows)}" + (f"\n\n**mean ± std over seeds**\n\n{as_markdown(summary)}" if summary else "")
              + "".join(f"\n\n{line}" for line in notes))
    elif args.format == "csv":
        write_csv(with_cards(table_rows, notes), sys.stdout)
    else:
        print(json.dumps({"path": str(path), "sorted_by": metric, "jobs": table_rows, "over_seeds": summary,
                          "protocols": notes}, indent=2))
    if args.format == "csv":
        for line in notes:
            print(line, file=sys.stderr)
    with naming(path / "report.csv"), open(path / "report.csv", "w", newline="") as f:
        write_csv(with_cards(table_rows, notes), f)
    plot(jobs, swept, metric, path / "report.png")
    write_page(path / "report.html", title, table_rows, notes, [(last_grid(j), caption(j, swept, metric)) for j in jobs])
    print(f"wrote {path / 'report.csv'}, {path / 'report.png'} and {path / 'report.html'}",
          file=sys.stdout if args.format == "table" else sys.stderr)
    return 0
