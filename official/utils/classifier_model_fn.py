"""The body of every Estimator model_fn here: a model's logits -> an EstimatorSpec.

The Model Garden's `resnet_model_fn` (official/resnet/resnet_run_loop.py) builds a ResNet and
calls `estimator_spec`; GoogLeNet's model_fn builds its network and calls it too. What it adds
to the Model Garden's: models that return (logits, end_points) have their auxiliary heads'
losses added with aux_loss_weight (GoogLeNet); label smoothing over the model's own class
count (the Model Garden's one-hot had 1001 columns whatever the model); top-5 accuracy as
top-min(5, classes); the data term of the loss as its own metric; and a `train_accuracy` of
the batch in hand rather than the running metric's value.
"""

import tensorflow as tf

from official.utils import precision
from official.utils import weight_averages


def default_loss_filter_fn(name):
  """Weight decay applies to every trainable variable except batch-norm gamma and beta."""
  return 'batch_normalization' not in name


def estimator_spec(features, labels, mode, model, weight_decay, learning_rate_fn, momentum,
                   loss_scale=None, loss_filter_fn=None, dtype=tf.float32, fine_tune=False,
                   label_smoothing=0.0, aux_loss_weight=0.0, ema_decay=0.0):
  """The EstimatorSpec of a classifier.

  Args:
    features: images [B, h, w, c] (or {'feature': images}, as a serving receiver wraps them).
    labels: int class indices [B] (None in PREDICT).
    mode: a tf.estimator.ModeKeys value.
    model: callable(inputs, training) -> logits [B, classes], or (logits, end_points) whose
      'AuxLogits_*' entries are auxiliary heads; built to compute in dtype.
    weight_decay: L2 factor over the variables loss_filter_fn keeps (default: all but the
      batch-norm variables).
    learning_rate_fn: fn(global_step) -> learning rate.
    momentum: of the SGD optimizer.
    loss_scale: the loss is multiplied by it before the gradients and they are divided after
      (None: the dtype's default, 128 for float16).
    dtype: what the layers compute in (a TensorFlow dtype or a --dtype name).
    fine_tune: train only the variables named 'dense'.
    label_smoothing: of the one-hot targets.
    aux_loss_weight: what each auxiliary head's cross-entropy weighs in the loss.
    ema_decay: when set, training keeps an exponential moving average of the trainable
      variables, and evaluation and prediction restore the averages in their place
      (official/utils/weight_averages.py).

  Returns:
    tf.estimator.EstimatorSpec for the mode; predictions 'classes' int64 [B] and
    'probabilities' float32 [B, classes]; metrics 'accuracy', 'accuracy_top_5' and
    'cross_entropy'.
  """
  if isinstance(features, dict):  # a serving receiver wraps a lone tensor as {'feature': t}
    features = features['feature']
  dtype = precision.tf_dtype(dtype)
  predictions, logits, aux_logits = _predictions(features, mode, model, dtype)
  # Evaluation and prediction read the averages (the Estimator restores with this Saver).
  scaffold = None
  if ema_decay and mode != tf.estimator.ModeKeys.TRAIN:
    scaffold = tf.compat.v1.train.Scaffold(saver=weight_averages.averaging_saver(ema_decay))
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(
        mode=mode, predictions=predictions, scaffold=scaffold,
        export_outputs={'predict': tf.estimator.export.PredictOutput(predictions)})
  labels = tf.cast(labels, tf.int32)
  cross_entropy = _cross_entropy(logits, labels, label_smoothing)
  cross_entropy = tf.identity(cross_entropy, name='cross_entropy')
  tf.compat.v1.summary.scalar('cross_entropy', cross_entropy)
  loss = cross_entropy + _aux_loss(aux_logits, labels, label_smoothing, aux_loss_weight)
  loss += _l2_loss(weight_decay, loss_filter_fn or default_loss_filter_fn)
  metrics = _metrics(logits, labels, predictions, cross_entropy)
  train_op = None
  if mode == tf.estimator.ModeKeys.TRAIN:
    if loss_scale is None:
      loss_scale = precision.default_loss_scale(dtype)
    train_op = _train_op(loss, learning_rate_fn, momentum, loss_scale, fine_tune)
    if ema_decay:
      train_op, _ = weight_averages.apply_after(
          train_op, ema_decay, tf.compat.v1.train.get_or_create_global_step())
  return tf.estimator.EstimatorSpec(mode=mode, predictions=predictions, loss=loss,
                                    train_op=train_op, eval_metric_ops=metrics,
                                    scaffold=scaffold)


