"""Trains AlexNet on MNIST (or any --dataset) with the report's placeholder + Session loop.

  python -m mnist_cnn.alexnet_main --data_dir=DIR --model_dir=DIR [--train_epochs=10 ...]

Defaults are the report's settings (Adadelta, learning rate 0.02, batch 100, 10 epochs, keep
probability 0.8) but for the initialisation: --init=he, where the report's (--init=report,
stddev-1 normal weights) saturated the softmax and is what its 21.9%/58.2% came from. After
every epoch it prints the summed training loss, the accuracy on the
full test set, seconds per epoch and examples/second; it checkpoints every epoch, resumes
from the latest checkpoint in --model_dir, and writes flags.json and metrics.json there.

The loop is cut as pytorch/examples cuts its MNIST one: `train_one_epoch`, `evaluate`, and a
short driver (`train`); the run lifecycle around it (model_dir, records, stop checks, Ctrl-C,
export) is official/utils/lifecycle.py, shared with every model.
"""

import dataclasses
import functools
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from mnist_cnn import alexnet_model
from mnist_cnn import input_data
from official.data import datasets
from official.utils import export
from official.utils import learning_rate
from official.utils import lifecycle
from official.utils import precision
from official.utils import session_config
from official.utils import weight_averages
from official.utils.flags import core as flags_core
from official.utils.logs import hooks_helper
from official.utils.logs import run_record

MODEL_NAME = 'alexnet'
CHECKPOINT_PREFIX = 'model.ckpt'
MAX_CHECKPOINTS = 3


@dataclasses.dataclass(frozen=True)
class AlexNetSettings(object):
  """AlexNet's own flags, as values."""
  learning_rate: float
  optimizer: str
  dropout: float
  init: str
  eval_batch_size: int
  lr_decay_epochs: float
  lr_decay_rate: float
  lr_schedule: str
  label_smoothing: float
  report_words: bool
  shift_pixels: int


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
                    'Weight initialisation: he (seeded, scaled to ReLU; the default, not the '
                    'report\'s) or report (normal with stddev 1, as the report did: with it '
                    'the report\'s runs are reproduced).', **fv)
  flags.DEFINE_integer('eval_batch_size', 1000, 'Batch size for test-set evaluation.', **fv)
  flags.DEFINE_integer('validation_size', None,
                       'Training examples held out as the validation split. Default: 5000 '
                       'with --dataset=mnist (the report\'s input_data held them out, leaving '
                       '55,000 to train on), none with the other datasets.', **fv)
  flags.DEFINE_float('lr_decay_epochs', None,
                     'Multiply the learning rate by --lr_decay_rate every this many epochs.',
                     **fv)
  flags.DEFINE_float('lr_decay_rate', 0.5, 'Factor of each learning-rate decay step.', **fv)
  flags.DEFINE_enum('lr_schedule', 'step', list(learning_rate.SCHEDULES),
                    'step: constant, or decayed every --lr_decay_epochs; cosine: a half cosine '
                    'from --learning_rate to zero over --train_epochs.', **fv)
  flags.DEFINE_float('label_smoothing', 0.0, 'Label smoothing of the training targets (0..1).',
                     **fv)
  flags.DEFINE_integer('shift_pixels', 0, 'Shift each training image by up to this many pixels '
                       'at random (zero padding, random crop; 0: off, as the report).', **fv)
  flags.register_validator('shift_pixels', lambda v: v >= 0,
                           message='--shift_pixels must be zero or more', **fv)
  flags.register_validator('label_smoothing', lambda v: 0 <= v < 1,
                           message='--label_smoothing must be in [0, 1)', **fv)
  flags.register_multi_flags_validator(
      ['lr_schedule', 'lr_decay_epochs'],
      lambda v: not (v['lr_schedule'] == 'cosine' and v['lr_decay_epochs']),
      message='--lr_decay_epochs steps the step schedule; --lr_schedule=cosine takes none', **fv)
  flags_core.define_dtype_flag(precision.REWRITE_DTYPES, flag_values)
  flags.DEFINE_boolean('report_words', False,
                       'Print the per-epoch loss and the final accuracy in the report\'s own '
                       'words (第 N 轮的熵损失 / 命中率).', **fv)
  flags.register_validator('learning_rate', lambda v: v > 0,
                           message='--learning_rate must be positive', **fv)
  flags.register_validator('dropout', lambda v: 0 < v <= 1,
                           message='--dropout is a keep probability and must be in (0, 1]', **fv)
  flags.register_validator('validation_size', lambda v: v is None or v >= 0,
                           message='--validation_size must be zero or more', **fv)
  flags.register_validator('eval_batch_size', lambda v: v > 0,
                           message='--eval_batch_size must be positive', **fv)
  flags.register_validator('lr_decay_epochs', lambda v: v is None or v > 0,
                           message='--lr_decay_epochs must be positive', **fv)
  flags.register_validator('lr_decay_rate', lambda v: 0 < v <= 1,
                           message='--lr_decay_rate must be in (0, 1]', **fv)
  flags_core.set_defaults(flag_values, train_epochs=10, batch_size=100,
                          model_dir='/tmp/mnist_alexnet')


