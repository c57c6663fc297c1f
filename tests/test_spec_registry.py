"""The generic spec registry behind the tile-extractor and slide-encoder registries:
discovery once, lookup by name and alias, suggestions, registration, plugins, thread safety."""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, replace
from typing import Any

import pytest

from slideflow.errors import SlideflowError
from slideflow.model.spec_registry import SpecRegistry, did_you_mean, normalize


class ToyNotFound(SlideflowError):
    pass


@dataclass(frozen=True)
class Toy:
    name: str
    family: str = "known"
    aliases: tuple[str, ...] = ()
    builder: str | None = None
    distribution: str = "toys"

    def with_(self, **changes: Any) -> Toy:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Toy:
        return cls(**data)


def family_builder(family: str):
    return (lambda spec: f"built {spec.name}") if family == "known" else None


def _registry(calls: list[int] | None = None, **kw: Any) -> SpecRegistry[Toy]:
    def discover(errors):
        if calls is not None:
            calls.append(1)
        errors["broken_ep"] = "ImportError: no module"
        return {normalize(t.name): t for t in (Toy("Alpha-One", aliases=("a1",)),
                                               Toy("beta", aliases=("b",)))}

    return SpecRegistry(kind="toy", discover=discover, spec_type=Toy, not_found=ToyNotFound,
                        family_builder=family_builder, import_failures=dict, **kw)


def test_discovery_runs_once_until_refresh():
    calls: list[int] = []
    reg = _registry(calls)
    assert sorted(reg.specs()) == ["alpha_one", "beta"]
    reg.specs()
    reg.find("beta")
    assert len(calls) == 1 and reg.load_errors == {"broken_ep": "ImportError: no module"}
    reg.refresh()
    assert reg.load_errors == {}
    reg.specs()
    assert len(calls) == 2


def test_lookup_by_name_alias_and_spelling():
    reg = _registry()
    assert reg.find(normalize("ALPHA one")).name == "Alpha-One"
    assert reg.find("a1").name == "Alpha-One" and reg.find("b").name == "beta"
    assert reg.find("gamma") is None


def test_suggestions():
    assert did_you_mean("alpah_one", ["alpha_one", "beta"], n=5) == " Did you mean: 'alpha_one'?"
    assert did_you_mean("zzz", ["alpha_one", "beta"], n=5) == ""
    assert did_you_mean("bet", ["beta", "betb", "betc"], n=2).count("'") == 4


def test_registration_duplicates_and_replace():
    reg = _registry()
    with pytest.raises(ValueError, match="toy 'BETA' is already registered; pass replace=True"):
        reg.register(Toy("BETA"))
    reg.register({"name": "gamma"})
    assert reg.is_plugin("Gamma") and not reg.is_plugin("beta")
    with pytest.raises(ValueError, match="toy 'gamma' is already registered"):
        reg.register(Toy("gamma"))
    reg.register(Toy("beta", aliases=("bb",)), replace=True)  # a plugin shadows a discovered spec
    assert reg.find("bb").name == "beta" and reg.plugin_names() == ["gamma", "beta"]
    reg.unregister("beta")
    assert reg.find("bb") is None and reg.find("b").name == "beta"
    with pytest.raises(TypeError, match="expected Toy or dict"):
        reg.register(42)


def test_builders_callable_string_family_and_errors():
    reg = _registry(reserved_prefix="toy:", not_built_in="is not a toy family")
    with pytest.raises(ValueError, match="names starting with 'toy:' are reserved"):
        reg.register(Toy("toy:x"))
    with pytest.raises(ValueError, match=r"odd: give a builder \(family 'mystery' is not a toy "
                                         r"family\)"):
        reg.register(Toy("odd", family="mystery"))
    with pytest.raises(TypeError, match="builder must be callable"):
        reg.register(Toy("odd", family="mystery"), builder=3)

    def mine(spec):
        return spec

    reg.register(Toy("odd", family="mystery"), builder=mine)
    assert reg.resolve_builder(reg.find("odd")) == (mine, True)
    # re-registered with a path: the earlier callable no longer builds it
    spec = reg.register(Toy("odd", family="mystery"), builder="json:dumps", replace=True)
    assert spec.builder == "json:dumps"
    import json

    assert reg.resolve_builder(spec) == (json.dumps, False)
    # re-registered on a built-in family: that family builds it, not the old callable
    reg.register(Toy("odd"), builder=mine, replace=True)
    reg.register(Toy("odd"), replace=True)
    builder, plugin = reg.resolve_builder(reg.find("odd"))
    assert not plugin and builder(reg.find("odd")) == "built odd"
    with pytest.raises(ToyNotFound, match="builder 'nocolon' is not 'module:callable'"):
        reg.resolve_builder(Toy("x", builder="nocolon"))
    with pytest.raises(ToyNotFound, match="no builder for family 'mystery'"):
        reg.resolve_builder(Toy("x", family="mystery"))


