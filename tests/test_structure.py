"""The package's shape: dependencies point one way, no module reaches for another's private names, and imports
inside functions are kept for optional packages."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'composer_imp')
OPTIONAL = ('ffcv', 'streaming', 'torchvision', 'sklearn')


def _modules() -> dict[str, ast.Module]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                module = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
                found[module] = ast.parse(open(path).read())
    return found


def _imports(tree: ast.Module):
    """(imported module, imported name or None, inside a function?) for every import statement."""
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.module, alias.name, id(node) in nested
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, id(node) in nested


def test_no_import_cycles_and_no_private_names_across_modules():
    modules = _modules()
    edges = {m: set() for m in modules}
    private = []
    for module, tree in modules.items():
        for target, name, _ in _imports(tree):
            full = f'{target}.{name}' if name else target
            dep = full if full in modules else target
            while dep and dep not in modules:
                dep = dep.rpartition('.')[0]
            if not dep or dep == module or module == 'composer_imp' or module.startswith(dep + '.'):
                continue  # the package face re-exports; a subpackage may import its own package's face
            edges[module].add(dep)
            if name and name.startswith('_'):
                private.append(f'{module} imports {dep}.{name}')
    assert not private, private
    state, cycles = {}, []

    def visit(node, path):
        state[node] = 'open'
        for nxt in edges[node]:
            if nxt == 'composer_imp':
                continue
            if state.get(nxt) == 'open':
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 'done'

    for module in modules:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
    # The direction the docs promise: the components and the analysis never reach up into the YAML runner.
    yaml_layer = {'composer_imp.config', 'composer_imp.recipes', 'composer_imp.analyze', 'composer_imp.models'}
    below = ['composer_imp.imp', 'composer_imp.adaptive', 'composer_imp.level_loop', 'composer_imp.controls',
             'composer_imp.analysis', 'composer_imp.replicates', 'composer_imp.masks', 'composer_imp.evaluate',
             'composer_imp.lifecycle', 'composer_imp.criteria', 'composer_imp.run_folder', 'composer_imp.folder_lock',
             'composer_imp.rank_zero', 'composer_imp.stability']
    # The judgements and the run folder know nothing of training: they sit below the level lifecycle.
    for module in ('composer_imp.criteria', 'composer_imp.run_folder', 'composer_imp.folder_lock'):
        assert not edges[module] & {'composer_imp.lifecycle', 'composer_imp.level_loop', 'composer_imp.imp'}, module
    for module in below:
        assert not edges[module] & yaml_layer, (module, edges[module] & yaml_layer)


def test_imports_inside_functions_are_for_optional_packages_only():
    offenders = [(module, target) for module, tree in _modules().items() for target, _, inside in _imports(tree)
                 if inside and target.split('.')[0] not in OPTIONAL]
    assert not offenders, offenders
