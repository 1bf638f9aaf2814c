"""Every rule of docs/ARCHITECTURE.md, checked from the source: one direction between the
packages, the layers, serving and the tools beside them, who reads flags and who owns a run;
and the size limits issue 14 set (functions of at most 70 lines, a run loop of one job)."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('official', 'mnist_cnn')
MAX_FUNCTION_LINES = 70
MAX_RUN_LOOP_LINES = 450

# docs/ARCHITECTURE.md's layers, top to bottom; a module may import its own layer and those
# before it. Modules are named by prefix (a package names every module in it).
LAYERS = (
    ('data', ('official.data', 'mnist_cnn.input_data')),
    ('models', ('official.resnet.resnet_model', 'mnist_cnn.alexnet_model',
                'mnist_cnn.googlenet_model')),
    ('model_fn', ('official.utils.classifier_model_fn', 'official.utils.learning_rate',
                  'official.utils.precision', 'official.utils.weight_averages')),
    ('export', ('official.utils.export',)),
    ('lifecycle', ('official.utils.lifecycle', 'official.utils.run_dir',
                   'official.utils.batch_norm_statistics', 'official.utils.cluster_training',
                   'official.utils.distribution_utils', 'official.utils.session_config',
                   'official.utils.logs', 'official.utils.flags')),
    ('run loop', ('official.resnet.resnet_run_loop', 'official.resnet.resnet_flags')),
    ('entry points', ('official.resnet.cifar10_main', 'mnist_cnn.resnet_main',
                      'mnist_cnn.googlenet_main', 'mnist_cnn.alexnet_main')),
)
ENTRY_POINTS = dict(LAYERS)['entry points']
SERVING = ('mnist_cnn.serving', 'mnist_cnn.serve', 'mnist_cnn.predict')
SERVING_MAY_IMPORT = SERVING + ('official.utils.export', 'official.utils.precision')
TOOLS = ('mnist_cnn.report', 'mnist_cnn.launch_local_cluster')
TOOLS_MAY_IMPORT = ('official.utils.logs.run_record',)
# The commands beside the training mains: entry points of serving and of the tools.
COMMANDS = ('mnist_cnn.serve', 'mnist_cnn.predict', 'mnist_cnn.report',
            'mnist_cnn.launch_local_cluster')
# Where parsed flags may be read: the entry points, the Model Garden's resnet_main (and its
# flag-mutating helper, kept as the Model Garden had it), and the two helpers that turn flags
# into values for them.
FLAG_READERS = {
    ('official.resnet.resnet_run_loop', 'resnet_main'),
    ('official.resnet.resnet_run_loop', 'override_flags_and_set_envars_for_gpu_thread_pool'),
    ('official.utils.lifecycle', 'settings_from_flags'),
    ('official.utils.flags.core', 'flags_dict'),
}
# Who owns a run: prepares model_dir, writes its records and marks how it ended.
RUN_OWNERS = {('official.resnet.resnet_run_loop', '_Run'),
              ('official.resnet.resnet_run_loop', 'resnet_main'),
              ('mnist_cnn.alexnet_main', 'run_alexnet')}


def _modules():
  """{module name: parsed source} of every module of both packages."""
  found = {}
  for package in PACKAGES:
    for directory, _, names in os.walk(os.path.join(REPO, package)):
      for name in sorted(names):
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          module = os.path.relpath(path, REPO)[:-len('.py')].replace(os.sep, '.')
          module = module[:-len('.__init__')] if module.endswith('.__init__') else module
          with open(path) as f:
            found[module] = ast.parse(f.read())
  return found


MODULES = _modules()


def _imports(tree):
  """The project modules a module imports, wherever the import statement is."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        full = '%s.%s' % (node.module, alias.name)
        names.add(full if full in MODULES else node.module)
  return {name for name in names if name.split('.')[0] in PACKAGES and name in MODULES}


IMPORTS = {module: _imports(tree) for module, tree in MODULES.items()}


def _in(module, prefixes):
  return any(module == p or module.startswith(p + '.') for p in prefixes)


def _layer(module):
  for index, (_, prefixes) in enumerate(LAYERS):
    if _in(module, prefixes):
      return index
  return None


def _closure(module):
  seen, todo = set(), [module]
  while todo:
    for dependency in IMPORTS[todo.pop()] - seen:
      seen.add(dependency)
      todo.append(dependency)
  return seen


