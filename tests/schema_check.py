"""A validator for the subset of JSON Schema (draft 2020-12) that docs/schema uses: type, enum,
required, properties, additionalProperties, items, minimum and local $ref. Small enough to read, so the
test suite needs no jsonschema package; a keyword outside the subset fails loudly rather than passing."""

from __future__ import annotations

from typing import Any

KNOWN = {"$schema", "$id", "$defs", "$ref", "title", "description", "type", "enum", "required", "properties",
         "additionalProperties", "items", "minimum"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def errors(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, at: str = "$") -> list[str]:
    """Every place `value` breaks `schema`, as 'path: why'."""
    root = root or schema
    unknown = set(schema) - KNOWN
    assert not unknown, f"schema keyword(s) {unknown} at {at} are outside this validator's subset"
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return errors(value, target, root, at)
    found = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, name) for name in names):
            return [f"{at}: {value!r} is not {'/'.join(names)}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not one of {schema['enum']}")
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        found.append(f"{at}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        found += [f"{at}: missing {key!r}" for key in schema.get("required", ()) if key not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                found += errors(item, properties[key], root, f"{at}.{key}")
            elif "additionalProperties" in schema:
                found += errors(item, schema["additionalProperties"], root, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += errors(item, schema["items"], root, f"{at}[{index}]")
    return found