def _predictions(features, mode, model, dtype):
  """The model's float32 logits, classes and probabilities, and the float32 logits of its
  auxiliary heads (a model that returns (logits, end_points), as GoogLeNet does, names them
  'AuxLogits_*' in training)."""
  tf.compat.v1.summary.image('images', tf.cast(features, tf.float32), max_outputs=4)
  outputs = model(tf.cast(features, dtype), mode == tf.estimator.ModeKeys.TRAIN)
  logits, end_points = outputs if isinstance(outputs, tuple) else (outputs, {})
  aux_logits = [tf.cast(end_points[name], tf.float32) for name in sorted(end_points)
                if name.startswith('AuxLogits')]
  logits = tf.cast(logits, tf.float32)  # softmax and loss in float32
  return {'classes': tf.argmax(logits, axis=1),
          'probabilities': tf.nn.softmax(logits, name='softmax_tensor')}, logits, aux_logits


def _cross_entropy(logits, labels, label_smoothing):
  if label_smoothing:
    one_hot = tf.one_hot(labels, int(logits.shape[-1]))
    return tf.compat.v1.losses.softmax_cross_entropy(one_hot, logits,
                                                     label_smoothing=label_smoothing)
  return tf.compat.v1.losses.sparse_softmax_cross_entropy(labels=labels, logits=logits)


def _aux_loss(aux_logits, labels, label_smoothing, aux_loss_weight):
  """aux_loss_weight x the sum of the auxiliary heads' cross-entropies (0 without heads)."""
  if not aux_logits or not aux_loss_weight:
    return 0.0
  aux_loss = tf.identity(aux_loss_weight * tf.add_n(
      [_cross_entropy(aux, labels, label_smoothing) for aux in aux_logits]), name='aux_loss')
  tf.compat.v1.summary.scalar('aux_loss', aux_loss)
  return aux_loss


def _l2_loss(weight_decay, loss_filter_fn):
  decayed = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in tf.compat.v1.trainable_variables()
             if loss_filter_fn(v.name)]
  l2_loss = tf.identity(weight_decay * tf.add_n(decayed), name='l2_loss')
  tf.compat.v1.summary.scalar('l2_loss', l2_loss)
  return l2_loss


def _metrics(logits, labels, predictions, cross_entropy):
  """Evaluation metrics, and the named train_accuracy tensor the logging hook reads."""
  num_classes = int(logits.shape[-1])
  accuracy = tf.compat.v1.metrics.accuracy(labels, predictions['classes'])
  accuracy_top_5 = tf.compat.v1.metrics.mean(
      tf.nn.in_top_k(predictions=logits, targets=labels, k=min(5, num_classes)))
  train_accuracy = tf.identity(
      tf.reduce_mean(tf.cast(tf.equal(tf.cast(predictions['classes'], tf.int32), labels),
                             tf.float32)), name='train_accuracy')
  tf.compat.v1.summary.scalar('train_accuracy', train_accuracy)
  # The EstimatorSpec's loss includes weight decay; report the data term on its own too.
  return {'accuracy': accuracy, 'accuracy_top_5': accuracy_top_5,
          'cross_entropy': tf.compat.v1.metrics.mean(cross_entropy)}


def _train_op(loss, learning_rate_fn, momentum, loss_scale, fine_tune):
  """Momentum SGD on the (loss-scaled) loss, after the batch-norm updates."""
  global_step = tf.compat.v1.train.get_or_create_global_step()
  learning_rate = tf.identity(learning_rate_fn(global_step), name='learning_rate')
  tf.compat.v1.summary.scalar('learning_rate', learning_rate)
  optimizer = tf.compat.v1.train.MomentumOptimizer(learning_rate=learning_rate,
                                                   momentum=momentum)
  variables = tf.compat.v1.trainable_variables()
  if fine_tune:
    variables = [v for v in variables if 'dense' in v.name]
  # Scaling the loss keeps small float16 gradients from flushing to zero; unscale after.
  grads_and_vars = optimizer.compute_gradients(loss * loss_scale, var_list=variables)
  if loss_scale != 1:
    grads_and_vars = [(g / loss_scale, v) for g, v in grads_and_vars if g is not None]
  update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  with tf.control_dependencies(update_ops):
    return optimizer.apply_gradients(grads_and_vars, global_step=global_step)
