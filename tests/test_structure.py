"""The loader's structure, as the README's Development section describes it: no import cycle
among its modules (imports inside functions count), no module over 500 lines, and every
module named in the README."""

import ast
import os

from conftest import LIBDIR, ROOT

PACKAGE = os.path.join(LIBDIR, "vpnfw")
MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")


def imports_of(module: str) -> set:
    """The package's modules this one imports, anywhere in it."""
    tree = ast.parse(open(os.path.join(PACKAGE, module + ".py")).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found & set(MODULES)


def test_no_import_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    cycles = []

    def visit(module, path):
        for other in sorted(graph[module]):
            if other in path:
                cycles.append(path[path.index(other):] + [other])
            elif other not in done:
                visit(other, path + [other])
        done.add(module)
    done = set()
    for module in MODULES:
        if module not in done:
            visit(module, [module])
    assert not cycles, cycles


def test_no_module_over_500_lines():
    long = {m: n for m in MODULES if (n := len(open(os.path.join(PACKAGE, m + ".py")).read().splitlines())) > 500}
    assert not long, long


def test_the_readme_names_every_module():
    readme = open(os.path.join(ROOT, "README.md")).read()
    development = readme[readme.index("## Development"):]
    missing = [m for m in MODULES if f"`{m}`" not in development]
    assert not missing, missing
