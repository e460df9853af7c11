"""Every registry entry has a config file and every config file a registry entry, each with a description;
an unknown name fails with every valid one."""
from pathlib import Path

import pytest

import gantrain.conf
from gantrain.errors import UserError
from gantrain.components.registry import REGISTRIES, describe, lookup

CONF = Path(gantrain.conf.__file__).parent
KINDS = ("model", "loss", "optim", "data", "augment")
# what each kind's config files name (conf/<kind>/<name>.yaml): the entries a user can pick
CONFIGS = {kind: {p.stem for p in (CONF / kind).glob("*.yaml")} for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_each_config_file_names_an_entry_and_each_entry_has_a_config_file(kind):
    lookup(kind, sorted(CONFIGS[kind])[0])  # imports the modules that fill the registries
    assert CONFIGS[kind] and set(REGISTRIES[kind]) == CONFIGS[kind]


@pytest.mark.parametrize("kind,name", [(k, n) for k in KINDS for n in sorted(CONFIGS[k])])
def test_every_entry_has_a_one_line_description(kind, name):
    assert callable(lookup(kind, name))
    assert len(describe(kind, name)) > 10 and "\n" not in describe(kind, name)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_name_lists_the_valid_ones(kind):
    with pytest.raises(UserError) as e:
        lookup(kind, "no_such_thing")
    message = str(e.value)
    assert "no_such_thing" in message and "\n" not in message
    for name in CONFIGS[kind]:
        assert name in message
