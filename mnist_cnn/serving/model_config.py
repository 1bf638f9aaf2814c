"""Which models a server serves: TF Serving's ModelServerConfig, from --model_config_file (text
format), from a gRPC HandleReloadConfigRequest, or from --model_name/--model_base_path.

  model_config_list {
    config {
      name: "mnist"  base_path: "/models/mnist"  model_platform: "tensorflow"
      model_version_policy { specific { versions: 1 versions: 2 } }
      version_labels { key: "stable" value: 1 }
      version_labels { key: "canary" value: 2 }
    }
  }

Parsed with protobuf's text format against TF Serving's own field names and numbers
(tfs_protos.py), so a file TF Serving reads reads here, and a misspelt field is an error naming
it rather than a setting silently dropped. The checks are TF Serving's server_core ones.
"""

import collections
import os

from google.protobuf import text_format

from mnist_cnn.serving import models
from mnist_cnn.serving import tfs_protos

ModelEntry = collections.namedtuple('ModelEntry', ['name', 'base_path', 'policy', 'labels'])


def from_flags(model_name, model_base_path):
  """The one-model shorthand: the highest version under the base path, no labels."""
  if not model_name:
    raise ValueError('--model_name must not be empty')
  return [_entry(model_name, model_base_path, models.VersionPolicy(), {},
                 '--model_base_path')]


def read_file(path):
  """The entries of a --model_config_file; a one-line ValueError naming the file otherwise."""
  where = '--model_config_file %s' % path
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError('%s cannot be read: %s' % (where, getattr(e, 'strerror', None) or e)
                     ) from None
  config = tfs_protos.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ValueError('%s: %s' % (where, e)) from None
  return from_proto(config, where)


def from_proto(config, where):
  """The entries of a ModelServerConfig message; a one-line ValueError otherwise."""
  if config.WhichOneof('config') == 'custom_model_config':
    raise ValueError('%s: custom_model_config is not supported; use model_config_list' % where)
  entries, names = [], set()
  for model in config.model_config_list.config:
    name = model.name
    if not name:
      raise ValueError('%s: a model config has no name' % where)
    if name in names:
      raise ValueError('%s: Illegal to list model %s multiple times in config list' % (
          where, name))
    names.add(name)
    if model.model_platform not in ('', 'tensorflow'):
      raise ValueError('%s: model %s requests platform %r; this server serves "tensorflow" '
                       'SavedModels' % (where, name, model.model_platform))
    entries.append(_entry(name, model.base_path, _policy(model, where),
                          dict(model.version_labels), '%s: model %s' % (where, name)))
  return entries


def _policy(model, where):
  policy = model.model_version_policy
  choice = policy.WhichOneof('policy_choice')
  if choice == 'all':
    return models.VersionPolicy('all')
  if choice == 'specific':
    if not policy.specific.versions:
      raise ValueError('%s: model %s: a specific version policy must list versions' % (
          where, model.name))
    return models.VersionPolicy('specific', versions=policy.specific.versions)
  # TF Serving serves at least one: num_versions 0 (or no policy) means 1.
  return models.VersionPolicy('latest', max(1, policy.latest.num_versions))


def _entry(name, base_path, policy, labels, where):
  if '/' in name or ':' in name:
    raise ValueError('%s: model name %r may not hold "/" or ":" (it is a URL path part)' % (
        where, name))
  if not base_path:
    raise ValueError('%s: base_path is empty' % where)
  if not os.path.isdir(base_path):
    raise ValueError('%s: base_path %s is not a directory' % (where, base_path))
  for label, version in labels.items():
    if not label or version < 0:
      raise ValueError('%s: version label %r -> %d: labels must be non-empty and versions '
                       'non-negative' % (where, label, version))
  return ModelEntry(name, os.path.abspath(base_path), policy, labels)
