"""The graph a loaded export is served from: variables frozen, in the precision chosen for
this CPU.

The export on disk stays a standard SavedModel (TF Serving and `saved_model_cli` load it as
written); what follows is done by our server and `predict` when they load it.

Why freezing, measured on the 6-epoch ResNet-18 export (batch 1, 2-core AMD EPYC): 8.6 ms per
call on the graph as loaded, 3.5 ms frozen. Convolutions were 90% of the op time; with the
filters read from variables oneDNN converts every filter to its blocked layout again on every
call (45 MB of weights for ResNet-18), while constant filters are converted once and kept. The
90 variable reads were 3%. Folding batch norm into the convolutions (TF's
optimize_for_inference) changed nothing measurable (3.93 -> 3.93 ms): grappler already fuses a
convolution with the batch norm after it, and in pre-activation blocks the others follow an
addition, so it is not done here.

Precision: on a CPU with native bfloat16 (AVX512-BF16 or AMX) the oneDNN bf16 rewrite makes
batch-1 calls faster still (ResNet-18 3.9 -> 2.4 ms, AlexNet 1.6 -> 1.0 ms here), mostly by
reading half the weight bytes. 'auto' takes it only where the CPU has it, the export was trained
in bf16 (so its evaluations computed in bf16 too) and, where the export measured its test
accuracy in both precisions when it was written, bf16 lost at most 0.05 points. An
fp32-trained export is served in fp32, the numbers TF Serving gives for it, unless the flag
says bf16 (the 6-epoch ResNet-18 measured 0.9965 in both).
"""

from absl import flags
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from official.utils import precision

PRECISIONS = ('auto', 'fp32', 'bf16')
# The most test accuracy bf16 may lose against fp32 for 'auto' to serve in it (0.05 points).
BF16_ACCURACY_LOSS = 0.0005
# Collections that mean the graph needs an initialisation step beyond restoring variables
# (tables, assets): such SavedModels are served as loaded.
_INIT_COLLECTIONS = ('saved_model_main_op', 'legacy_init_op', 'table_initializer',
                     'saved_model_assets', 'asset_filepaths')


def define_flags(flag_values=flags.FLAGS):
  """The load-time flags of the server and `predict`."""
  flags.DEFINE_enum('serving_precision', 'auto', PRECISIONS,
                    'What the model computes in: bf16 (the oneDNN rewrite) or fp32; auto takes '
                    'bf16 on a CPU with native bfloat16 for an export trained in bf16 whose '
                    'recorded bf16 test accuracy is within 0.05 points of fp32, fp32 otherwise.',
                    flag_values=flag_values)
  flags.DEFINE_bool('optimize_graph', True,
                    'Serve from the frozen inference graph (variables as constants), checked '
                    'against the graph as loaded; false serves the graph as loaded.',
                    flag_values=flag_values)


def choose_precision(requested, serving_info, cpu_has_bf16):
  """'fp32' or 'bf16' for a requested precision ('auto' decides; see the module doc).

  Args:
    requested: one of PRECISIONS.
    serving_info: the export's record (export.read_serving_info): 'training_dtype', and
      'test_accuracy' (per dtype) where the export measured it.
    cpu_has_bf16: whether this CPU computes bfloat16 natively.
  """
  if requested not in PRECISIONS:
    raise ValueError('unknown serving precision %r; choose one of %s' % (
        requested, ', '.join(PRECISIONS)))
  if requested != 'auto':
    return requested
  if not cpu_has_bf16 or serving_info.get('training_dtype') != 'bf16':
    return 'fp32'
  accuracy = serving_info.get('test_accuracy') or {}
  if 'fp32' in accuracy and 'bf16' in accuracy:
    return 'bf16' if accuracy['fp32'] - accuracy['bf16'] <= BF16_ACCURACY_LOSS else 'fp32'
  return 'bf16'


def can_freeze(meta_graph):
  """False for SavedModels that need more than their variables restored (an init op, assets,
  tables): their graph is served as loaded."""
  collections = meta_graph.collection_def
  return not any(name in collections and _has_values(collections[name])
                 for name in _INIT_COLLECTIONS)


def _has_values(collection):
  return bool(collection.node_list.value or collection.bytes_list.value or
              collection.any_list.value)


def freeze(session, signature_defs):
  """The loaded graph with every variable the signatures read turned into a constant, and
  nothing the signatures do not reach (the Saver's ops, the training graph's leftovers)."""
  outputs = sorted({_node(info.name) for sd in signature_defs.values()
                    for info in sd.outputs.values()})
  inputs = {_node(info.name) for sd in signature_defs.values() for info in sd.inputs.values()}
  frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
      session, session.graph.as_graph_def(), outputs)
  graph_def = tf.compat.v1.graph_util.remove_training_nodes(
      frozen, protected_nodes=sorted(inputs | set(outputs)))
  # remove_training_nodes keeps the nodes only: the functions of map_fn's loop stay needed.
  graph_def.library.CopyFrom(frozen.library)
  graph_def.versions.CopyFrom(frozen.versions)
  return graph_def


def session_config(base_config, serving_precision):
  """The ConfigProto to serve in: the base one's threads, plus the bf16 rewrite for 'bf16'."""
  config = config_pb2.ConfigProto()
  if base_config is not None:
    config.CopyFrom(base_config)
  if serving_precision == 'bf16':
    precision.enable_bf16_rewrite(config)
  return config


def load_frozen(graph_def, config):
  """A session on the frozen graph, its tensor names those of the graph it was made from."""
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name='')
  return tf.compat.v1.Session(graph=graph, config=config)


def _node(tensor_name):
  return tensor_name.split(':')[0].lstrip('^')
