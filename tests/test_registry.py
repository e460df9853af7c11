import pytest

from gantrain.errors import UserError
from gantrain.components.registry import REGISTRIES, describe, lookup

EXPECTED = {"model": {"mlp"}, "loss": {"bce"}, "optim": {"adam", "adamw", "sgd", "rmsprop"},
            "data": {"mnist_sample", "mnist"}}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_kind_holds_what_the_foundation_needs(kind):
    lookup(kind, next(iter(EXPECTED[kind])))  # imports the module that fills the registry
    assert EXPECTED[kind] <= set(REGISTRIES[kind])


@pytest.mark.parametrize("kind,name", [(k, n) for k in sorted(EXPECTED) for n in sorted(EXPECTED[k])])
def test_every_entry_has_a_one_line_description(kind, name):
    assert callable(lookup(kind, name))
    assert len(describe(kind, name)) > 10


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_unknown_name_lists_the_valid_ones(kind):
    with pytest.raises(UserError) as e:
        lookup(kind, "no_such_thing")
    message = str(e.value)
    assert "no_such_thing" in message and "\n" not in message
    for name in EXPECTED[kind]:
        assert name in message
