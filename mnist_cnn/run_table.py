"""Prints a markdown table of finished runs beside the report's own figures.

  python -m mnist_cnn.run_table RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a --model_dir with the flags.json and metrics.json every main writes. Runs
that stopped early (interrupted, or no evaluation yet) are marked, not dropped.
"""

import json
import os
import sys

from official.utils.logs import run_record

# The report's accuracies by model and epochs. AlexNet's were measured on one 256-image test
# batch; ResNet's on the full test set.
REPORT_ACCURACY = {
    'alexnet': {5: 0.21875, 10: 0.58203125},
    'resnet': {1: 0.8677, 3: 0.9347, 6: 0.9541},
}


def summarize_run(run_dir):
  """Returns a dict describing one run directory (see `format_table` for the columns)."""
  name = os.path.basename(os.path.normpath(run_dir))
  flags_path = os.path.join(run_dir, run_record.FLAGS_FILE)
  if not os.path.exists(flags_path):
    return {'run': name, 'status': 'no flags.json'}
  with open(flags_path) as f:
    flags_values = json.load(f)
  records = run_record.read_metrics(run_dir)
  evals = [r for r in records if 'accuracy' in r]
  epochs = [r for r in records if 'seconds' in r]
  interrupted = any(r.get('event') == 'interrupted' for r in records)
  model = flags_values.get('model', '?')
  summary = {'run': name, 'model': model, 'target_epochs': flags_values.get('train_epochs')}
  if not evals:
    summary['status'] = 'interrupted' if interrupted else 'no evaluation'
    return summary
  last = evals[-1]
  summary.update(
      epochs=last.get('epoch'), accuracy=last['accuracy'],
      loss=last.get('train_loss_sum', last.get('cross_entropy', last.get('loss'))),
      seconds_per_epoch=(sum(r['seconds'] for r in epochs) / len(epochs)) if epochs else None,
      report=REPORT_ACCURACY.get(model, {}).get(last.get('epoch')),
      status='interrupted' if interrupted else 'ok')
  return summary


def _cell(value, fmt):
  return '-' if value is None else fmt % value


def format_table(summaries):
  lines = ['| run | model | epochs | final loss | test accuracy | report, same epochs | s/epoch | '
           'status |', '|---|---|---:|---:|---:|---:|---:|---|']
  for s in summaries:
    lines.append('| %s | %s | %s | %s | %s | %s | %s | %s |' % (
        s['run'], s.get('model', '?'), _cell(s.get('epochs'), '%d'),
        _cell(s.get('loss'), '%.4g'), _cell(s.get('accuracy'), '%.4f'),
        _cell(s.get('report'), '%.4f'), _cell(s.get('seconds_per_epoch'), '%.1f'),
        s['status']))
  return '\n'.join(lines)


def main(argv):
  if len(argv) < 2:
    sys.exit('usage: python -m mnist_cnn.run_table RUN_DIR [RUN_DIR ...]')
  try:
    print(format_table([summarize_run(d) for d in argv[1:]]))
  except ValueError as e:
    sys.exit('error: %s' % e)


if __name__ == '__main__':
  main(sys.argv)
