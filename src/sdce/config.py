"""The study configuration: one JSON schema, shared with Snakemake.

`workflow/schemas/config.schema.yaml` is the single source of truth. The
Snakefile validates the whole config with it (Snakemake fills the defaults);
every `sdce` subcommand validates the slice it receives against the matching
sub-schema, so Python never carries defaults of its own. What a valid study
builds, and the checks across keys the schema cannot express, are `sdce.plan`'s.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, validators
from referencing import Registry, Resource

_REPO_SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
_SCHEMA_URI = "urn:sdce:config"


class ConfigError(ValueError):
    """A configuration that does not satisfy the schema; the message names the key."""


@lru_cache(maxsize=1)
def schema() -> dict:
    if _REPO_SCHEMA.exists():
        text = _REPO_SCHEMA.read_text(encoding="utf-8")
    else:  # installed wheel: the schema ships as package data
        text = resources.files("sdce").joinpath("schemas/config.schema.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _default_filling(cls):
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema_)

    return validators.extend(cls, {"properties": set_defaults})


_Validator = _default_filling(Draft202012Validator)


def _validator(fragment: str | None) -> Any:
    root = schema()
    registry = Registry().with_resource(_SCHEMA_URI, Resource.from_contents(root))
    if fragment and "/" not in fragment:
        fragment = f"$defs/{fragment}"
    sub = {"$ref": f"{_SCHEMA_URI}#/{fragment}"} if fragment else {**root, "$id": _SCHEMA_URI}
    return _Validator(sub, registry=registry)


def _key_path(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = [prefix, *(str(p) for p in error.absolute_path)]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            parts.append(extra[0])
            return ".".join(p for p in parts if p) + " is not a known key"
    return ".".join(p for p in parts if p) or "config"


def validate(config: dict, fragment: str | None = None, where: str = "") -> dict:
    """Validate (a copy of) `config`, fill schema defaults, and return it.

    `fragment` names a sub-schema under `$defs` (`model`, `training`, `guidance`, `run`)
    or a JSON pointer into the schema (`properties/corpus`).
    Raises ConfigError whose message starts with the offending key.
    """
    config = copy.deepcopy(config)
    errors = sorted(_validator(fragment).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise ConfigError(f"{_key_path(err, where)}: {err.message}")
    # increasing milestones cannot be expressed in JSON Schema: checked here for every slice holding them
    training = config if (fragment or "").endswith("training") else (config or {}).get("training")
    if isinstance(training, dict):
        milestone_words(training.get("milestones"))
    return config


def load(path: str | Path, overrides: dict | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    if overrides:
        config = deep_merge(config, overrides)
    return validate(config)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def section(config: dict, name: str) -> dict:
    """Validated top-level section `name` (what a rule passes as its params)."""
    return validate(config.get(name, {}), f"properties/{name}", where=name)


def _rows(node: dict, prefix: str, root: dict) -> list[tuple[str, str, str, str]]:
    if "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    rows = []
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        resolved = sub
        if "$ref" in sub:
            resolved = root
            for part in sub["$ref"].lstrip("#/").split("/"):
                resolved = resolved[part]
        kind = resolved.get("type", "object")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in resolved:
            kind = " / ".join(f"`{v}`" for v in resolved["enum"])
        default = sub.get(
            "default", resolved.get("default", "(required)" if key in node.get("required", []) else "")
        )
        if isinstance(default, dict) and not default:
            default = ""
        desc = " ".join(str(sub.get("description", resolved.get("description", ""))).split())
        shown = "required" if default == "(required)" else f"`{json_dump(default)}`" if default != "" else ""
        rows.append((path, kind, shown, desc))
        if resolved.get("properties"):
            rows.extend(_rows(resolved, path, root))
        extra = resolved.get("additionalProperties")
        if isinstance(extra, dict):
            rows.extend(_rows(extra, f"{path}.<name>", root))
    return rows


def json_dump(value) -> str:
    import json

    return json.dumps(value)


def describe() -> str:
    """Markdown reference of every key, generated from the schema (config/README.md)."""
    root = schema()
    lines = [
        "# Configuration reference",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by `sdce config-docs`;",
        "a test keeps it in sync.",
        "A run (`runs.<name>`) overrides the top-level `model` and `training` keys it names and sets its",
        "`guidance`; every other key of the run takes the top-level value, then the schema default.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{p}` | {k} | {d} | {desc} |" for p, k, d, desc in _rows(root, "", root)]
    return "\n".join(lines) + "\n"


def milestone_words(spec) -> list[int]:
    """The words-seen milestones of `training.milestones` as an increasing list."""
    if spec is None:
        return []
    if isinstance(spec, list):
        if any(b <= a for a, b in zip(spec, spec[1:], strict=False)):
            raise ConfigError(f"training.milestones: {spec} is not strictly increasing")
        return list(spec)
    first, last = spec["first"], spec["last"]
    if last < first:
        raise ConfigError(f"training.milestones: last={last} is smaller than first={first}")
    out, step, value = [], first, first
    while value <= last:
        out.append(value)
        if value >= 10 * step:
            step *= 10
        value += step
    return out
