"""One registry per kind of component: a dict of name -> builder, filled by a decorator (as timm's _registry).

The modules that register live beside this one; importing the package (gantrain.components) imports them
all, so a lookup always sees every entry.
"""
from gantrain.errors import UserError

REGISTRIES: dict[str, dict] = {"model": {}, "loss": {}, "optim": {}, "data": {}, "augment": {}}


def register(kind: str, name: str):
    """Decorator: make `fn` (a function or a class) buildable as `kind=name` from the config."""
    def add(fn):
        REGISTRIES[kind][name] = fn
        return fn
    return add


def lookup(kind: str, name: str):
    """The builder registered as `name`, or a UserError listing the valid names."""
    table = REGISTRIES[kind]
    if name not in table:
        valid = ", ".join(sorted(table))
        raise UserError(f"unknown {kind} '{name}': valid names are {valid} (e.g. {kind}={min(table)})")
    return table[name]


def describe(kind: str, name: str) -> str:
    """First line of the builder's docstring: the one-line description `gantrain list` shows."""
    return (lookup(kind, name).__doc__ or "").strip().splitlines()[0]
