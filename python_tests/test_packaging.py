"""Packaging: the declared dependencies cover every third-party import of the package, the console
scripts point at functions that exist, and every subpackage imports."""

import ast
import importlib
import importlib.metadata
import os
import pkgutil
import re
import sys

import pytest

import ssrvg_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_top_modules() -> set[str]:
    """Top-level module names of every import statement in the package (also inside functions)."""
    mods = set()
    for dirpath, _, files in os.walk(os.path.dirname(ssrvg_ext.__file__)):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(dirpath, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"ssrvg_ext", "__future__"}


def test_declared_dependencies_cover_imports():
    """Every import is a declared dependency, or one of the video extra's (imported inside the
    readers that need them, with a message naming the package when it is missing)."""
    project = pyproject()["project"]
    declared = {dist_name(r) for r in project["dependencies"] + project["optional-dependencies"]["video"]}
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for mod in sorted(imported_top_modules()):
        dists = {d.lower().replace("_", "-") for d in providers.get(mod, [])}
        assert dists, f"no installed distribution provides the imported module {mod!r}"
        if not dists & declared:
            missing[mod] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml [project.dependencies]: {missing}"


def test_requirements_txt_installs_what_pyproject_declares():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        listed = {dist_name(line.strip()) for line in f if line.strip() and not line.startswith("#")}
    project = pyproject()["project"]
    needed = {dist_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    assert needed <= listed, f"in pyproject.toml but not in requirements.txt: {sorted(needed - listed)}"


def test_console_scripts_resolve():
    for name, target in pyproject()["project"]["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_every_subpackage_imports():
    for info in pkgutil.walk_packages(ssrvg_ext.__path__, "ssrvg_ext."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


@pytest.mark.parametrize("tool", ["train", "eval", "demo", "export"])
def test_tools_scripts_are_the_console_tools(tool):
    """python tools/<tool>.py (the design's and detectron2's way) is ssrvg-<tool>: the same options."""
    import subprocess

    def helptext(args):
        r = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.split("\n", 1)[1]  # past the usage line's program name
    assert helptext([f"tools/{tool}.py"]) == helptext(["-m", f"ssrvg_ext.cli.{tool}"])
