"""Inventory of the Terraform tree as JSON, for the wiring checks in tests/infra.

Run with the tools venv's Python (it needs the ``hcl2`` parser, which the main venv
lacks): ``.venv-tools/bin/python terraform/scripts/hcl_inventory.py terraform``.
Prints one JSON object describing every directory that holds ``*.tf`` files: its
variables, outputs, locals (and where their blocks are), providers, resources, module
calls, the values in its ``*.tfvars.example`` files and the ``var.``, ``local.`` and
``module.`` references it makes. It judges nothing; the tests do.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import hcl2

# Attribute names of a module block that are meta-arguments, not module inputs.
MODULE_META_ARGUMENTS = {"source", "version", "providers", "count", "for_each", "depends_on"}

_VAR_REF = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
_LOCAL_REF = re.compile(r"\blocal\.([A-Za-z_][A-Za-z0-9_-]*)")
_MODULE_REF = re.compile(r"\bmodule\.([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*)")


class InventoryError(Exception):
    """A file could not be parsed; the message names it."""


def _unwrap(value: Any) -> Any:
    """The parser wraps every attribute value in a one-element list; take it out."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def _clean(value: Any) -> Any:
    """Drop the parser's line-number bookkeeping so values compare and print cleanly."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _strings(value: Any) -> list[str]:
    """Every string inside a parsed value, where references and expressions live."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        out: list[str] = []
        for k, v in value.items():
            out.append(str(k))
            out.extend(_strings(v))
        return out
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _parse(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            return hcl2.load(fh)
    except Exception as exc:  # the parser raises lark errors of many kinds
        raise InventoryError(f"{path}: cannot parse HCL: {exc}") from exc


def _variable(body: dict[str, Any]) -> dict[str, Any]:
    validations = [_clean(v) for v in body.get("validation", [])]
    return {
        "type": _unwrap(body["type"]) if "type" in body else None,
        "description": _unwrap(body.get("description")),
        "required": "default" not in body,
        "default": _clean(_unwrap(body["default"])) if "default" in body else None,
        "sensitive": bool(_unwrap(body.get("sensitive", False))),
        "validations": [
            {"condition": _unwrap(v.get("condition")), "error_message": _unwrap(v.get("error_message"))}
            for v in validations
        ],
    }


def inventory_directory(directory: Path, root: Path) -> dict[str, Any]:
    """Everything the checks need to know about one Terraform directory."""
    variables: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    locals_: set[str] = set()
    locals_blocks: list[dict[str, Any]] = []
    providers: dict[str, Any] = {}
    required_version: list[str] = []
    resources: list[str] = []
    data_sources: list[str] = []
    module_calls: dict[str, Any] = {}
    strings: list[str] = []

    for path in sorted(directory.glob("*.tf")):
        doc = _parse(path)
        for block in doc.get("variable", []):
            for name, body in block.items():
                variables[name] = _variable(body) | {"file": path.name}
        for block in doc.get("output", []):
            for name, body in block.items():
                outputs[name] = {
                    "description": _unwrap(body.get("description")),
                    "sensitive": bool(_unwrap(body.get("sensitive", False))),
                    "file": path.name,
                }
                strings.extend(_strings(_clean(body)))
        for block in doc.get("locals", []):
            locals_.update(k for k in block if not k.startswith("__"))
            locals_blocks.append(
                {
                    "file": path.name,
                    "start_line": block.get("__start_line__"),
                    "end_line": block.get("__end_line__"),
                }
            )
            strings.extend(_strings(_clean(block)))
        for block in doc.get("terraform", []):
            if "required_version" in block:
                required_version.append(_unwrap(block["required_version"]))
            for req in block.get("required_providers", []):
                for name, spec in _clean(req).items():
                    providers[name] = (spec[0] if isinstance(spec, list) else spec) | {"file": path.name}
        for block in doc.get("resource", []):
            for rtype, instances in block.items():
                for rname, body in instances.items():
                    resources.append(f"{rtype}.{rname}")
                    strings.extend(_strings(_clean(body)))
        for block in doc.get("data", []):
            for dtype, instances in block.items():
                for dname, body in instances.items():
                    data_sources.append(f"{dtype}.{dname}")
                    strings.extend(_strings(_clean(body)))
        for block in doc.get("module", []):
            for name, body in block.items():
                body = _clean(body)
                source = _unwrap(body.get("source"))
                resolved = (
                    (directory / source).resolve()
                    if isinstance(source, str) and source.startswith(".")
                    else None
                )
                module_calls[name] = {
                    "source": source,
                    "resolved": str(resolved.relative_to(root.resolve()))
                    if resolved and resolved.is_relative_to(root.resolve())
                    else None,
                    "inputs": {k: _unwrap(v) for k, v in body.items() if k not in MODULE_META_ARGUMENTS},
                    "file": path.name,
                }
                strings.extend(_strings(body))
        for block in doc.get("provider", []):
            strings.extend(_strings(_clean(block)))
        # Validation conditions may only use their own variable; scan them too.
        for block in doc.get("variable", []):
            for body in block.values():
                strings.extend(_strings(_clean(body.get("validation", []))))

    tfvars_examples = {
        path.name: {k: _clean(_unwrap(v)) for k, v in _parse(path).items() if not k.startswith("__")}
        for path in sorted(directory.glob("*.tfvars.example"))
    }

    text = "\n".join(strings)
    return {
        "files": sorted(p.name for p in directory.iterdir() if p.is_file()),
        "variables": variables,
        "outputs": outputs,
        "locals": sorted(locals_),
        "locals_blocks": locals_blocks,
        "required_providers": providers,
        "required_version": required_version,
        "resources": sorted(resources),
        "data_sources": sorted(data_sources),
        "module_calls": module_calls,
        "tfvars_examples": tfvars_examples,
        "var_refs": sorted(set(_VAR_REF.findall(text))),
        "local_refs": sorted(set(_LOCAL_REF.findall(text))),
        "module_output_refs": sorted({f"{m}.{o}" for m, o in _MODULE_REF.findall(text)}),
    }


def inventory(root: Path) -> dict[str, Any]:
    """Inventory of every directory under ``root`` that holds ``*.tf`` files."""
    directories = sorted({p.parent for p in root.rglob("*.tf") if ".terraform" not in p.parts})
    return {str(d.relative_to(root)): inventory_directory(d, root) for d in directories}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: hcl_inventory.py <terraform-root>", file=sys.stderr)
        return 2
    root = Path(argv[1])
    try:
        result = inventory(root)
    except InventoryError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=1, sort_keys=True, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
