"""The layout's boundaries: the core imports no web or RPC framework, no module is over 400 lines,
the card package imports neither the service nor training, and the service never imports
training."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "modelcard", "training")
MOST_LINES = 400
FRAMEWORKS = {"flask", "werkzeug", "gunicorn", "grpc", "grpc_health", "grpc_reflection"}


def modules(package: str) -> list[Path]:
    """The package's own modules; the gRPC stubs generated from the .proto are not written here."""
    return sorted(path for path in (ROOT / package).rglob("*.py") if "_pb2" not in path.name)


def imported(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, anywhere in it (functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_imports_no_web_or_rpc_framework():
    """Every module of service.core, imported in a fresh interpreter, loads none of them."""
    program = (
        "import importlib, json, pkgutil, sys\n"
        "import service.core\n"
        "names = [m.name for m in pkgutil.walk_packages(service.core.__path__, 'service.core.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'imported': names, 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    found = json.loads(result.stdout.splitlines()[-1])
    assert {"service.core.dataplane", "service.core.errors", "service.core.types"} <= set(found["imported"])
    assert not FRAMEWORKS & set(found["loaded"]), f"service.core loads {FRAMEWORKS & set(found['loaded'])}"


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(ROOT)): lines for package in PACKAGES for path in modules(package)
            if (lines := len(path.read_text().splitlines())) > MOST_LINES}
    assert not long, f"over {MOST_LINES} lines: {long}"


def test_the_card_package_imports_neither_the_service_nor_training():
    found = {str(path.relative_to(ROOT)): names for path in modules("modelcard")
             if (names := imported(path) & {"service", "training"})}
    assert not found, found


def test_the_service_never_imports_training():
    found = [str(path.relative_to(ROOT)) for path in modules("service") if "training" in imported(path)]
    assert not found, found