def run_alexnet(flags_obj):
  """Trains (or resumes), evaluates and optionally exports; returns the final metrics dict.

  The entry point's one read of the flags: below it, everything takes values.
  """
  settings = lifecycle.settings_from_flags(lifecycle.RunSettings, flags_obj)
  own = lifecycle.settings_from_flags(AlexNetSettings, flags_obj)
  # Settled before anything in model_dir is touched: a refusal must not cost a checkpoint.
  plan = precision.plan(precision.settle_dtype(flags_obj.dtype, flags_obj.bf16_fallback))
  # The data too: a bad --dataset or --data_dir must not cost a --clean run its checkpoints.
  raw = datasets.load(flags_obj.dataset, flags_obj.data_dir, flags_obj.use_synthetic_data,
                      flags_obj.seed)
  data = input_data.data_sets_from_raw(raw, one_hot=True, seed=flags_obj.seed,
                                       validation_size=validation_size(flags_obj))
  facts = dict(raw.describe(), model=MODEL_NAME, train_examples=data.train.num_examples,
               dataset_name=datasets.display_name(flags_obj.dataset,
                                                  flags_obj.use_synthetic_data),
               dtype_used=plan.dtype)
  with lifecycle.recording(settings.model_dir, user_errors=datasets.DATA_ERRORS):
    checkpoint = lifecycle.prepare(settings, MAX_CHECKPOINTS)
    lifecycle.record_flags(settings, facts)
    return train(settings, own, plan, data, checkpoint)


def validation_size(flags_obj):
  """--validation_size, or its default: the report's 5000 on MNIST, none elsewhere."""
  if flags_obj.use_synthetic_data:
    return 0
  if flags_obj.validation_size is not None:
    return flags_obj.validation_size
  return input_data.DEFAULT_VALIDATION_SIZE if flags_obj.dataset == datasets.MNIST else 0


def train(settings, own, plan, data, checkpoint):
  """The driver: train epoch by epoch from the checkpoint (None: afresh) with a record each,
  evaluate, export."""
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(settings.seed)
    graph, last_weights = _build_graph(settings, own, data)
    saver = tf.compat.v1.train.Saver(max_to_keep=MAX_CHECKPOINTS, save_relative_paths=True)
    runner = hooks_helper.HookedSessionRunner(hooks_helper.get_train_hooks(
        settings.hooks, settings.model_dir, settings.batch_size))
    init_op = tf.compat.v1.global_variables_initializer()
    tf.compat.v1.get_default_graph().finalize()
    config = session_config.make(settings.inter_op_parallelism_threads,
                                 settings.intra_op_parallelism_threads, plan.onednn_bf16)
    with tf.compat.v1.Session(config=config) as sess:
      _restore_or_init(sess, saver, init_op, checkpoint, settings.model_dir)
      runner.attach(sess)
      try:
        record = _train_epochs(sess, runner, saver, graph, last_weights, data, settings, own,
                               checkpoint)
      finally:
        runner.end()
      if record.get('accuracy') is None:
        record.update(_evaluation(sess, graph, last_weights, data.test, own.eval_batch_size),
                      global_step=int(sess.run(graph.global_step)))
    checkpoint = tf.train.latest_checkpoint(settings.model_dir)
  if own.report_words:
    print('命中率: %s' % record['accuracy'])
  print('Test accuracy on all %d test images: %.4f' % (data.test.num_examples,
                                                       record['accuracy']))
  if not checkpoint:
    return record
  test_set = lambda: (data.test.images.reshape((-1,) + tuple(data.image_shape)),
                      np.argmax(data.test.labels, 1))
  return lifecycle.export_if_asked(settings, lambda export_dir: export_model(
      checkpoint, export_dir, data.image_shape, data.num_classes, plan.dtype, test_set,
      averaged=bool(settings.ema_decay)), record)


