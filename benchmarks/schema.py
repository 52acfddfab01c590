"""Validation of result files against ``benchmarks/schema.json`` without a third-party dependency.

The schema is standard JSON Schema (2020-12); this validator implements the subset it uses: ``type``,
``enum``, ``const``, ``required``, ``properties``, ``additionalProperties``, ``items``, ``minimum``,
``minLength``, ``$ref`` (local ``#/...``), ``allOf``, ``if``/``then``/``else`` and ``not``. An unknown
keyword is an error, so the schema cannot silently use more than is checked. (``jsonschema``, where
installed, gives the same verdict; the test suite compares them.)

    errors = validate(doc)          # [] when valid, else 'path: message' strings
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs", "$comment"}
_KNOWN = _ANNOTATIONS | {
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minimum",
    "minLength",
    "$ref",
    "allOf",
    "if",
    "then",
    "else",
    "not",
}
_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def _resolve(root: dict, ref: str) -> dict:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref '#/...' is supported, got {ref!r}")
    node = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(x, s: dict, root: dict, path: str, errs: list) -> None:
    unknown = set(s) - _KNOWN
    if unknown:
        raise ValueError(f"schema at {path or '$'} uses unsupported keywords {sorted(unknown)}")
    if "$ref" in s:
        _check(x, _resolve(root, s["$ref"]), root, path, errs)
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_TYPES[t](x) for t in types):
            errs.append(f"{path or '$'}: expected {' or '.join(types)}, got {type(x).__name__} {x!r:.60}")
            return
    if "const" in s and not _equal(x, s["const"]):
        errs.append(f"{path or '$'}: expected {s['const']!r}, got {x!r:.60}")
    if "enum" in s and not any(_equal(x, e) for e in s["enum"]):
        errs.append(f"{path or '$'}: {x!r:.60} is not one of {s['enum']}")
    if "minimum" in s and _TYPES["number"](x) and x < s["minimum"]:
        errs.append(f"{path or '$'}: {x} < minimum {s['minimum']}")
    if "minLength" in s and isinstance(x, str) and len(x) < s["minLength"]:
        errs.append(f"{path or '$'}: string shorter than {s['minLength']}")
    if isinstance(x, dict):
        for k in s.get("required", []):
            if k not in x:
                errs.append(f"{path or '$'}: missing required key {k!r}")
        props = s.get("properties", {})
        for k, v in x.items():
            if k in props:
                _check(v, props[k], root, f"{path}.{k}", errs)
            elif s.get("additionalProperties") is False:
                errs.append(f"{path or '$'}: unexpected key {k!r}")
            elif isinstance(s.get("additionalProperties"), dict):
                _check(v, s["additionalProperties"], root, f"{path}.{k}", errs)
    if isinstance(x, list) and "items" in s:
        for i, v in enumerate(x):
            _check(v, s["items"], root, f"{path}[{i}]", errs)
    for sub in s.get("allOf", []):
        _check(x, sub, root, path, errs)
    if "if" in s:
        probe: list = []
        _check(x, s["if"], root, path, probe)
        branch = s.get("then") if not probe else s.get("else")
        if branch is not None:
            _check(x, branch, root, path, errs)
    if "not" in s:
        probe = []
        _check(x, s["not"], root, path, probe)
        if not probe:
            errs.append(f"{path or '$'}: must not match {json.dumps(s['not'])}")


def _equal(a, b) -> bool:
    return type(a) is type(b) and a == b or (_TYPES["number"](a) and _TYPES["number"](b) and a == b)


def validate(doc, schema: dict | None = None) -> list[str]:
    """Error messages ('path: what is wrong') for ``doc`` against the schema; [] when it is valid."""
    schema = load_schema() if schema is None else schema
    errs: list[str] = []
    _check(doc, schema, schema, "", errs)
    return errs