def test_every_module_has_a_place_in_the_document():
  placeless = [m for m in MODULES if m not in PACKAGES and m not in (
      'official.resnet', 'official.utils', 'official.utils.flags', 'official.utils.logs',
      'official.data', 'mnist_cnn.serving') and _layer(m) is None and not _in(
          m, SERVING + TOOLS)]
  assert placeless == []


def test_official_never_imports_mnist_cnn():
  assert {m: sorted(d for d in deps if d.startswith('mnist_cnn'))
          for m, deps in IMPORTS.items() if m.startswith('official')
          and any(d.startswith('mnist_cnn') for d in deps)} == {}


def test_each_layer_imports_only_its_own_and_those_before_it():
  upward = ['%s -> %s' % (m, d) for m, deps in IMPORTS.items() for d in deps
            if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)]
  assert upward == []


def test_no_entry_point_imports_another():
  assert [(m, d) for m in ENTRY_POINTS for d in IMPORTS[m] if d in ENTRY_POINTS] == []


def test_models_import_only_models():
  models = dict(LAYERS)['models']
  assert {m: sorted(IMPORTS[m]) for m in models if not IMPORTS[m] <= set(models)} == {}


def test_serving_knows_nothing_of_training_and_tools_only_read_records():
  assert {m: sorted(d for d in deps if not _in(d, SERVING_MAY_IMPORT))
          for m, deps in IMPORTS.items() if _in(m, SERVING)
          and not all(_in(d, SERVING_MAY_IMPORT) for d in deps)} == {}
  assert {m: sorted(IMPORTS[m]) for m in MODULES if _in(m, TOOLS)
          and not all(_in(d, TOOLS_MAY_IMPORT) for d in IMPORTS[m])} == {}


@pytest.mark.parametrize('module', ['mnist_cnn.alexnet_main', 'mnist_cnn.input_data',
                                    'official.data.datasets'])
def test_alexnet_and_the_data_layer_load_no_estimator_or_cluster_code(module):
  loaded = _closure(module)
  assert not [m for m in loaded if m.startswith('official.resnet') or m in (
      'official.utils.distribution_utils', 'official.utils.cluster_training',
      'official.utils.classifier_model_fn', 'official.utils.batch_norm_statistics')]


def _functions(tree):
  """(qualified name, node) of every function and class, outermost name first."""
  def visit(node, prefix):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield prefix + child.name, child
        yield from visit(child, prefix + child.name + '.')
      else:
        yield from visit(child, prefix)
  return list(visit(tree, ''))


def test_only_entry_points_and_resnet_main_read_parsed_flags():
  readers = set()
  for module, tree in MODULES.items():
    for name, node in _functions(tree):
      if isinstance(node, ast.ClassDef):
        continue
      arguments = [a.arg for a in node.args.args + node.args.kwonlyargs]
      reads_global = any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
                         and n.value.attr == 'FLAGS' for n in ast.walk(node))
      if 'flags_obj' in arguments or reads_global:
        readers.add((module, name.split('.')[0]))
  others = {(m, f) for m, f in readers if m not in ENTRY_POINTS + COMMANDS} - FLAG_READERS
  assert others == set()


def test_one_owner_per_run_prepares_model_dir_and_marks_its_ending():
  owners = set()
  for module, tree in MODULES.items():
    for name, node in _functions(tree):
      for call in ast.walk(node):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id == 'lifecycle'
            and call.func.attr in ('start', 'prepare', 'recording')):
          owners.add((module, name.split('.')[0]))
  assert owners == RUN_OWNERS


def test_the_estimator_mains_run_through_resnet_main():
  for module in ENTRY_POINTS:
    if module != 'mnist_cnn.alexnet_main':
      calls = {n.func.attr for n in ast.walk(MODULES[module]) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute)}
      assert 'resnet_main' in calls and 'official.resnet.resnet_run_loop' in IMPORTS[module]


def test_no_function_in_the_library_is_over_70_lines():
  long_ones = ['%s.%s (%d lines)' % (module, name, node.end_lineno - node.lineno + 1)
               for module, tree in MODULES.items() for name, node in _functions(tree)
               if not isinstance(node, ast.ClassDef)
               and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert long_ones == []


def test_the_run_loop_stays_one_job():
  with open(os.path.join(REPO, 'official', 'resnet', 'resnet_run_loop.py')) as f:
    assert len(f.read().splitlines()) <= MAX_RUN_LOOP_LINES
