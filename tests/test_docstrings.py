"""Docstrings of the library API: present, Google style, and in step with the signatures."""

from __future__ import annotations

import importlib
import inspect
import re
from types import FunctionType

import pytest

# The modules of the estimators, analyses, files, triplets and features.
API_MODULES = [
    "dimalign.embedding.base",
    "dimalign.embedding.vice",
    "dimalign.embedding.spose",
    "dimalign.embedding.runs",
    "dimalign.analysis.evaluate",
    "dimalign.analysis.similarity",
    "dimalign.analysis.rsa",
    "dimalign.analysis.compare",
    "dimalign.analysis.matching",
    "dimalign.analysis.relevance",
    "dimalign.analysis.ridge",
    "dimalign.analysis.noise_ceiling",
    "dimalign.analysis.things48",
    "dimalign.io.triplets",
    "dimalign.io.features",
    "dimalign.io.runs",
    "dimalign.io.objects",
    "dimalign.triplets.sampling",
    "dimalign.triplets.simulate",
    "dimalign.features.models",
    "dimalign.features.extract",
    "dimalign.features.datasets",
    "dimalign.features.layers",
    "dimalign.interpret.predictor",
    "dimalign.interpret.gradcam",
    "dimalign.interpret.maximize",
    "dimalign.interpret.manipulate",
    "dimalign.interpret.grid_images",
    "dimalign.interpret.grids",
]

# The names that the packages export, and the file functions that docs/ uses:
# each of these documents every parameter in an Args section.
DOCUMENTED_PACKAGES = [
    "dimalign.embedding", "dimalign.analysis", "dimalign.triplets", "dimalign.features", "dimalign.interpret",
]
DOCUMENTED_FUNCTIONS = [
    "dimalign.io.triplets.load_triplets",
    "dimalign.io.triplets.save_triplets",
    "dimalign.io.triplets.split_triplets",
    "dimalign.io.runs.load_embedding",
    "dimalign.io.runs.save_embedding",
    "dimalign.io.features.load_features",
    "dimalign.io.objects.read_object_table",
    "dimalign.io.objects.write_object_table",
    "dimalign.analysis.rsa.rsa",
    "dimalign.analysis.rsa.correlate_vectors",
    "dimalign.analysis.rsa.upper_triangle",
    "dimalign.analysis.compare.compare",
    "dimalign.analysis.similarity.dot_similarity",
]

SECTION = re.compile(r"^(?P<indent>\s*)(Args|Arguments|Parameters):\s*$")
ATTRIBUTES = re.compile(r"^(?P<indent>\s*)Attributes:\s*$")
# "name (type): text"; "*args (type)" and "**kwargs (type)" too.
ENTRY = re.compile(r"^\s*\*{0,2}(?P<name>\w+) \((?P<type>[^)]*(\([^)]*\))?[^)]*)\):")


def public_members() -> list[tuple[str, object]]:
    """Return (qualified name, object) of the public functions, classes and methods defined in API_MODULES."""
    members = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module_name:
                continue
            if not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            members.append((f"{module_name}.{name}", value))
            if inspect.isclass(value):
                members += [
                    (f"{module_name}.{name}.{method_name}", method)
                    for method_name, method in vars(value).items()
                    if not method_name.startswith("_") and inspect.isfunction(method)
                ]
    return members


def args_section(docstring: str, section: re.Pattern = SECTION) -> list[str] | None:
    """Return the entry lines of the Args section (or another ``section``), or None when there is none."""
    lines = docstring.splitlines()
    for number, line in enumerate(lines):
        match = section.match(line)
        if not match:
            continue
        outer = len(match.group("indent"))
        entries, entry_indent = [], None
        for entry in lines[number + 1:]:
            if not entry.strip():
                continue
            indent = len(entry) - len(entry.lstrip())
            if indent <= outer:
                break
            entry_indent = indent if entry_indent is None else entry_indent
            if indent == entry_indent:
                entries.append(entry)
        return entries
    return None


