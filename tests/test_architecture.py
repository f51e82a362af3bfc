"""The package's imports run one way (docs/architecture.md): data -> models -> methods -> step ->
loop -> evaluation -> entry points, with no cycles; the test reads the source, so a new import
that points the wrong way fails here."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'simclr_jax')
# Lowest first; a module may import its own layer and the ones before it.
LAYERS = (
    ('defaults', 'checkpoint', 'metric_writer', 'parallel', 'xla_setup', 'time_budget'),
    ('data',),
    ('models',),
    ('methods',),
    ('optim', 'train_step', 'config_validation'),
    ('loop', 'train'),
    ('evaluation',),
    ('run', 'main', 'preview', 'convert'),
)


def _modules() -> dict[str, set[str]]:
  """module -> the simclr_jax modules it imports (anywhere in the file)."""
  graph = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')
      deps = set()
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('simclr_jax'):
          for alias in node.names:
            full = f'{node.module}.{alias.name}'
            is_module = (os.path.exists(os.path.join(ROOT, *full.split('.')) + '.py')
                         or os.path.isdir(os.path.join(ROOT, *full.split('.'))))
            deps.add(full if is_module else node.module)
        elif isinstance(node, ast.Import):
          deps.update(a.name for a in node.names if a.name.startswith('simclr_jax'))
      graph[module] = deps
  return graph


def _layer(module: str) -> int:
  top = module.split('.')[1] if module.count('.') else ''
  for i, names in enumerate(LAYERS):
    if top in names:
      return i
  raise AssertionError(f'{module} is in no layer of tests/test_architecture.py')


def test_every_module_has_a_layer():
  for module in _modules():
    if module != 'simclr_jax':
      _layer(module)


@pytest.mark.parametrize('module', sorted(m for m in _modules() if m != 'simclr_jax'))
def test_imports_point_down(module):
  for dep in _modules()[module]:
    if dep != 'simclr_jax':
      assert _layer(dep) <= _layer(module), f'{module} imports {dep}, a later layer'


def test_no_import_cycles():
  graph = _modules()
  for start in graph:
    seen, stack = set(), [start]
    while stack:
      for dep in graph.get(stack.pop(), ()):
        assert dep != start, f'import cycle through {start}'
        if dep not in seen:
          seen.add(dep)
          stack.append(dep)
