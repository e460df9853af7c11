"""gantrain list: every registry entry and experiment preset, as a table."""
from importlib.resources import files

from gantrain.components.registry import REGISTRIES, describe


def experiment_presets() -> dict[str, str]:
    """Preset name -> its description (the first comment line after the package line)."""
    presets = {}
    for path in sorted(files("gantrain.conf").joinpath("experiment").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            comments = [l[1:].strip() for l in path.read_text().splitlines() if l.startswith("#") and "@package" not in l]
            presets[path.name[:-5]] = comments[0] if comments else ""
    return presets


def rows() -> list[tuple[str, str, str]]:
    """(kind, name, description) for every registered component and preset; how to select each."""
    out = []
    for kind, table in REGISTRIES.items():
        out += [(kind, name, describe(kind, name)) for name in sorted(table)]
    out += [("experiment", name, text) for name, text in experiment_presets().items()]
    return out


def list_command(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    if argv and argv[0] in ("-h", "--help"):
        print("usage: gantrain list\n\nPrints every model, loss, optimizer, data set and experiment preset.")
        return 0
    table = Table(title="gantrain: select any entry with KIND=NAME, e.g. model=dcgan loss=hinge experiment=ring8")
    for column in ("kind", "name", "description"):
        table.add_column(column)
    for kind, name, text in rows():
        table.add_row(kind, name, text)
    Console().print(table)
    return 0
