"""Trains AlexNet on MNIST with the report's placeholder + Session loop.

  python -m mnist_cnn.alexnet_main --data_dir=DIR --model_dir=DIR [--train_epochs=10 ...]

Defaults are the report's settings (Adadelta, learning rate 0.02, batch 100, 10 epochs, keep
probability 0.8). After every epoch it prints the summed training loss, the accuracy on the
full test set, seconds per epoch and examples/second; it checkpoints every epoch, resumes
from the latest checkpoint in --model_dir, and writes flags.json and metrics.json there.
"""

import os
import shutil
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from mnist_cnn import alexnet_model
from mnist_cnn import cli
from mnist_cnn import input_data
from official.utils import export
from official.utils import interrupt
from official.utils import precision
from official.utils import run_dir
from official.utils.flags import core as flags_core
from official.utils.logs import hooks_helper
from official.utils.logs import run_record

MODEL_NAME = 'alexnet'
CHECKPOINT_PREFIX = 'model.ckpt'
MAX_CHECKPOINTS = 3


def define_alexnet_flags(flag_values=flags.FLAGS):
  """Shared flags plus AlexNet's own, with the report's values as defaults."""
  flags_core.define_base_flags(flag_values)
  fv = {'flag_values': flag_values}
  flags.DEFINE_float('learning_rate', 0.02, 'Base learning rate.', **fv)
  flags.DEFINE_enum('optimizer', 'adadelta', list(alexnet_model.OPTIMIZERS),
                    'Optimizer (the report used Adadelta).', **fv)
  flags.DEFINE_float('dropout', 0.8,
                     'Keep probability of the dense layers during training (the report\'s '
                     '"dropout"), in (0, 1].', **fv)
  flags.DEFINE_enum('init', 'he', list(alexnet_model.INITIALIZERS),
                    'Weight initialisation: he (seeded, scaled to ReLU) or report (normal with '
                    'stddev 1, as the report did).', **fv)
  flags.DEFINE_integer('eval_batch_size', 1000, 'Batch size for test-set evaluation.', **fv)
  flags.DEFINE_integer('validation_size', input_data.DEFAULT_VALIDATION_SIZE,
                       'Training examples held out as the validation split (the report\'s '
                       'input_data held out 5000, leaving 55,000 to train on).', **fv)
  flags.DEFINE_float('lr_decay_epochs', None,
                     'Multiply the learning rate by --lr_decay_rate every this many epochs.',
                     **fv)
  flags.DEFINE_float('lr_decay_rate', 0.5, 'Factor of each learning-rate decay step.', **fv)
  flags.DEFINE_enum('dtype', 'fp32', ['fp32', 'bf16'],
                    'Compute precision. bf16: TensorFlow\'s oneDNN auto-mixed-precision rewrite '
                    'runs matmuls and convolutions in bfloat16; variables, updates and the loss '
                    'stay float32 (see --bf16_fallback).', **fv)
  flags.DEFINE_boolean('report_words', False,
                       'Print the per-epoch loss and the final accuracy in the report\'s own '
                       'words (第 N 轮的熵损失 / 命中率).', **fv)
  flags.register_validator('learning_rate', lambda v: v > 0,
                           message='--learning_rate must be positive', **fv)
  flags.register_validator('dropout', lambda v: 0 < v <= 1,
                           message='--dropout is a keep probability and must be in (0, 1]', **fv)
  flags.register_validator('validation_size', lambda v: v >= 0,
                           message='--validation_size must be zero or more', **fv)
  flags.register_validator('eval_batch_size', lambda v: v > 0,
                           message='--eval_batch_size must be positive', **fv)
  flags.register_validator('lr_decay_epochs', lambda v: v is None or v > 0,
                           message='--lr_decay_epochs must be positive', **fv)
  flags.register_validator('lr_decay_rate', lambda v: 0 < v <= 1,
                           message='--lr_decay_rate must be in (0, 1]', **fv)
  flags_core.set_defaults(flag_values, train_epochs=10, batch_size=100,
                          model_dir='/tmp/mnist_alexnet')


def _load_data(flags_obj):
  if flags_obj.use_synthetic_data:
    return input_data.synthetic_data_sets(one_hot=True, seed=flags_obj.seed)
  return input_data.read_data_sets(flags_obj.data_dir, one_hot=True, seed=flags_obj.seed,
                                   validation_size=flags_obj.validation_size)