def parameters(value: object) -> list[str]:
    """Return the parameter names a caller passes (without self and cls)."""
    function = value.__init__ if inspect.isclass(value) else value
    return [name for name in inspect.signature(function).parameters if name not in ("self", "cls")]


def docstring_of(value: object) -> str:
    """Return the docstring that documents the arguments: a class's own, then its __init__'s."""
    text = inspect.getdoc(value) or ""
    if inspect.isclass(value) and "__init__" in vars(value) and args_section(text) is None:
        text += "\n" + (inspect.getdoc(value.__init__) or "")
    return text


def documented_objects() -> list[tuple[str, object]]:
    objects = []
    for package_name in DOCUMENTED_PACKAGES:
        package = importlib.import_module(package_name)
        objects += [(f"{package_name}.{name}", getattr(package, name)) for name in package.__all__]
    for dotted in DOCUMENTED_FUNCTIONS:
        module_name, name = dotted.rsplit(".", 1)
        objects.append((dotted, getattr(importlib.import_module(module_name), name)))
    objects = [(name, value) for name, value in objects if inspect.isfunction(value) or inspect.isclass(value)]
    # The public methods of an exported class, such as fit and predict, are API too.
    methods = [
        (f"{name}.{method_name}", getattr(value, method_name))
        for name, value in objects if inspect.isclass(value)
        for method_name, method in vars(value).items()
        if not method_name.startswith("_") and isinstance(method, (FunctionType, classmethod, staticmethod))
    ]
    return objects + methods


def test_members_are_found():
    names = {name for name, _ in public_members()}
    assert {"dimalign.embedding.vice.VICE", "dimalign.analysis.rsa.rsa", "dimalign.io.triplets.load_triplets"} <= names


@pytest.mark.parametrize(("name", "value"), public_members(), ids=lambda item: item if isinstance(item, str) else "")
def test_public_member_has_docstring(name, value):
    assert (inspect.getdoc(value) or "").strip(), f"{name} has no docstring"


def is_dataclass(value: object) -> bool:
    return getattr(value, "__dataclass_fields__", None) is not None


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, value in public_members() if not is_dataclass(value)],
    ids=lambda item: item if isinstance(item, str) else "",
)
def test_args_section_matches_signature(name, value):
    """An Args section lists every parameter once, in signature order, each with a type."""
    entries = args_section(docstring_of(value))
    if entries is None:
        return
    untyped = [entry.strip() for entry in entries if not ENTRY.match(entry)]
    assert not untyped, f"{name}: Args entries without 'name (type):': {untyped}"
    documented = [ENTRY.match(entry).group("name") for entry in entries]
    assert documented == parameters(value), f"{name}: Args {documented}, signature {parameters(value)}"


@pytest.mark.parametrize(("name", "value"), documented_objects(), ids=lambda item: item if isinstance(item, str) else "")
def test_exported_callable_documents_its_arguments(name, value):
    if is_dataclass(value) or not parameters(value):
        return
    assert args_section(docstring_of(value)) is not None, f"{name} has parameters but no Args section"


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, value in public_members() if is_dataclass(value)],
    ids=lambda item: item if isinstance(item, str) else "",
)
def test_dataclass_attributes_match_fields(name, value):
    """A dataclass documents its fields under Attributes, in field order, each with a type."""
    entries = args_section(inspect.getdoc(value) or "", ATTRIBUTES)
    assert entries is not None, f"{name} has no Attributes section"
    untyped = [entry.strip() for entry in entries if not ENTRY.match(entry)]
    assert not untyped, f"{name}: Attributes entries without 'name (type):': {untyped}"
    documented = [ENTRY.match(entry).group("name") for entry in entries]
    assert documented == list(value.__dataclass_fields__), f"{name}: Attributes {documented}, fields {list(value.__dataclass_fields__)}"
