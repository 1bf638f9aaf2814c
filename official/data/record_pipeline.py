"""The tf.data record pipeline every Estimator input shares: the Model Garden's
`process_record_dataset`, re-exported by official/resnet/resnet_run_loop.py under its r1 name.

Kept in the data layer so that data modules depend on nothing above them: importing one loads
no model, run loop or cluster code.
"""

import tensorflow as tf


def process_record_dataset(dataset, is_training, batch_size, shuffle_buffer, parse_record_fn,
                           num_epochs=1, dtype=tf.float32, datasets_num_private_threads=None,
                           drop_remainder=False, seed=None):
  """Turns a dataset of raw records into batches of (features, labels).

  Shuffles before repeating (so each epoch is a permutation), parses and batches in one
  `map_and_batch`, and prefetches so the model never waits for input.

  Args:
    dataset: tf.data.Dataset of raw records.
    is_training: shuffle when True.
    batch_size: examples per batch.
    shuffle_buffer: shuffle buffer size (the dataset size for a full shuffle).
    parse_record_fn: fn(raw_record, is_training, dtype) -> (features, label), called with the
      record itself: the string of a FixedLengthRecordDataset, or the (image, label) tuple of a
      dataset of pairs.
    num_epochs: times to repeat the dataset (None: forever).
    dtype: features dtype.
    datasets_num_private_threads: a private thread pool of this size for the pipeline.
    drop_remainder: drop a final short batch.
    seed: shuffle seed.

  Returns:
    tf.data.Dataset of batches.
  """
  if is_training:
    dataset = dataset.shuffle(buffer_size=shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.apply(tf.data.experimental.map_and_batch(
      lambda *record: parse_record_fn(record[0] if len(record) == 1 else record,
                                      is_training, dtype),
      batch_size=batch_size,
      num_parallel_calls=tf.data.AUTOTUNE,
      drop_remainder=drop_remainder))
  dataset = dataset.prefetch(buffer_size=tf.data.AUTOTUNE)
  if datasets_num_private_threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = datasets_num_private_threads
    dataset = dataset.with_options(options)
  return dataset