def evaluate(sess, graph, dataset, batch_size):
  """Accuracy over the whole dataset, in batches, with dropout off."""
  correct = 0
  for start in range(0, dataset.num_examples, batch_size):
    correct += sess.run(graph.num_correct, {
        graph.x: dataset.images[start:start + batch_size],
        graph.y: dataset.labels[start:start + batch_size]})
  return correct / dataset.num_examples, int(correct)


def export_model(checkpoint_path, export_dir, image_shape, num_classes):
  """Exports the checkpoint as a SavedModel under export_dir/<version>/.

  Signatures (official/utils/export.py): `serving_default` takes float images `images` in
  [0, 1], [N, h*w*c] or [N, h, w, c]; `image_bytes:serving_default` takes encoded images
  `image_bytes` [N]. Both output `classes` (int64) and `probabilities` (float32
  [N, num_classes]).

  Returns:
    The export path.
  """
  def write(path):
    with tf.Graph().as_default() as graph:
      images_input, image_bytes_input, images = export.serving_inputs(
          image_shape, accept_flat=True)
      flat = tf.reshape(images, [-1, int(np.prod(image_shape))])
      weights, biases = alexnet_model.make_variables(image_shape, num_classes)
      logits = alexnet_model.alexnet(flat, weights, biases, 1.0, image_shape)
      outputs = {'classes': tf.argmax(logits, 1, name='classes'),
                 'probabilities': tf.nn.softmax(logits, name='probabilities')}
      saver = tf.compat.v1.train.Saver(list(weights.values()) + list(biases.values()))
      with tf.compat.v1.Session(graph=graph) as sess:
        saver.restore(sess, checkpoint_path)
        signatures = {
            export.DEFAULT_SIGNATURE: tf.compat.v1.saved_model.predict_signature_def(
                inputs={export.IMAGES_INPUT: images_input}, outputs=outputs),
            export.alternative_signature(export.IMAGE_BYTES_INPUT):
                tf.compat.v1.saved_model.predict_signature_def(
                    inputs={export.IMAGE_BYTES_INPUT: image_bytes_input}, outputs=outputs),
        }
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
            signature_def_map=signatures, strip_default_attrs=True)
        builder.save()
    export.write_serving_info(path, {'compute_dtype': 'fp32'})
  return export.export_atomically(export_dir, write)


def _print_epoch(epoch, record, report_words):
  if report_words:
    print('第 %d 轮的熵损失:%f' % (epoch, record['train_loss_sum']))
  print('Epoch %d: summed training loss %.4f (mean %.4f), %s%.1f s, %.0f examples/s' % (
      epoch + 1, record['train_loss_sum'], record['train_loss_mean'],
      'test accuracy %.4f (%d/%d), ' % (record['accuracy'], record['correct'],
                                        record['test_examples'])
      if 'accuracy' in record else '',
      record['seconds'], record['examples_per_second']))
  sys.stdout.flush()


