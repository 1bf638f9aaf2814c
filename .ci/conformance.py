"""Runs TF Serving's REST cases (../shared/conformance/tfs_cases.py) against our server.

  python .ci/conformance.py SHARED_DIR [WORK_DIR]

Makes an AlexNet and a ResNet export (a few steps on synthetic data: the cases compare our
answers with the same export run in process, so accuracy does not matter) and the toy export,
runs the cases on each, and fails when fewer than 95% match or when a case mismatches that is
not one of the deliberate differences README lists ("Where we differ from TF Serving").
"""

import os
import re
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# README, "Where we differ from TF Serving": JSON nested over 1,024 deep is refused.
DELIBERATE = {'A03', 'A04'}
TARGET = 0.95


def _free_port():
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _run(argv, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO)
  result = subprocess.run([sys.executable] + argv, cwd=REPO, env=env, capture_output=True,
                          text=True, **kwargs)
  if result.returncode not in (0, 1):
    sys.exit('%s failed:\n%s' % (' '.join(argv), result.stdout[-3000:] + result.stderr[-3000:]))
  return result


def main(shared, work):
  conformance = os.path.join(shared, 'conformance')
  exports = {'alexnet': os.path.join(work, 'alexnet_export'),
             'resnet': os.path.join(work, 'resnet_export'),
             'toy': os.path.join(work, 'toy_export')}
  _run(['-m', 'mnist_cnn.alexnet_main', '--use_synthetic_data', '--max_train_steps=3',
        '--train_epochs=1', '--model_dir=' + os.path.join(work, 'alexnet'),
        '--export_dir=' + exports['alexnet']], check=True)
  _run(['-m', 'mnist_cnn.resnet_main', '--use_synthetic_data', '--max_train_steps=2',
        '--num_filters=4', '--batch_size=8', '--model_dir=' + os.path.join(work, 'resnet'),
        '--export_dir=' + exports['resnet']], check=True)
  _run([os.path.join(conformance, 'make_toy_export.py'), exports['toy']], check=True)
  matched = total = 0
  unexpected = []
  for name, base in sorted(exports.items()):
    result = _run([os.path.join(conformance, 'tfs_cases.py'), base, str(_free_port())],
                  timeout=1200)
    summary = re.search(r'^(\d+)/(\d+) match', result.stdout, re.M)
    if not summary:
      sys.exit('tfs_cases.py printed no summary for %s:\n%s' % (name, result.stdout[-3000:] +
                                                                 result.stderr[-3000:]))
    matched += int(summary.group(1))
    total += int(summary.group(2))
    for line in result.stdout.splitlines():
      if line.startswith('MISMATCH'):
        print('%s: %s' % (name, line[:300]))
        if line.split()[1] not in DELIBERATE:
          unexpected.append('%s %s' % (name, line.split()[1]))
    print('%s: %s' % (name, summary.group(0)))
  print('conformance: %d/%d match (%.1f%%)' % (matched, total, 100.0 * matched / total))
  if unexpected or matched < TARGET * total:
    sys.exit('conformance: mismatches not listed as deliberate: %s' % (
        ', '.join(unexpected) or 'none, but under %.0f%%' % (100 * TARGET)))


if __name__ == '__main__':
  if len(sys.argv) not in (2, 3):
    sys.exit(__doc__)
  main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else tempfile.mkdtemp(prefix='tfs_'))
