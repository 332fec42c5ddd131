"""models/ stays plain torch: no torch.distributed, no environment reads, no transformers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
BANNED_MODULES = ("torch.distributed", "transformers")
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _dotted(node: ast.AST) -> str | None:
    """'a.b.c' for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _banned(module: str) -> bool:
    return any(module == b or module.startswith(b + ".") for b in BANNED_MODULES)


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Lines of ``source`` that import a banned module or read the environment."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if _banned(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            full = [f"{node.module}.{a.name}" for a in node.names]
            if _banned(node.module) or any(_banned(f) for f in full):
                found.append(f"{where} from {node.module} import ...")
            if node.module == "os" and any(a.name in ENV_NAMES for a in node.names):
                found.append(f"{where} from os import environment access")
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name and (_banned(name) or (name.startswith("os.") and node.attr in ENV_NAMES)):
                found.append(f"{where} uses {name}")
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("__import__", "importlib.import_module"):
            args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            found += [f"{where} dynamic import {a}" for a in args if _banned(a) or a == "os"]
    return found


@pytest.mark.parametrize(
    "bad",
    [
        "import torch.distributed as dist",
        "import torch.distributed.rpc",
        "from torch.distributed import rpc",
        "from torch import distributed",
        "import torch\nx = torch.distributed.is_available()",
        "import os\nx = os.environ['HOME']",
        "import os\nx = os.environ.get('HOME')",
        "import os\nx = os.getenv('HOME')",
        "from os import environ",
        "from os import getenv as g",
        "from transformers import GPT2Model",
        "m = __import__('torch.distributed')",
    ],
)
def test_checker_catches(bad):
    assert violations(bad)


def test_checker_allows_plain_torch():
    assert violations("import os\nimport torch\nfrom torch import nn\np = os.path.join('a', 'b')") == []


def test_models_package_is_pure():
    files = sorted(MODELS_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"gpt2.py", "lora.py", "split.py", "loss.py"}
    found = [v for f in files for v in violations(f.read_text(), f.name)]
    assert found == [], "models/ must not use torch.distributed, transformers or the environment:\n" + "\n".join(found)