def _build_graph(settings, own, data):
  """The training graph, and None; with --ema_decay, the graph whose train_op also updates
  the averages and whose num_correct counts with them, and its count with the last weights."""
  steps_per_epoch = max(1, data.train.num_examples // settings.batch_size)
  decay_steps = int(own.lr_decay_epochs * steps_per_epoch) if own.lr_decay_epochs else None
  cosine = own.lr_schedule == 'cosine'
  graph = alexnet_model.build_train_graph(
      data.image_shape, data.num_classes, own.learning_rate, optimizer=own.optimizer,
      init=own.init, seed=settings.seed,
      learning_rate_decay_steps=None if cosine else decay_steps,
      learning_rate_decay_rate=own.lr_decay_rate,
      cosine_decay_steps=steps_per_epoch * settings.train_epochs if cosine else None,
      label_smoothing=own.label_smoothing, shift_pixels=own.shift_pixels)
  if not settings.ema_decay:
    return graph, None
  train_op, averages = weight_averages.apply_after(graph.train_op, settings.ema_decay,
                                                   graph.global_step)
  def shadows(variables):
    return {name: averages.average(variable) for name, variable in variables.items()}
  logits = alexnet_model.alexnet(graph.x, shadows(graph.weights), shadows(graph.biases), 1.0,
                                 data.image_shape)
  num_correct = alexnet_model.count_correct(logits, graph.y, name='num_correct_averaged')
  return graph._replace(train_op=train_op, num_correct=num_correct), graph.num_correct


def _restore_or_init(sess, saver, init_op, checkpoint, model_dir):
  if not checkpoint:
    sess.run(init_op)
    return
  saver.restore(sess, checkpoint)
  # A new Saver knows none of the checkpoints before it; told of them, it keeps rotating them
  # to max_to_keep.
  saver.recover_last_checkpoints(
      tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths)
  print('Resuming from %s' % checkpoint)


def _train_epochs(sess, runner, saver, graph, last_weights, data, settings, own, checkpoint):
  """Epochs from the checkpoint's to --train_epochs, each committed with its record; returns
  the last record ({} when nothing was left to train)."""
  step, start_epoch = sess.run([graph.global_step, graph.epoch])
  if run_record.settle_pending(settings.model_dir, int(step) if checkpoint else None):
    print('Recorded epoch %d, whose checkpoint an interrupted run saved' % start_epoch)
  steps_per_epoch = max(1, data.train.num_examples // settings.batch_size)
  num_parameters = run_record.count_parameters(tf.compat.v1.trainable_variables())
  record = {}
  with lifecycle.StopOnInterrupt() as stop:
    for epoch in range(start_epoch, settings.train_epochs):
      if settings.max_train_steps and step >= settings.max_train_steps:
        break
      data.train.restart(seed=settings.seed + epoch)
      steps = steps_per_epoch
      if settings.max_train_steps:
        steps = min(steps, settings.max_train_steps - step)
      started = time.monotonic()
      losses = train_one_epoch(runner, graph, data.train, settings.batch_size, own.dropout,
                               steps, stop, own.shift_pixels)
      seconds = time.monotonic() - started
      step += len(losses)
      epoch_done = len(losses) == steps_per_epoch
      if epoch_done:
        sess.run(graph.increment_epoch)
      evaluation = None
      if not stop.requested and ((epoch + 1) % settings.epochs_between_evals == 0 or
                                 epoch + 1 == settings.train_epochs or not epoch_done):
        evaluation = _evaluation(sess, graph, last_weights, data.test, own.eval_batch_size)
      record = lifecycle.epoch_record(
          epoch + 1, step, seconds, len(losses) * settings.batch_size,
          float(np.mean(losses)), num_parameters, evaluation, epoch_complete=epoch_done,
          train_loss_sum=float(np.sum(losses)))
      run_record.commit_epoch(settings.model_dir, record, lambda: saver.save(
          sess, os.path.join(settings.model_dir, CHECKPOINT_PREFIX), global_step=step))
      if stop.requested:
        lifecycle.interrupted(settings.model_dir, step)
      _print_epoch(epoch, record, own.report_words)
      if lifecycle.should_stop(settings, record):
        break
  return record


def train_one_epoch(runner, graph, train_set, batch_size, keep_prob, steps, stop,
                    shift_pixels=0):
  """Up to `steps` training steps (fewer once Ctrl-C is requested); returns their losses."""
  losses = []
  for _ in range(steps):
    images, labels = train_set.next_batch(batch_size)
    feed = {graph.x: images, graph.y: labels, graph.keep_prob: keep_prob}
    if graph.shift is not None:
      feed[graph.shift] = shift_pixels
    _, loss = runner.run([graph.train_op, graph.cross_entropy], feed)
    losses.append(loss)
    if stop.requested:
      break
  return losses


def evaluate(sess, graph, dataset, batch_size):
  """Accuracy over the whole dataset, in batches, with dropout off."""
  correct = 0
  for start in range(0, dataset.num_examples, batch_size):
    correct += sess.run(graph.num_correct, {
        graph.x: dataset.images[start:start + batch_size],
        graph.y: dataset.labels[start:start + batch_size]})
  return correct / dataset.num_examples, int(correct)


def _evaluation(sess, graph, last_weights, dataset, batch_size):
  """The record's evaluation; with averages (last_weights: the count with the last weights),
  the last weights' accuracy beside theirs, to show what averaging changed."""
  accuracy, correct = evaluate(sess, graph, dataset, batch_size)
  result = {'accuracy': accuracy, 'correct': correct, 'test_examples': dataset.num_examples}
  if last_weights is not None:
    result['accuracy_last_weights'] = evaluate(
        sess, graph._replace(num_correct=last_weights), dataset, batch_size)[0]
  return result


def export_model(checkpoint_path, export_dir, image_shape, num_classes, training_dtype,
                 test_set=None, averaged=False):
  """Exports the checkpoint through export.export_model (both signatures; `images` also takes
  flat [N, h*w*c] rows, as the report fed them; test_set and averaged as there); returns the
  export path."""
  def build_outputs(images):
    flat = tf.reshape(images, [-1, int(np.prod(image_shape))])
    weights, biases = alexnet_model.make_variables(image_shape, num_classes)
    logits = alexnet_model.alexnet(flat, weights, biases, 1.0, image_shape)
    return {'classes': tf.argmax(logits, 1, name='classes'),
            'probabilities': tf.nn.softmax(logits, name='probabilities')}
  return export.export_model(export_dir, image_shape, build_outputs, checkpoint_path, 'fp32',
                             training_dtype, accept_flat=True, test_set=test_set,
                             averaged=averaged)


def _print_epoch(epoch, record, report_words):
  if report_words:
    print('第 %d 轮的熵损失:%f' % (epoch, record['train_loss_sum']))
  print('Epoch %d: summed training loss %.4f (mean %.4f), %s%.1f s, %.0f examples/s' % (
      epoch + 1, record['train_loss_sum'], record['train_loss_mean'],
      'test accuracy %.4f (%d/%d), ' % (record['accuracy'], record['correct'],
                                        record['test_examples'])
      if record.get('accuracy') is not None else '',
      record['seconds'], record['examples_per_second']))
  sys.stdout.flush()


def main(_):
  lifecycle.run_main(functools.partial(run_alexnet, flags.FLAGS), bool(flags.FLAGS.hooks),
                     user_errors=datasets.DATA_ERRORS)


def run_command():
  """The `mnist-cnn-alexnet` console command (setup.py), as `python -m` runs this module."""
  define_alexnet_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
