"""The one export path: both signatures for every model, saved_model_cli, integer versions."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.serving import models
from official.utils import export
from tests import server_helpers

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')


@pytest.mark.parametrize('model', ['alexnet', 'resnet'])
def test_exports_have_both_signatures_with_the_same_outputs(exports, model):
  path = exports[model]
  assert os.path.basename(path).isdigit()
  assert sorted(os.listdir(path)) == ['assets.extra', 'saved_model.pb', 'variables']
  info = export.read_serving_info(path)
  assert info['compute_dtype'] == 'fp32'
  loaded = models.LoadedVersion(0, path)
  try:
    default = loaded.signatures[export.DEFAULT_SIGNATURE]
    by_bytes = loaded.signatures[server_helpers.BYTES_SIGNATURE]
    assert list(default.inputs) == ['images'] and list(by_bytes.inputs) == ['image_bytes']
    for signature in (default, by_bytes):
      assert sorted(signature.outputs) == ['classes', 'probabilities']
    images = server_helpers.images(3)
    from_floats = loaded.run(default, {'images': images})
    assert from_floats['classes'].dtype == np.int64
    assert from_floats['probabilities'].shape == (3, 10)
    assert from_floats['probabilities'].dtype == np.float32
    pngs = [tf.io.encode_png(tf.cast(tf.round(i * 255), tf.uint8)).numpy() for i in images]
    from_pngs = loaded.run(by_bytes, {'image_bytes': np.array(pngs, dtype=object)})
    np.testing.assert_allclose(from_pngs['probabilities'], from_floats['probabilities'],
                               atol=0.02)  # the PNGs round pixels to 1/255
    if model == 'alexnet':  # flat [N, 784] rows as well, as the report fed them
      flat = loaded.run(default, {'images': images.reshape(3, 784)})
      np.testing.assert_allclose(flat['probabilities'], from_floats['probabilities'], rtol=1e-6)
  finally:
    loaded.close_when_drained()


@pytest.mark.slow
def test_saved_model_cli_lists_and_runs_both_signatures(exports, tmp_path):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  shown = subprocess.run([cli, 'show', '--dir', exports['alexnet'], '--all'], env=ENV,
                         capture_output=True, text=True, timeout=300)
  assert shown.returncode == 0, shown.stderr
  assert "signature_def['serving_default']" in shown.stdout
  assert "signature_def['image_bytes:serving_default']" in shown.stdout
  np.save(str(tmp_path / 'x.npy'), server_helpers.images(2))
  ran = subprocess.run([cli, 'run', '--dir', exports['alexnet'], '--tag_set', 'serve',
                        '--signature_def', 'serving_default',
                        '--inputs', 'images=%s' % (tmp_path / 'x.npy')],
                       env=ENV, capture_output=True, text=True, timeout=300)
  assert ran.returncode == 0, ran.stderr
  assert 'probabilities' in ran.stdout and 'classes' in ran.stdout


def test_version_names_are_ascii_digits_within_int64(tmp_path):
  for name in ('\u00b2', '\u0663', '9' * 250, '9' * 19, '12a', '7'):
    (tmp_path / name).mkdir()
  assert export.existing_versions(str(tmp_path)) == [7]
  assert export.version_number(str(export.INT64_MAX)) == export.INT64_MAX
  assert export.next_version(str(tmp_path)) > 7
  path = export.export_atomically(str(tmp_path), lambda p: os.mkdir(p))
  assert os.path.isdir(path) and export.version_number(os.path.basename(path))
