"""Key names: every Valkey key is built by `KeySpace` (domain/keys.py), and in cluster mode all the
keys of one symbol hash to one slot, so one MULTI/EXEC or script can touch them together."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from valkey.crc import key_slot

import tickvault
from tickvault.domain.keys import KeySpace, validate_namespace
from tickvault.errors import ConfigError

PACKAGE = Path(tickvault.__file__).parent
# A value for every argument of a KeySpace method besides the symbol (a new argument: add it here).
ARGUMENTS = {"tf": "5m", "kind": "candles:1m", "session": "20251124", "chunk": 3, "block_id": "b1", "seq": 42}


def per_symbol_keys(keys: KeySpace, symbol: str) -> dict[str, str]:
    """Every key (or SCAN pattern) each per-symbol method of `keys` builds for `symbol`."""
    out: dict[str, str] = {}
    for name, method in inspect.getmembers(keys, inspect.ismethod):
        params = inspect.signature(method).parameters
        if name.startswith("_") or "symbol" not in params:
            continue
        built = method(**{p: symbol if p == "symbol" else ARGUMENTS[p] for p in params})
        for i, key in enumerate(built if isinstance(built, tuple) else (built,)):
            out[f"{name}[{i}]"] = key
    return out


def test_the_per_symbol_methods_are_all_found() -> None:
    names = {name.split("[")[0] for name in per_symbol_keys(KeySpace(), "WDOFUT")}
    assert {"ticks", "candles", "seen", "block", "writer_lease", "candle_lease"} <= names
    # the keys the workers and the feature history used to build by hand
    assert {"feature_lease", "predictor_lease", "day_summary"} <= names


@pytest.mark.parametrize("symbol", ["WDOFUT", "WINZ26", "DOLF25", "PETR4", "A.B_C-1", "X"])
def test_in_cluster_mode_every_key_of_a_symbol_is_in_the_symbol_slot(symbol: str) -> None:
    keys = per_symbol_keys(KeySpace(cluster=True), symbol)
    slot = key_slot(f"{{{symbol}}}".encode())
    assert {name: key_slot(key.encode()) for name, key in keys.items()} == dict.fromkeys(keys, slot)


@pytest.mark.parametrize("cluster", [False, True])
def test_a_namespace_prefixes_every_key_and_keeps_the_symbol_slot(cluster: bool) -> None:
    ns, live = KeySpace(cluster=cluster, namespace="replay-1"), KeySpace(cluster=cluster)
    keys, plain = per_symbol_keys(ns, "WDOFUT"), per_symbol_keys(live, "WDOFUT")
    assert keys == {name: "ns:replay-1:" + key for name, key in plain.items()}
    assert ns.symbols() == "ns:replay-1:tv:symbols" and ns.health("*") == "ns:replay-1:tv:health:*"
    assert ns.dead_letters() == "ns:replay-1:" + live.dead_letters() and ns.live() == live
    if cluster:
        slot = key_slot(b"{WDOFUT}")
        assert {key_slot(key.encode()) for key in keys.values()} == {slot}


@pytest.mark.parametrize("name", ["", "a:b", "a b", "*", "x{y}", "é", "a" * 65])
def test_a_bad_namespace_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="TICKVAULT_NAMESPACE"):
        validate_namespace(name)


def test_standalone_keys_are_the_guide_names_without_hash_tags() -> None:
    keys = KeySpace()
    assert not [key for key in per_symbol_keys(keys, "WDOFUT").values() if "{" in key]
    assert keys.ticks("WDOFUT") == "stream:ticks:WDOFUT"
    assert keys.day_summary("WDOFUT", "20251123") == "tv:daysum:WDOFUT:20251123"
    assert keys.feature_lease("WDOFUT") == "tv:featureworker:WDOFUT"
    assert keys.predictor_lease("WDOFUT") == "tv:predictor:WDOFUT"
    cluster = KeySpace(cluster=True)
    assert cluster.day_summary("WDOFUT", "20251123") == "tv:daysum:{WDOFUT}:20251123"


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_key_is_built_outside_the_keyspace() -> None:
    """A string (or the start of an f-string) that begins like a key, outside domain/keys.py."""
    by_hand = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "domain" / "keys.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and node.value.startswith(("tv:", "stream:"))
            ):
                by_hand.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not by_hand, "keys built outside KeySpace:\n" + "\n".join(by_hand)
