"""The documentation cannot drift: every repository path, module and flag that README.md and
docs/*.md name exists (a flag in the --helpfull of the command it is shown with), every
console command answers --help, and README's quick start runs as written, on tiny data, giving
the output it shows.

A doc that names a moved file, a renamed module or a dropped flag fails here, naming the doc,
the line and the name.
"""

import functools
import glob
import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

from mnist_cnn import launch_local_cluster
from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)
DOCS = ['README.md'] + sorted(os.path.relpath(p, REPO)
                              for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))
BIN = os.path.dirname(sys.executable)
# What a command line in a doc runs: a console command, a module, a script or a benchmark.
SCRIPT_MAINS = {'run_alexnet.sh': 'mnist_cnn.alexnet_main', 'run_resnet.sh':
                'mnist_cnn.resnet_main', 'run_googlenet.sh': 'mnist_cnn.googlenet_main'}
PLACEHOLDER = re.compile(r'[<>*{}$]|\.\.\.|\b(DIR|NAME|FILE|PATH|EXPORT|VERSION)\b')
# Flags of other programs the docs quote: TF Serving's (compared with the server's),
# saved_model_cli's, pytest's and pip's (`--no-deps`).
FOREIGN_FLAGS = frozenset(['max_num_load_retries', 'load_retry_interval_micros',
                           'grpc_channel_arguments', 'grpc_max_threads', 'dir', 'all',
                           'dist', 'no'])
# A --flag in a command or code span; flags are lower case, so --X in `--X=V` is a placeholder.
FLAG = re.compile(r'(?<![\w-])--([a-z0-9_]+)')
# absl's own flags, which every command takes.
ABSL_FLAGS = frozenset(['flagfile', 'undefok', 'help', 'helpshort', 'helpfull', 'helpxml',
                        'only_check_args', 'logtostderr', 'verbosity'])


def _commands():
  """{console command: module} as setup.py declares them."""
  with open(os.path.join(REPO, 'setup.py')) as f:
    source = f.read()
  block = source[source.index('COMMANDS = {'):source.index('}', source.index('COMMANDS = {'))]
  return dict(re.findall(r"'([\w-]+)': '([\w.]+)'", block))


COMMANDS = _commands()


def _docs():
  """(doc, line number, text, in a code block) of every line of every doc."""
  for doc in DOCS:
    fenced = False
    with open(os.path.join(REPO, doc), encoding='utf-8') as f:
      for number, line in enumerate(f, 1):
        if line.lstrip().startswith('```'):
          fenced = not fenced
          continue
        yield doc, number, line.rstrip('\n'), fenced


def _prose():
  """(doc, line number, inline code) of every `code span` outside code blocks, spans that a
  line break cuts joined (a paragraph at a time)."""
  paragraph = []
  for doc, number, line, fenced in list(_docs()) + [(None, 0, '', False)]:
    if fenced or not line.strip():
      if paragraph:
        text = ' '.join(l for _, _, l in paragraph)
        for span in re.findall(r'`([^`]+)`', text):
          yield paragraph[0][0], paragraph[0][1], span
      paragraph = []
    else:
      paragraph.append((doc, number, line))


def _tokens(text):
  return [t.strip('.,;:()[]"\'') for t in re.split(r'[\s=,(]+', text) if t]


TOP_LEVEL = sorted(os.listdir(REPO))


def _is_repo_path(token):
  if PLACEHOLDER.search(token) or token.startswith(('/', '~', 'http', '-')):
    return False
  first = token.split('/')[0]
  return first in TOP_LEVEL and (token != first or '.' in first)


def _named_paths():
  """(doc, line, path) of every repository path in inline code, code blocks and links."""
  for doc, number, text in _code_texts():
    for token in _tokens(text):
      if _is_repo_path(token):
        yield doc, number, token
  for doc, number, line, fenced in _docs():
    if not fenced:
      for target in re.findall(r'\]\(([^)#\s]+)', line):
        if not target.startswith(('http://', 'https://', 'mailto:')):
          yield doc, number, os.path.normpath(os.path.join(os.path.dirname(doc), target))


def _code_texts():
  """(doc, line number, text) of every code block line and every inline code span."""
  for doc, number, line, fenced in _docs():
    if fenced:
      yield doc, number, line
  yield from _prose()


def _slug(heading):
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(doc):
  with open(os.path.join(REPO, doc), encoding='utf-8') as f:
    return {_slug(line.lstrip('#')) for line in f if line.startswith('#')}


