"""The run config as a tree before it is typed: YAML files read with duplicate keys refused, the
`base_config` chain merged, `--set` overrides applied, and every dotted field's origin (the file
or `--set` that set it) recorded; then the tree typed into the dataclasses of config.py with
errors that name that origin and the field."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .errors import ConfigError

# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
Origins = Dict[str, str]


def _check_duplicates(node: Any, path: str, prefix: str = "") -> None:
    """Refuse a key given twice in one mapping (PyYAML silently keeps the last one, so a second
    `train:` section would drop the first without a word)."""
    if isinstance(node, yaml.MappingNode):
        seen: Dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    what = "section" if isinstance(value_node, yaml.MappingNode) else "key"
                    raise ConfigError(path, dotted, f"line {line}: duplicate {what} {dotted!r} (first given at "
                                      f"line {seen[key]}); give each key once")
                seen[key] = line
            _check_duplicates(value_node, path, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, path, f"{prefix}[{i}]")


def read_yaml_mapping(path: str, origin: str = "") -> Dict[str, Any]:
    """A YAML file whose top level is a mapping (`yaml.safe_load`: no objects are constructed),
    refusing duplicate keys; errors are one line naming the file and the line."""
    if not os.path.isfile(path):
        raise ConfigError(origin or path, "", f"config file {path!r} not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
        _check_duplicates(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(path, "", f"malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"top level must be a mapping of sections, got {type(data).__name__}")
    return data


_read_yaml = read_yaml_mapping


def _mark(data: Any, prefix: str, origin: str, origins: Origins) -> None:
    origins[prefix] = origin
    if isinstance(data, dict):
        for k, v in data.items():
            _mark(v, f"{prefix}.{k}" if prefix else str(k), origin, origins)


def _merge(base: Dict[str, Any], over: Dict[str, Any], prefix: str, origin: Optional[str],
           origins: Origins) -> None:
    """Deep-merge `over` into `base`; record `origin` for the keys it sets (None: already recorded)."""
    for k, v in over.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, dotted, origin, origins)
        else:
            base[k] = copy.deepcopy(v)
            if origin is not None:
                _mark(v, dotted, origin, origins)


def _load_tree(path: str, origins: Origins, order: List[str], chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Merge `path` over its bases; `order` receives files in merge order (bases first)."""
    real = os.path.realpath(path)
    if real in chain:
        raise ConfigError(path, "base_config", "base_config forms a cycle: " + " -> ".join(chain + (real,)))
    data = _read_yaml(path, chain[-1] if chain else path)
    base_ref = data.pop("base_config", None)
    merged: Dict[str, Any] = {}
    if base_ref is not None:
        bases = base_ref if isinstance(base_ref, list) else [base_ref]
        for b in bases:
            if not isinstance(b, str):
                raise ConfigError(path, "base_config", f"base_config={b!r} must be a path")
            bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
            if not os.path.isfile(bpath):
                raise ConfigError(path, "base_config", f"base_config={b!r}: file {bpath!r} not found")
            # the recursive call already recorded which file set each of the base's keys
            _merge(merged, _load_tree(bpath, origins, order, chain + (real,)), "", None, origins)
    _merge(merged, data, "", path, origins)
    order.append(path)
    return merged


def parse_override(item: str) -> Tuple[str, Any]:
    if "=" not in item:
        raise ConfigError("--set", item, f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(tree: Dict[str, Any], key: str, value: Any, origins: Origins) -> None:
    parts = key.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError("--set", key, f"{'.'.join(parts[:i + 1])} is not a section; cannot set {key}")
        node = nxt
    node[parts[-1]] = value
    _mark(value, key, "--set", origins)


# ---------------------------------------------------------------------------------------
# Typed construction
# ---------------------------------------------------------------------------------------
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
INT_LIMIT = 2 ** 31 - 1


def _coerce(value: Any, tp: Any, dotted: str, origins: Origins) -> Any:
    origin_file = _origin(origins, dotted)
    org = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if org is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, non_none[0], dotted, origins)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(origin_file, dotted, f"{dotted} must be a mapping, got {value!r}")
        return _build(tp, value, dotted, origins)
    if org in (list, tuple, List, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(origin_file, dotted, f"{dotted}={value!r} must be a list")
        return [_coerce(v, args[0] if args else Any, f"{dotted}[{i}]", origins) for i, v in enumerate(value)]
    if org in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(origin_file, dotted, f"{dotted}={value!r} must be a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(origin_file, dotted, f"{dotted}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(origin_file, dotted, f"{dotted}={value!r} must be an integer")
        if abs(value) > INT_LIMIT:  # counts, sizes and steps all travel as int32 somewhere
            raise ConfigError(origin_file, dotted, f"{dotted}={value} is out of range: integer fields must be "
                              f"within +-{INT_LIMIT} (2^31 - 1)")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(origin_file, dotted, f"{dotted}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(origin_file, dotted, f"{dotted}={value!r} must be a string")
        return value
    return value


def _origin(origins: Origins, dotted: str) -> str:
    key = dotted.split("[")[0]
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return origins.get("", "")


def _build(cls: Any, data: Dict[str, Any], prefix: str, origins: Origins) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source", "origins")}
    kwargs = {}
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(_origin(origins, dotted), dotted,
                              f"{dotted} is not a known field of {where}{hint}")
        kwargs[k] = _coerce(v, hints[k], dotted, origins)
    return cls(**kwargs)
