"""TF Serving's gRPC messages, built here from a table of their fields, in a pool of our own.

Why not import them from `tensorflow-serving-api`: its wheel requires the `tensorflow`
package, which would install a second TensorFlow over `tensorflow-cpu` (docs/serving.md,
"gRPC"). The wire format is the field numbers and types, and the message names matter only
where an `Any` names its type (GetModelMetadata's `signature_def`), so the table keeps TF
Serving's numbers and full names; tests/serving/test_grpc.py compares every field with the
official package's. A pool of our own, not the default one, so that a process may also import
the official client's modules (same names, other files) without a clash.
"""

from google.protobuf import any_pb2
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import wrappers_pb2
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.tsl.protobuf import error_codes_pb2

PACKAGE = 'tensorflow.serving'
_VERSION_POLICY = 'FileSystemStoragePathSourceConfig.ServableVersionPolicy'

# Messages: name -> fields (name, number, type[, 'repeated' | 'oneof:NAME' | 'map:KEY']).
# A type starting with an upper-case letter is a message (or enum) of this package unless it
# names its package; `map:K` makes a map<K, type>.
_MESSAGES = {
    'ModelSpec': [('name', 1, 'string'),
                  ('version', 2, 'google.protobuf.Int64Value', 'oneof:version_choice'),
                  ('version_label', 4, 'string', 'oneof:version_choice'),
                  ('signature_name', 3, 'string')],
    'PredictRequest': [('model_spec', 1, 'ModelSpec'),
                       ('inputs', 2, 'tensorflow.TensorProto', 'map:string'),
                       ('output_filter', 3, 'string', 'repeated')],
    'PredictResponse': [('model_spec', 2, 'ModelSpec'),
                        ('outputs', 1, 'tensorflow.TensorProto', 'map:string')],
    'SignatureDefMap': [('signature_def', 1, 'tensorflow.SignatureDef', 'map:string')],
    'GetModelMetadataRequest': [('model_spec', 1, 'ModelSpec'),
                                ('metadata_field', 2, 'string', 'repeated')],
    'GetModelMetadataResponse': [('model_spec', 1, 'ModelSpec'),
                                 ('metadata', 2, 'google.protobuf.Any', 'map:string')],
    'StatusProto': [('error_code', 1, 'tensorflow.error.Code'),
                    ('error_message', 2, 'string')],
    'GetModelStatusRequest': [('model_spec', 1, 'ModelSpec')],
    'ModelVersionStatus': [('version', 1, 'int64'), ('state', 2, 'ModelVersionStatus.State'),
                           ('status', 3, 'StatusProto')],
    'GetModelStatusResponse': [('model_version_status', 1, 'ModelVersionStatus', 'repeated')],
    # Classify, Regress and MultiInference take tf.Examples (`input`, field 2), which no export
    # here reads: the server answers them from the model spec, and skips the rest unread.
    'ClassificationRequest': [('model_spec', 1, 'ModelSpec')],
    'ClassificationResponse': [('model_spec', 2, 'ModelSpec')],
    'RegressionRequest': [('model_spec', 1, 'ModelSpec')],
    'RegressionResponse': [('model_spec', 2, 'ModelSpec')],
    'InferenceTask': [('model_spec', 1, 'ModelSpec'), ('method_name', 2, 'string')],
    'MultiInferenceRequest': [('tasks', 1, 'InferenceTask', 'repeated')],
    'MultiInferenceResponse': [],
    _VERSION_POLICY + '.Latest': [('num_versions', 1, 'uint32')],
    _VERSION_POLICY + '.All': [],
    _VERSION_POLICY + '.Specific': [('versions', 1, 'int64', 'repeated')],
    _VERSION_POLICY: [('latest', 100, _VERSION_POLICY + '.Latest', 'oneof:policy_choice'),
                      ('all', 101, _VERSION_POLICY + '.All', 'oneof:policy_choice'),
                      ('specific', 102, _VERSION_POLICY + '.Specific', 'oneof:policy_choice')],
    'FileSystemStoragePathSourceConfig': [],
    # model_type (3, deprecated) and logging_config (6) are left out: a config file that sets
    # them is refused naming the field; in a gRPC reload request they are unknown, ignored.
    'ModelConfig': [('name', 1, 'string'), ('base_path', 2, 'string'),
                    ('model_platform', 4, 'string'),
                    ('model_version_policy', 7, _VERSION_POLICY),
                    ('version_labels', 8, 'int64', 'map:string')],
    'ModelConfigList': [('config', 1, 'ModelConfig', 'repeated')],
    'ModelServerConfig': [('model_config_list', 1, 'ModelConfigList', 'oneof:config'),
                          ('custom_model_config', 2, 'google.protobuf.Any', 'oneof:config')],
    'ReloadConfigRequest': [('config', 1, 'ModelServerConfig'),
                            ('metric_names', 2, 'string', 'repeated')],
    'ReloadConfigResponse': [('status', 1, 'StatusProto')],
}
_ENUMS = {'ModelVersionStatus.State': [('UNKNOWN', 0), ('START', 10), ('LOADING', 20),
                                       ('AVAILABLE', 30), ('UNLOADING', 40), ('END', 50)]}