def test_every_link_to_a_section_finds_it():
  broken = []
  for doc, number, line, fenced in _docs():
    if fenced:
      continue
    for target, anchor in re.findall(r'\]\(([^)#\s]*)#([^)\s]+)\)', line):
      linked = os.path.normpath(os.path.join(os.path.dirname(doc), target)) if target else doc
      if linked.endswith('.md') and anchor not in _anchors(linked):
        broken.append('%s:%d %s#%s' % (doc, number, target, anchor))
  assert broken == [], '\n'.join(broken)


def test_every_path_the_docs_name_exists():
  missing = ['%s:%d %s' % (doc, number, path) for doc, number, path in _named_paths()
             if not os.path.exists(os.path.join(REPO, path.rstrip('/')))]
  assert missing == [], '\n'.join(missing)


MODULE = re.compile(r'^(?:mnist_cnn|official|benchmarks)(?:\.\w+)+$')


@functools.lru_cache(maxsize=None)
def _resolves(dotted):
  """Whether dotted is an importable module, or a module's attribute (with attributes of
  attributes: Class.method)."""
  parts = dotted.split('.')
  for cut in range(len(parts), 0, -1):
    try:
      value = importlib.import_module('.'.join(parts[:cut]))
    except ImportError:
      continue
    try:
      for name in parts[cut:]:
        value = getattr(value, name)
    except AttributeError:
      return False
    return True
  return False


def _project_modules():
  """{module's last name: its dotted name} of the packages' modules (input_data ->
  mnist_cnn.input_data), for the short `resnet_run_loop.resnet_main` form the docs use."""
  found = {}
  for package in ('official', 'mnist_cnn'):
    for path in glob.glob(os.path.join(REPO, package, '**', '*.py'), recursive=True):
      dotted = os.path.relpath(path, REPO)[:-len('.py')].replace(os.sep, '.')
      found.setdefault(dotted.rsplit('.', 1)[-1], dotted)
  return found


def _named_modules():
  short = _project_modules()
  for doc, number, text in _code_texts():
    for module in re.findall(r'-m\s+([\w.]+)', text):
      yield doc, number, module
    for token in _tokens(text):
      token = token.split('(')[0]
      if MODULE.match(token):
        yield doc, number, token
      elif '.' in token and token.split('.')[0] in short and re.match(r'^[\w.]+$', token):
        head, rest = token.split('.', 1)
        if not rest.startswith(('py', 'flags', 'json', 'md', 'sh')):
          yield doc, number, '%s.%s' % (short[head], rest)


def test_every_module_and_name_the_docs_name_imports():
  unresolved = ['%s:%d %s' % named for named in _named_modules() if not _resolves(named[2])]
  assert unresolved == [], '\n'.join(unresolved)


def _command_flags(module_name):
  """The flags a command defines: its run_command's define function, called on a fresh
  FlagValues."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(module_name)
  define = re.search(r'(define_\w+)\(\)', inspect.getsource(module.run_command)).group(1)
  flag_values = flags.FlagValues()
  getattr(module, define)(flag_values)
  return frozenset(flag_values) | ABSL_FLAGS


def _helpfull(program):
  """The flag names a benchmark lists: absl's `--helpfull`, or argparse's `--help` (program:
  an argv list)."""
  result = subprocess.run(program + ['--helpfull'], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=300)
  listed = re.findall(r'--(?:\[no\])?(\w+):', result.stdout)
  if listed:  # absl prints its help and exits 1
    return frozenset(listed)
  result = subprocess.run(program + ['--help'], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return frozenset(re.findall(r'--([a-z0-9_]+)', result.stdout))


class KnownFlags(dict):
  """{what runs (a console command, a module or benchmarks/<file>.py): the flags it takes};
  None: the union of the commands'. A benchmark's are read from its --helpfull when asked."""

  def __missing__(self, program):
    self[program] = _helpfull([sys.executable, os.path.join(REPO, program)])
    return self[program]


@pytest.fixture(scope='module')
def known_flags():
  found = KnownFlags()
  for name, module in COMMANDS.items():
    found[name] = found[module] = _command_flags(module)
  found[None] = frozenset().union(*found.values())
  return found


def _program_of(command_line):
  """What a doc's command line runs (a key of known_flags), or None for anything else."""
  words = command_line.split()
  for index, word in enumerate(words):
    name = os.path.basename(word)
    if name in COMMANDS:
      return name
    if word == '-m' and index + 1 < len(words) and words[index + 1] in COMMANDS.values():
      return words[index + 1]
    if name in SCRIPT_MAINS:
      return SCRIPT_MAINS[name]
    if word.startswith('benchmarks/') and word.endswith('.py'):
      return word
  return None


