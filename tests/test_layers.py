"""The one-way layering of docs/architecture.md, read from the source with ast: every import of a postembed_jax
module (top level or inside a function) must go to the same package, a lower layer, or a top-level helper module;
and the module graph has no cycle. A failure names the importing file, its line and the import."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "postembed_jax"

# Which packages each package may import (besides itself and the top-level helper modules).
ALLOWED = {
  "data": set(),
  "models": {"data"},
  "serving": {"models"},
  "evaluation": {"data", "models", "serving"},
  "train": {"data", "models", "evaluation"},
  "ablation": {"data", "models", "evaluation", "train"},
}


def _module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_name: str | None = None):
  """(line, imported module) for every postembed_jax import in the file, relative ones resolved."""
  tree = ast.parse(path.read_text(), filename=str(path))
  here = (module_name or _module_name(path)).split(".")
  is_pkg = path.name == "__init__.py"
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("postembed_jax"):
          yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = here if is_pkg else here[:-1]
        base = base[: len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ""
      if not module.startswith("postembed_jax"):
        continue
      # `from postembed_jax.data import tasks` imports the module postembed_jax.data.tasks.
      for alias in node.names:
        candidate = f"{module}.{alias.name}"
        yield node.lineno, candidate if _exists(candidate) else module


def _exists(module: str) -> bool:
  path = PACKAGE.parent / Path(*module.split("."))
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _layer(module: str) -> str | None:
  """The package (layer) of a module; None for top-level helper modules such as postembed_jax.compilation_cache."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def _graph():
  return {_module_name(p): list(_imports(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_package_is_assigned_a_layer():
  packages = {p.parent.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
  assert packages == set(ALLOWED), f"packages without a layer rule (add them to ALLOWED): {packages ^ set(ALLOWED)}"


def _violations(module: str, imports) -> list[str]:
  source = _layer(module)
  out = []
  for line, target in imports:
    dest = _layer(target)
    if source is None and dest is not None:
      out.append(f"{module}:{line} imports {target} (top-level helpers import no layer)")
    elif source is not None and dest is not None and dest != source and dest not in ALLOWED[source]:
      out.append(
        f"{module}:{line} imports {target} ({source} may import {sorted(ALLOWED[source]) or 'no other layer'})"
      )
  return out


def test_imports_only_go_down():
  upward = [v for m, deps in _graph().items() for v in _violations(m, deps)]
  assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
  graph = {m: {t for _, t in deps if t != m} for m, deps in _graph().items()}
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(module, path):
    state[module] = 1
    for dep in sorted(graph.get(module, ())):
      if dep not in graph:
        continue
      if state.get(dep) == 1:
        pytest.fail("import cycle: " + " -> ".join(path[path.index(dep) :] + [dep]))
      if dep not in state:
        visit(dep, path + [dep])
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])


def test_the_walk_catches_an_upward_import_inside_a_function(tmp_path):
  # The kind of import that once hid a cycle: train importing the ablation from inside a function body.
  fake = tmp_path / "fake.py"
  fake.write_text("import numpy\n\ndef f():\n  from postembed_jax.ablation import runner\n  from . import step\n")
  imports = list(_imports(fake, "postembed_jax.train.fake"))
  assert imports == [(4, "postembed_jax.ablation.runner"), (5, "postembed_jax.train.step")]
  assert _violations("postembed_jax.train.fake", imports) == [
    "postembed_jax.train.fake:4 imports postembed_jax.ablation.runner "
    "(train may import ['data', 'evaluation', 'models'])"
  ]
