"""Learning-rate schedules of the Estimator run loop: fn(global_step) -> rate tensor.

Both scale the base rate linearly with the batch size (Goyal et al. 2017: base_lr is for a batch
of batch_denom) and can ramp up linearly from zero first. `step` is the Model Garden's schedule
(`learning_rate_with_decay`, re-exported by resnet_run_loop under that name); `cosine` reached
99.52% on MNIST after 4 of 6 epochs with a quarter-width ResNet-18, where the step schedule took
the half-width network 6-7 of 8 epochs to 99.5% (README "Recipes"). `from_params` is the
schedule a model_fn builds from the params resnet_main gives it.
"""

import math

import tensorflow as tf

# --lr_schedule's values, for every main: `step` (the Model Garden's, or AlexNet's constant /
# --lr_decay_epochs steps) and `cosine`.
SCHEDULES = ('step', 'cosine')


def _warm_up(global_step, rate, initial_learning_rate, warmup_steps):
  """rate, except below warmup_steps: a linear ramp from 0 to initial_learning_rate."""
  step = tf.cast(global_step, tf.float32)
  return tf.where(step < warmup_steps, initial_learning_rate * step / float(warmup_steps), rate)


# The Model Garden's warm-up, when asked for with warmup=True.
MODEL_GARDEN_WARMUP_EPOCHS = 5


def learning_rate_with_decay(batch_size, batch_denom, num_images, boundary_epochs, decay_rates,
                             base_lr=0.1, warmup=False, warmup_epochs=None):
  """Returns fn(global_step) -> learning rate, step-decayed at epoch boundaries.

  The Model Garden's signature. The base rate scales linearly with batch size
  (base_lr * batch_size / batch_denom). With warmup it ramps up linearly from 0 over the
  Model Garden's 5 epochs first, or over warmup_epochs when given (fractions too).

  Args:
    boundary_epochs: epochs at which the rate changes; len(decay_rates) - 1 of them.
    decay_rates: multipliers of the scaled base rate, one per interval.

  Raises:
    ValueError: the list lengths do not fit.
  """
  if warmup_epochs is None:
    warmup_epochs = MODEL_GARDEN_WARMUP_EPOCHS if warmup else 0
  if len(decay_rates) != len(boundary_epochs) + 1:
    raise ValueError('need one more decay rate than boundaries: %s vs %s' %
                     (decay_rates, boundary_epochs))
  initial_learning_rate = base_lr * batch_size / batch_denom
  batches_per_epoch = num_images / batch_size
  boundaries = [int(batches_per_epoch * epoch) for epoch in boundary_epochs]
  values = [initial_learning_rate * decay for decay in decay_rates]

  def learning_rate_fn(global_step):
    global_step = tf.cast(global_step, tf.int64)
    rate = tf.compat.v1.train.piecewise_constant(global_step, boundaries, values)
    if warmup_epochs:
      rate = _warm_up(global_step, rate, initial_learning_rate,
                      max(1, int(batches_per_epoch * warmup_epochs)))
    return rate

  return learning_rate_fn


def learning_rate_cosine(batch_size, batch_denom, num_images, train_epochs, base_lr=0.1,
                         warmup_epochs=0):
  """Returns fn(global_step) -> learning rate: linear warm-up, then a cosine to zero.

  Loshchilov and Hutter, "SGDR" (ICLR 2017), without restarts: the rate is
  scaled_base * (1 + cos(pi * progress)) / 2 over the steps after the warm-up, so every run
  length gets the whole curve and its last epoch trains at a small rate. The scaled base is
  base_lr * batch_size / batch_denom, as in learning_rate_with_decay.
  """
  initial_learning_rate = base_lr * batch_size / batch_denom
  batches_per_epoch = num_images / batch_size
  total_steps = max(1, int(batches_per_epoch * train_epochs))
  warmup_steps = min(total_steps - 1, int(batches_per_epoch * warmup_epochs))

  def learning_rate_fn(global_step):
    step = tf.cast(global_step, tf.float32)
    progress = tf.clip_by_value((step - warmup_steps) / float(total_steps - warmup_steps),
                                0.0, 1.0)
    rate = initial_learning_rate * 0.5 * (1.0 + tf.cos(math.pi * progress))
    if warmup_steps > 0:
      rate = _warm_up(global_step, rate, initial_learning_rate, warmup_steps)
    return rate

  return learning_rate_fn


def from_params(params, batch_denom, boundary_fractions, decay_rates):
  """The schedule a model_fn builds from resnet_main's params: 'lr_schedule' (step or cosine),
  'base_learning_rate' (for a batch of batch_denom), 'batch_size', 'num_images',
  'train_epochs' and 'warmup_epochs'; the step schedule's boundaries are boundary_fractions of
  the run, with decay_rates between them."""
  epochs = params['train_epochs']
  if params['lr_schedule'] == 'cosine':
    return learning_rate_cosine(
        batch_size=params['batch_size'], batch_denom=batch_denom,
        num_images=params['num_images'], train_epochs=epochs,
        base_lr=params['base_learning_rate'], warmup_epochs=params['warmup_epochs'])
  return learning_rate_with_decay(
      batch_size=params['batch_size'], batch_denom=batch_denom, num_images=params['num_images'],
      boundary_epochs=[fraction * epochs for fraction in boundary_fractions],
      decay_rates=decay_rates, base_lr=params['base_learning_rate'],
      warmup_epochs=params['warmup_epochs'])