SERVICES = {
    'PredictionService': [('Classify', 'ClassificationRequest', 'ClassificationResponse'),
                          ('Regress', 'RegressionRequest', 'RegressionResponse'),
                          ('Predict', 'PredictRequest', 'PredictResponse'),
                          ('MultiInference', 'MultiInferenceRequest', 'MultiInferenceResponse'),
                          ('GetModelMetadata', 'GetModelMetadataRequest',
                           'GetModelMetadataResponse')],
    'ModelService': [('GetModelStatus', 'GetModelStatusRequest', 'GetModelStatusResponse'),
                     ('HandleReloadConfigRequest', 'ReloadConfigRequest',
                      'ReloadConfigResponse')],
}
_SCALARS = {'string': descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            'int64': descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
            'uint32': descriptor_pb2.FieldDescriptorProto.TYPE_UINT32}
_DEPENDENCIES = (wrappers_pb2, any_pb2, tensor_pb2, meta_graph_pb2, error_codes_pb2)
_FOREIGN_ENUMS = {'tensorflow.error.Code'}


def _full(type_name):
  return type_name if type_name.startswith(('google.', 'tensorflow.')) else (
      '%s.%s' % (PACKAGE, type_name))


def _add_file(pool, file_descriptor, added):
  """Adds a file of the default pool, after its dependencies, to `pool`."""
  if file_descriptor.name in added:
    return
  for dependency in file_descriptor.dependencies:
    _add_file(pool, dependency, added)
  proto = descriptor_pb2.FileDescriptorProto()
  file_descriptor.CopyToProto(proto)
  pool.Add(proto)
  added.add(file_descriptor.name)


def _message_proto(container, name):
  """The DescriptorProto for a dotted name relative to the file, made on first use."""
  parent, _, leaf = name.rpartition('.')
  siblings = container.message_type if not parent else _message_proto(
      container, parent).nested_type
  for message in siblings:
    if message.name == leaf:
      return message
  message = siblings.add()
  message.name = leaf
  return message


def _set_type(field, type_name):
  if type_name in _SCALARS:
    field.type = _SCALARS[type_name]
    return
  enum = type_name in _ENUMS or type_name in _FOREIGN_ENUMS
  field.type = (descriptor_pb2.FieldDescriptorProto.TYPE_ENUM if enum
                else descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
  field.type_name = '.' + _full(type_name)


def _file_proto():
  proto = descriptor_pb2.FileDescriptorProto(
      name='mnist_cnn/serving/tensorflow_serving_apis.proto', package=PACKAGE, syntax='proto3',
      dependency=[module.DESCRIPTOR.name for module in _DEPENDENCIES])
  for name, fields in _MESSAGES.items():
    message = _message_proto(proto, name)
    for field_name, number, type_name, *kind in fields:
      kind = kind[0] if kind else ''
      field = message.field.add(name=field_name, number=number,
                                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
      if kind.startswith('map:'):
        entry = message.nested_type.add(name=''.join(
            part.capitalize() for part in field_name.split('_')) + 'Entry')
        entry.options.map_entry = True
        key = entry.field.add(name='key', number=1,
                              label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        _set_type(key, kind[4:])
        value = entry.field.add(name='value', number=2,
                                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        _set_type(value, type_name)
        field.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        field.type_name = '.%s.%s.%s' % (PACKAGE, name, entry.name)
        continue
      _set_type(field, type_name)
      if kind == 'repeated':
        field.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
      elif kind.startswith('oneof:'):
        oneofs = [o.name for o in message.oneof_decl]
        if kind[6:] not in oneofs:
          message.oneof_decl.add(name=kind[6:])
          oneofs.append(kind[6:])
        field.oneof_index = oneofs.index(kind[6:])
  for name, values in _ENUMS.items():
    parent, _, leaf = name.rpartition('.')
    enum = _message_proto(proto, parent).enum_type.add(name=leaf)
    for value_name, number in values:
      enum.value.add(name=value_name, number=number)
  for service_name, methods in SERVICES.items():
    service = proto.service.add(name=service_name)
    for method, request, response in methods:
      service.method.add(name=method, input_type='.%s.%s' % (PACKAGE, request),
                         output_type='.%s.%s' % (PACKAGE, response))
  return proto


def _build():
  pool = descriptor_pool.DescriptorPool()
  added = set()
  for module in _DEPENDENCIES:
    _add_file(pool, module.DESCRIPTOR, added)
  pool.Add(_file_proto())
  return pool


POOL = _build()


def message(name):
  """The message class of TF Serving's `name` (relative to tensorflow.serving, or full)."""
  return message_factory.GetMessageClass(POOL.FindMessageTypeByName(_full(name)))


ModelSpec = message('ModelSpec')
PredictRequest = message('PredictRequest')
PredictResponse = message('PredictResponse')
SignatureDefMap = message('SignatureDefMap')
GetModelMetadataRequest = message('GetModelMetadataRequest')
GetModelMetadataResponse = message('GetModelMetadataResponse')
GetModelStatusRequest = message('GetModelStatusRequest')
GetModelStatusResponse = message('GetModelStatusResponse')
ModelVersionStatus = message('ModelVersionStatus')
ModelServerConfig = message('ModelServerConfig')
ReloadConfigRequest = message('ReloadConfigRequest')
ReloadConfigResponse = message('ReloadConfigResponse')
TensorProto = message('tensorflow.TensorProto')
