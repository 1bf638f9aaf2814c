"""AlexNet training speed: placeholder feeding vs tf.data vs tf.keras fit, side by side, and
what shifts and averaged weights cost the placeholder loop.

  python benchmarks/alexnet_feeding.py [--batch_size=100] [--rounds=5] [--steps_per_window=30]

`measure(...)` returns the rates ({variant: [examples/s per window]}); the suite calls it.

The same architecture and optimizer three ways:
- placeholder: the report's Session loop, batches fed from in-memory arrays via next_batch;
- tf.data: the same graph with x and y taken from a tf.data iterator (shuffle, batch, prefetch);
- keras: the same layers in tf.keras, trained with fit;
- placeholder + shifts, placeholder + averages: the first with --shift_pixels=2 (in-graph
  random shifts) or --ema_decay=0.995 (official/utils/weight_averages.py).
Timing windows are interleaved so that machine noise hits all three alike. Prints median
(min-max) examples/second and the ratios to Keras.
"""

import statistics
import time

from absl import app
from absl import flags
import tensorflow as tf

from mnist_cnn import alexnet_model
from mnist_cnn import input_data
from official.utils import weight_averages

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def _placeholder_runner(data, batch_size, learning_rate, shift_pixels=0, ema_decay=0.0):
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.set_random_seed(0)
    model = alexnet_model.build_train_graph(IMAGE_SHAPE, NUM_CLASSES, learning_rate,
                                            shift_pixels=shift_pixels)
    train_op = model.train_op
    if ema_decay:
      train_op, _ = weight_averages.apply_after(train_op, ema_decay, model.global_step)
    init = tf.compat.v1.global_variables_initializer()
  session = tf.compat.v1.Session(graph=graph)
  session.run(init)

  def run(steps):
    for _ in range(steps):
      images, labels = data.next_batch(batch_size)
      feed = {model.x: images, model.y: labels, model.keep_prob: 0.8}
      if shift_pixels:
        feed[model.shift] = shift_pixels
      session.run(train_op, feed)
  return run


def _dataset(data, batch_size):
  dataset = tf.data.Dataset.from_tensor_slices((data.images, data.labels))
  return dataset.shuffle(len(data.images)).repeat().batch(batch_size).prefetch(
      tf.data.AUTOTUNE)


def _tf_data_runner(data, batch_size, learning_rate):
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.set_random_seed(0)
    images, labels = tf.compat.v1.data.make_one_shot_iterator(
        _dataset(data, batch_size)).get_next()
    model = alexnet_model.build_train_graph(IMAGE_SHAPE, NUM_CLASSES, learning_rate,
                                            inputs=(images, labels))
    init = tf.compat.v1.global_variables_initializer()
  session = tf.compat.v1.Session(graph=graph)
  session.run(init)

  def run(steps):
    for _ in range(steps):
      session.run(model.train_op, {model.keep_prob: 0.8})
  return run


def _keras_runner(data, batch_size, learning_rate):
  layers = tf.keras.layers
  lrn = lambda t: tf.nn.lrn(t, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
  model_layers = [layers.Reshape(IMAGE_SHAPE, input_shape=(784,))]
  for filters in alexnet_model.CONV_FILTERS:
    model_layers += [layers.Conv2D(filters, 3, padding='same', activation='relu'),
                     layers.MaxPool2D(2, 2, padding='same'), layers.Lambda(lrn)]
  model_layers += [layers.Flatten(),
                   layers.Dense(1024, activation='relu'), layers.Dropout(0.2),
                   layers.Dense(1024, activation='relu'), layers.Dropout(0.2),
                   layers.Dense(NUM_CLASSES)]
  model = tf.keras.Sequential(model_layers)
  model.compile(optimizer=tf.keras.optimizers.Adadelta(learning_rate),
                loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
  dataset = _dataset(data, batch_size)
  model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # build and trace

  def run(steps):
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
  return run


def measure(batch_size=100, rounds=5, steps_per_window=30, num_examples=10000,
            learning_rate=0.02):
  """{variant: [examples/s of each interleaved window]} for the three variants."""
  data = input_data.synthetic_data_sets(num_train=num_examples, num_test=1, one_hot=True).train
  runners = {
      'placeholder': _placeholder_runner(data, batch_size, learning_rate),
      'tf.data': _tf_data_runner(data, batch_size, learning_rate),
      'keras': _keras_runner(data, batch_size, learning_rate),
      'placeholder + shifts': _placeholder_runner(data, batch_size, learning_rate,
                                                  shift_pixels=2),
      'placeholder + averages': _placeholder_runner(data, batch_size, learning_rate,
                                                    ema_decay=0.995),
  }
  for run in runners.values():
    run(3)  # warm-up
  rates = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      started = time.perf_counter()
      run(steps_per_window)
      rates[name].append(steps_per_window * batch_size / (time.perf_counter() - started))
  return rates


def print_table(rates):
  keras = statistics.median(rates['keras'])
  print('| variant | examples/s median (min-max) | ratio to keras |')
  print('|---|---:|---:|')
  for name, values in rates.items():
    median = statistics.median(values)
    print('| %s | %.0f (%.0f-%.0f) | %.2f |' % (name, median, min(values), max(values),
                                                 median / keras))


def main(_):
  f = flags.FLAGS
  print_table(measure(f.batch_size, f.rounds, f.steps_per_window, f.num_examples,
                      f.learning_rate))


if __name__ == '__main__':
  flags.DEFINE_integer('batch_size', 100, 'Batch size.')
  flags.DEFINE_integer('rounds', 5, 'Interleaved timing windows per variant.')
  flags.DEFINE_integer('steps_per_window', 30, 'Training steps per window.')
  flags.DEFINE_integer('num_examples', 10000, 'Size of the in-memory training set.')
  flags.DEFINE_float('learning_rate', 0.02, 'Adadelta learning rate.')
  app.run(main)
