"""Checks Kubernetes objects against a CustomResourceDefinition the way the API server does:
the structural schema (types, enums, patterns, bounds, required and unknown fields, as with
`kubectl apply`'s strict field validation) with jsonschema, and the schema's
`x-kubernetes-validations` CEL rules with cel-python, which a JSON-Schema check skips.

The WasmPlugin rules call two functions of Kubernetes' CEL library, `isURL` and
`url(...).getScheme()`; both are built on Go's `url.ParseRequestURI`, which `_parse_request_uri`
follows (scheme syntax, opaque URIs, authority with a numeric port, valid %-escapes)."""

import copy
import re
from pathlib import Path

import celpy
import jsonschema
import yaml
from celpy import celtypes

NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Crd:
    def __init__(self, path, version):
        crd = yaml.safe_load(Path(path).read_text())
        self.group = crd["spec"]["group"]
        self.kind = crd["spec"]["names"]["kind"]
        self.version = version
        served = [v for v in crd["spec"]["versions"] if v["name"] == version]
        assert served, f"{path} has no version {version}"
        self.schema = served[0]["schema"]["openAPIV3Schema"]
        structural = _strict(copy.deepcopy(self.schema))
        structural.setdefault("properties", {}).update(
            {
                "apiVersion": {"const": f"{self.group}/{version}"},
                "kind": {"const": self.kind},
                "metadata": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 253, "pattern": NAME},
                        "namespace": {"type": "string", "maxLength": 63, "pattern": LABEL},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    "additionalProperties": False,
                },
            }
        )
        structural["required"] = sorted(set(structural.get("required", [])) | {"apiVersion", "kind", "metadata"})
        structural["additionalProperties"] = False
        self._validator = jsonschema.Draft202012Validator(structural)
        self._cel = celpy.Environment()
        self._programs = {}

    def errors(self, obj):
        """Every reason the API server would refuse `obj`, as `path: message` lines."""
        found = [f"{_path(e.absolute_path)}: {e.message}" for e in self._validator.iter_errors(obj)]
        if not found:  # CEL rules run on objects that are structurally valid, as in Kubernetes
            self._check_rules(self.schema, obj, "", found)
        return found

    def _check_rules(self, schema, value, path, found):
        for rule in schema.get("x-kubernetes-validations", []):
            if not self._holds(rule["rule"], value):
                found.append(f"{path or '<root>'}: {rule['message']}")
        if isinstance(value, dict):
            for name, child in value.items():
                sub = schema.get("properties", {}).get(name)
                if sub is None and isinstance(schema.get("additionalProperties"), dict):
                    sub = schema["additionalProperties"]
                if sub is not None:
                    self._check_rules(sub, child, f"{path}.{name}" if path else name, found)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, child in enumerate(value):
                self._check_rules(schema["items"], child, f"{path}[{index}]", found)

    def _holds(self, rule, value):
        program = self._programs.get(rule)
        if program is None:
            program = self._cel.program(self._cel.compile(rule), functions=KUBERNETES_CEL_LIBRARY)
            self._programs[rule] = program
        try:
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError:
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)


def _strict(schema):
    """Unknown fields are errors unless the schema keeps them; `nullable` allows null."""
    if not isinstance(schema, dict):
        return schema
    for key in ("properties",):
        if key in schema:
            schema[key] = {name: _strict(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            schema[key] = [_strict(sub) for sub in schema[key]]
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    return schema


def _path(parts):
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


_SCHEME_CHARS = re.compile(r"[A-Za-z0-9+.-]")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _parse_request_uri(text):
    """The scheme of `text` if Go's url.ParseRequestURI accepts it, else None."""
    if not text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    if text == "*":
        return ""
    scheme, rest = "", text
    for index, char in enumerate(text):
        if char.isascii() and char.isalpha():
            continue
        if _SCHEME_CHARS.fullmatch(char) and index > 0:
            continue
        if char == ":":
            if index == 0:
                return None  # "missing protocol scheme"
            scheme, rest = text[:index], text[index + 1 :]
        break
    rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        return scheme.lower() if scheme else None  # opaque ("mailto:x"), or relative: refused
    if scheme and rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        host = authority.rpartition("@")[2]
        if host.startswith("["):
            if "]" not in host:
                return None
            port = host[host.index("]") + 1 :]
            if port and not re.fullmatch(r":[0-9]*", port):
                return None
        elif ":" in host:
            host, _, port = host.rpartition(":")
            if not re.fullmatch(r"[0-9]*", port):
                return None
        if _PERCENT.search(host) or re.search(r"[\s<>\"{}|\\^`]", host):
            return None
    if _PERCENT.search(rest):
        return None
    return scheme.lower()


def _is_url(value):
    return celtypes.BoolType(_parse_request_uri(str(value)) is not None)


def _url(value):
    if _parse_request_uri(str(value)) is None:
        raise ValueError(f"URL parse error during conversion from string: {value}")
    return celtypes.StringType(value)


def _get_scheme(value):
    return celtypes.StringType(_parse_request_uri(str(value)) or "")


KUBERNETES_CEL_LIBRARY = {"isURL": _is_url, "url": _url, "getScheme": _get_scheme}
