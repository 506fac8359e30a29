"""The shape of the code: small modules, and storage that knows no recipe family."""

import ast
import pkgutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vggtool"
# every module of vggtool/compress but the machinery that holds no recipe family, and torch.ao's wrapper
MACHINERY = {"base", "artifact", "run", "labels", "studies"}
FAMILIES = {"vggtool.quant_ao"} | {
    f"vggtool.compress.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE / "compress")]) if m.name not in MACHINERY}


def imported(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("storage", ["checkpoint.py", "files.py", "compress/artifact.py"])
def test_storage_imports_no_quantization_or_pruning_module(storage):
    assert not imported(PACKAGE / storage) & FAMILIES


def test_the_families_are_found_by_listing_the_package():
    assert {"vggtool.compress.quant_torch", "vggtool.compress.structured", "vggtool.compress.quant_nncf"} <= FAMILIES


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from vggtool.quant_ao import make_quantized\n")
    assert imported(f) & FAMILIES


def test_no_module_passes_400_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > 400}
    assert sizes["cli.py"] < 400