def _command_lines():
  """(doc, line number, command line) of each command in the docs' code blocks, continuation
  lines joined; a cluster launcher's line is split at `--` (what follows goes to a main)."""
  pending = None
  for doc, number, line, fenced in _docs():
    if not fenced:
      pending = None
      continue
    text = line.split(' #')[0]
    if pending:
      pending = (pending[0], pending[1], pending[2] + ' ' + text.rstrip('\\'))
    else:
      pending = (doc, number, text.rstrip('\\'))
    if not text.rstrip().endswith('\\'):
      yield pending
      pending = None


def _anyone_takes(known_flags, flag):
  """Whether a command or a benchmark takes flag, or it is another program's the docs quote."""
  if flag in known_flags[None] or flag in FOREIGN_FLAGS:
    return True
  return any(flag in known_flags['benchmarks/' + os.path.basename(path)]
             for path in sorted(glob.glob(os.path.join(REPO, 'benchmarks', '*.py')))
             if not path.endswith('__init__.py'))


def _wrong_flags(known_flags, doc, number, line):
  """The flags of one command that its program does not take."""
  program = _program_of(line)
  if program is None:
    return []
  wrong = []
  own, _, passed_on = line.partition(' -- ')
  for part, takes in ((own, known_flags[program]),
                      (passed_on, known_flags['mnist_cnn.resnet_main'])):
    for flag in FLAG.findall(part):
      if flag not in takes and flag not in ('helpfull', 'help', 'helpshort'):
        wrong.append('%s:%d --%s (not a flag of %s)' % (doc, number, flag, program))
  return wrong


@pytest.mark.slow
def test_every_flag_the_docs_show_is_one_its_command_takes(known_flags):
  wrong = []
  for doc, number, whole_line in _command_lines():
    for line in re.split(r'&&|;|\|', whole_line):  # each command of the line on its own
      wrong += _wrong_flags(known_flags, doc, number, line)
  for doc, number, code in _prose():
    program = _program_of(code)
    for flag in FLAG.findall(code):
      if not (flag in known_flags[program] if program else _anyone_takes(known_flags, flag)):
        wrong.append('%s:%d --%s (no command takes it)' % (doc, number, flag))
  assert wrong == [], '\n'.join(wrong)


@pytest.mark.slow
@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_every_console_command_answers_help(command):
  result = subprocess.run([os.path.join(BIN, command), '--help'], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=300)
  # absl's --help prints the usage and the command's flags, then exits 1.
  assert 'USAGE: %s' % os.path.join(BIN, command) in result.stdout, result.stderr[-2000:]
  assert '--' in result.stdout and 'Traceback' not in result.stderr


def _quick_start():
  """README's quick start: [(kind, text)] of its code blocks, in order ('bash', 'python' or
  'text', the output the commands before it print)."""
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    readme = f.read()
  section = readme[readme.index('\n## Quick start'):]
  section = section[:section.index('\n## ', 1)]
  return re.findall(r'```(\w+)\n(.*?)```', section, re.S)


def _expected(line):
  """A regular expression for an output line the docs show: numbers may differ, and `...`
  stands for anything."""
  pattern = re.escape(line.strip())
  pattern = re.sub(r'\\\.\\\.\\\.', '.*', pattern)
  return re.sub(r'\d+(?:\\\.\d+)?(?:e[-+]?\d+)?', r'[-+]?\\d+(?:\\.\\d+)?(?:e[-+]?\\d+)?',
                pattern)


@pytest.mark.slow
def test_the_quick_start_runs_as_written_and_prints_what_it_shows(tmp_path):
  blocks = _quick_start()
  assert {'bash', 'python', 'text'} <= {kind for kind, _ in blocks}
  data_dir = str(tmp_path / 'mnist_data')
  conftest.write_idx_dir(data_dir, num_train=400, num_test=100, learnable=True)
  work = str(tmp_path / 'quickstart')
  port, grpc_port = (str(p) for p in launch_local_cluster.free_ports(2))  # distinct
  script, expected = ['set -euo pipefail'], []
  for kind, text in blocks:
    # Smoke mode: tiny data instead of MNIST, this test's directory and port, this Python.
    text = (text.replace('/tmp/mnist_data', data_dir).replace('/tmp/quickstart', work)
            .replace(':8501', ':' + port).replace('=8501', '=' + port)
            .replace(':8500', ':' + grpc_port).replace('=8500', '=' + grpc_port)
            .replace('.venv/bin/', BIN + '/'))
    if kind == 'bash':
      script.append(text)
    elif kind == 'python':
      script.append('%s - <<\'PYTHON_BLOCK\'\n%sPYTHON_BLOCK' % (sys.executable, text))
    else:
      expected.extend(line for line in text.splitlines() if line.strip())
  result = subprocess.run(['bash', '-c', '\n'.join(script)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=600)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-4000:]
  missing = [line for line in expected if not re.search(_expected(line), output)]
  assert missing == [], output[-4000:]