def test_missing_builder_module_names_the_install_command():
    reg = _registry(install_hints={"toy-dist": "pip install ./toy_dist"})
    with pytest.raises(ToyNotFound, match=r"x \(toys\) is built by toy_dist.models, which is "
                                          r"not installed: pip install ./toy_dist"):
        reg.resolve_builder(Toy("x", builder="toy_dist.models:build"))


def test_load_plugin(tmp_path, caplog, monkeypatch):
    reg = _registry(plugin_noun="toy plugin", register_call="register_toy")
    target = types.ModuleType("toy_target")
    target.reg = reg
    monkeypatch.setitem(sys.modules, "toy_target", target)
    plugin = tmp_path / "my_toys.py"
    plugin.write_text("from toy_target import reg\n"
                      "reg.register({'name': 'delta'})\n"
                      "reg.register({'name': 'epsilon'})\n")
    assert reg.load_plugin(plugin) == ["delta", "epsilon"]
    empty = tmp_path / "nothing.py"
    empty.write_text("x = 1\n")
    with caplog.at_level("WARNING"):
        assert reg.load_plugin(empty) == []
    assert "registered no toy (call slideflow.register_toy(spec, builder) in it)" in caplog.text
    with pytest.raises(FileNotFoundError, match="toy plugin must be an existing .py file"):
        reg.load_plugin(tmp_path / "missing.py")


def test_concurrent_registration_and_lookup():
    """Writers register and unregister while readers list and look up: no lost registration,
    no 'dictionary changed size during iteration', exactly one winner per contested name."""
    reg = _registry()
    errors: list[BaseException] = []
    winners: list[str] = []
    start = threading.Barrier(8)

    def writer(i: int) -> None:
        start.wait()
        try:
            for j in range(200):
                reg.register(Toy(f"w{i}_{j}"))
                if j % 2:
                    reg.unregister(f"w{i}_{j}")
            try:
                reg.register(Toy("contested"))
                winners.append(f"w{i}")
            except ValueError:
                pass
        except BaseException as exc:  # pragma: no cover - the failure is the assertion below
            errors.append(exc)

    def reader() -> None:
        start.wait()
        try:
            for _ in range(300):
                reg.specs()
                reg.find("a1")
                reg.plugin_names()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(winners) == 1
    names = set(reg.plugin_names())
    assert len(names) == 4 * 100 + 1
    assert all(f"w{i}_{j}" in names for i in range(4) for j in range(0, 200, 2))


def test_locked_makes_a_check_and_a_registration_one_step():
    reg = _registry()
    thread = threading.Thread(target=lambda: reg.register(Toy("eta")))
    with reg.locked():
        assert not reg.is_plugin("eta")
        thread.start()
        thread.join(timeout=0.3)
        assert thread.is_alive() and not reg.is_plugin("eta")  # waits for the lock
        reg.register(Toy("zeta"))
    thread.join()
    assert reg.plugin_names() == ["zeta", "eta"]


def test_both_model_registries_are_instances():
    from slideflow.model.extractors.registry import EXTRACTORS
    from slideflow.model.slide_encoders.registry import SLIDE_ENCODERS

    assert isinstance(EXTRACTORS, SpecRegistry) and isinstance(SLIDE_ENCODERS, SpecRegistry)
    assert EXTRACTORS.find("efficientnet_lite0_imagenet").dim == 1280
    assert SLIDE_ENCODERS.find(normalize("mean")) is not None
