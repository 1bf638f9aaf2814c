"""An exponential moving average of the weights, for evaluation and export (--ema_decay).

Each training step ends by moving a shadow copy of every trainable variable towards its new
value (tf.compat.v1.train.ExponentialMovingAverage, with num_updates=global_step so the first
steps are averaged over the steps there are). Evaluation and export then use the shadows in
place of the last weights: where seed-to-seed noise of the last steps decides whether a short
run ends above or below a target, the average of its last few hundred steps is the steadier
network (Polyak and Juditsky 1992).

The shadows live in the checkpoint beside the variables they average, as `<name>/
ExponentialMovingAverage`, so a resumed run goes on averaging. Evaluation (the Estimator's
through `averaging_saver`, AlexNet's through a forward pass over the shadows), the batch-norm
statistics recomputed before it, and the export (`restore_map`) all take the shadows, so what
is evaluated, exported and served is one set of weights. A run resumes only with the same
choice its checkpoint was trained with (`check_resumable`).
"""

import tensorflow as tf

SUFFIX = 'ExponentialMovingAverage'


class WeightAverageError(ValueError):
  """A checkpoint and --ema_decay disagree on whether the run keeps averages."""


def shadow_name(variable_name):
  """The checkpoint name of the shadow of the variable called variable_name."""
  return '%s/%s' % (variable_name, SUFFIX)


def apply_after(train_op, decay, global_step, var_list=None):
  """Returns (an op that runs train_op, then updates the averages; the
  ExponentialMovingAverage, whose .average(v) is v's shadow variable)."""
  averages = tf.compat.v1.train.ExponentialMovingAverage(decay, num_updates=global_step)
  with tf.control_dependencies([train_op]):
    update = averages.apply(var_list if var_list is not None
                            else tf.compat.v1.trainable_variables())
  return update, averages


def _averages_map():
  """{checkpoint name: variable} of the default graph with each trainable variable read from
  its shadow and every other variable from its own name (TensorFlow's variables_to_restore)."""
  return tf.compat.v1.train.ExponentialMovingAverage(0.0).variables_to_restore()


def restore_map(checkpoint_path, averaged):
  """What a Saver restores the default graph's variables from in checkpoint_path: with
  averaged, each trainable one from its shadow (None otherwise: every variable by its name).

  Raises:
    WeightAverageError: averaged, and the checkpoint lacks a shadow.
  """
  if not averaged:
    return None
  stored = {name for name, _ in tf.train.list_variables(checkpoint_path)}
  for variable in tf.compat.v1.trainable_variables():
    if shadow_name(variable.op.name) not in stored:
      raise WeightAverageError('%s holds no average of %s: its run was trained without '
                               '--ema_decay' % (checkpoint_path, variable.op.name))
  return _averages_map()


def averaging_saver(decay):
  """A Saver for an evaluation graph: every trainable variable from its shadow when decay is
  set (None when it is not: the Estimator's default Saver restores the last weights)."""
  return tf.compat.v1.train.Saver(_averages_map()) if decay else None


def has_averages(checkpoint_path):
  """Whether the checkpoint holds shadows."""
  return any(name.endswith('/' + SUFFIX) for name, _ in tf.train.list_variables(
      checkpoint_path))


def check_resumable(checkpoint_path, decay):
  """Raises WeightAverageError when a run would resume checkpoint_path (None: a fresh start)
  with --ema_decay where its run kept no averages, or without it where the run kept them."""
  if not checkpoint_path or bool(decay) == has_averages(checkpoint_path):
    return
  if decay:
    raise WeightAverageError(
        'cannot resume %s with --ema_decay=%g: its run kept no averages of the weights; rerun '
        'with --ema_decay=0, or add --clean to start afresh' % (checkpoint_path, decay))
  raise WeightAverageError(
      'cannot resume %s without --ema_decay: its run kept averages of the weights; rerun '
      'with its --ema_decay (flags.json has it), or add --clean to start afresh'
      % checkpoint_path)


def pairs(variables):
  """[(variable, its shadow)] among variables, matched by name."""
  by_name = {variable.op.name: variable for variable in variables}
  return [(by_name[name], shadow) for name, shadow in
          ((name[:-len(SUFFIX) - 1], variable) for name, variable in by_name.items()
           if name.endswith('/' + SUFFIX)) if name in by_name]