def run_alexnet(flags_obj):
  """Trains (or resumes), evaluates and optionally exports; returns the final metrics dict."""
  model_dir = flags_obj.model_dir
  # Settled before anything in model_dir is touched: a refusal must not cost a checkpoint.
  dtype = precision.settle_dtype(flags_obj.dtype, flags_obj.bf16_fallback)
  if flags_obj.clean and os.path.isdir(model_dir):
    shutil.rmtree(model_dir)
  checkpoint = run_dir.prepare(model_dir, flags_obj.export_dir, MAX_CHECKPOINTS)
  data = _load_data(flags_obj)
  run_record.write_flags(model_dir, flags_core.flags_dict(flags_obj), extra={
      'model': MODEL_NAME, 'image_shape': list(data.image_shape),
      'num_classes': data.num_classes, 'train_examples': data.train.num_examples,
      'dtype_used': dtype})

  batch_size = flags_obj.batch_size
  steps_per_epoch = max(1, data.train.num_examples // batch_size)
  decay_steps = (int(flags_obj.lr_decay_epochs * steps_per_epoch)
                 if flags_obj.lr_decay_epochs else None)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(flags_obj.seed)
    graph = alexnet_model.build_train_graph(
        data.image_shape, data.num_classes, flags_obj.learning_rate,
        optimizer=flags_obj.optimizer, init=flags_obj.init, seed=flags_obj.seed,
        learning_rate_decay_steps=decay_steps, learning_rate_decay_rate=flags_obj.lr_decay_rate)
    num_parameters = run_record.count_parameters(tf.compat.v1.trainable_variables())
    saver = tf.compat.v1.train.Saver(max_to_keep=MAX_CHECKPOINTS, save_relative_paths=True)
    hooks = hooks_helper.get_train_hooks(flags_obj.hooks, model_dir, batch_size)
    runner = hooks_helper.HookedSessionRunner(hooks)
    config = tf.compat.v1.ConfigProto(
        inter_op_parallelism_threads=flags_obj.inter_op_parallelism_threads,
        intra_op_parallelism_threads=flags_obj.intra_op_parallelism_threads)
    if dtype == 'bf16':
      precision.enable_bf16_rewrite(config)
    init_op = tf.compat.v1.global_variables_initializer()
    tf.compat.v1.get_default_graph().finalize()

    with tf.compat.v1.Session(config=config) as sess:
      if checkpoint:
        saver.restore(sess, checkpoint)
        # A new Saver knows none of the checkpoints before it; told of them, it keeps
        # rotating them to max_to_keep.
        saver.recover_last_checkpoints(
            tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths)
        print('Resuming from %s' % checkpoint)
      else:
        sess.run(init_op)
      runner.attach(sess)
      step, start_epoch = sess.run([graph.global_step, graph.epoch])
      if run_record.settle_pending(model_dir, int(step) if checkpoint else None):
        print('Recorded epoch %d, whose checkpoint an interrupted run saved' % start_epoch)
      record = {}
      try:
        with interrupt.StopOnInterrupt() as stop:
          for epoch in range(start_epoch, flags_obj.train_epochs):
            if flags_obj.max_train_steps and step >= flags_obj.max_train_steps:
              break
            data.train.restart(seed=flags_obj.seed + epoch)
            started = time.monotonic()
            losses = []
            for _ in range(steps_per_epoch):
              images, labels = data.train.next_batch(batch_size)
              _, loss = runner.run(
                  [graph.train_op, graph.cross_entropy],
                  {graph.x: images, graph.y: labels, graph.keep_prob: flags_obj.dropout})
              step += 1
              losses.append(loss)
              if flags_obj.max_train_steps and step >= flags_obj.max_train_steps:
                break
              if stop.requested:
                break
            seconds = time.monotonic() - started
            epoch_done = len(losses) == steps_per_epoch
            if epoch_done:
              sess.run(graph.increment_epoch)
            record = {
                'epoch': epoch + 1, 'global_step': int(step), 'epoch_complete': epoch_done,
                'train_loss_sum': float(np.sum(losses)),
                'train_loss_mean': float(np.mean(losses)),
                'seconds': seconds, 'examples_per_second': len(losses) * batch_size / seconds,
                'num_parameters': num_parameters}
            last_epoch = epoch + 1 == flags_obj.train_epochs or not epoch_done
            if not stop.requested and (
                (epoch + 1) % flags_obj.epochs_between_evals == 0 or last_epoch):
              accuracy, correct = evaluate(sess, graph, data.test, flags_obj.eval_batch_size)
              record.update(accuracy=accuracy, correct=correct,
                            test_examples=data.test.num_examples)
            run_record.commit_epoch(model_dir, record, lambda: saver.save(
                sess, os.path.join(model_dir, CHECKPOINT_PREFIX), global_step=step))
            if stop.requested:
              raise KeyboardInterrupt  # saved and recorded above; reported below
            _print_epoch(epoch, record, flags_obj.report_words)
            if (flags_obj.stop_threshold and record.get('accuracy', 0) >=
                flags_obj.stop_threshold):
              print('Stopping: test accuracy %.4f reached --stop_threshold=%s' %
                    (record['accuracy'], flags_obj.stop_threshold))
              break
      except KeyboardInterrupt:
        run_record.append_metrics(model_dir, {'event': 'interrupted', 'global_step': int(step)})
        print('Interrupted; the last complete checkpoint in %s is intact.' % model_dir)
        raise
      finally:
        runner.end()

      if 'accuracy' not in record:
        accuracy, correct = evaluate(sess, graph, data.test, flags_obj.eval_batch_size)
        record.update(accuracy=accuracy, correct=correct, test_examples=data.test.num_examples,
                      global_step=int(step))
    checkpoint = tf.train.latest_checkpoint(model_dir)

  if flags_obj.report_words:
    print('命中率: %s' % record['accuracy'])
  print('Test accuracy on all %d test images: %.4f' % (data.test.num_examples,
                                                       record['accuracy']))
  if flags_obj.export_dir and checkpoint:
    record['export_path'] = export_model(checkpoint, flags_obj.export_dir, data.image_shape,
                                         data.num_classes)
    print('Exported SavedModel to %s' % record['export_path'])
  return record


def main(_):
  cli.run_main(run_alexnet, flags.FLAGS)


if __name__ == '__main__':
  define_alexnet_flags()
  app.run(main)
