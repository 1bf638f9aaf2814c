"""The models a server serves, by name: one ModelManager each, made, changed and dropped as
the configuration (model_config.py) says, and the one place requests resolve a model name,
version or label to a loaded version, for REST and gRPC alike.
"""

import asyncio

from mnist_cnn.serving import models


class ConfigError(ValueError):
  """A configuration that cannot be applied as asked (a label naming a version not served)."""


class ServedModels(object):
  """name -> ModelManager; `make_manager(entry)` builds one for a model_config.ModelEntry."""

  def __init__(self, make_manager, allow_unavailable_labels=False):
    self._make_manager = make_manager
    self._allow_unavailable_labels = allow_unavailable_labels
    self.managers = {}
    self._lock = asyncio.Lock()

  def serves(self, name):
    return name in self.managers

  def manager(self, name):
    return self.managers.get(name)

  def versions_in_memory(self):
    """{(model name,): versions in memory}, for the metrics gauge."""
    return {(name,): m.versions_in_memory() for name, m in self.managers.items()}

  async def apply(self, entries):
    """Serves the models of `entries` as they say: new ones are loaded, dropped ones retired,
    kept ones take their new policy (and base path) and are polled at once. Labels are set
    last, and only on versions then served, as TF Serving does.

    Raises:
      ConfigError: a label names a version not served; everything else is applied, and that
        model keeps its labels.
    """
    async with self._lock:
      wanted = {entry.name: entry for entry in entries}
      for name in sorted(set(self.managers) - set(wanted)):
        models.log('model %s left the configuration: retiring its versions' % name)
        self.managers.pop(name).retire_all()
      for entry in entries:
        manager = self.managers.get(entry.name)
        if manager is not None and manager.base_path != entry.base_path:
          manager.retire_all()
          manager = None
        if manager is None:
          manager = self.managers[entry.name] = self._make_manager(entry)
        manager.policy = entry.policy
      await self._poll_all()
      refused = []
      for entry in entries:
        manager = self.managers[entry.name]
        missing = [] if self._allow_unavailable_labels else sorted(
            (label, v) for label, v in entry.labels.items() if v not in manager.versions)
        if missing:
          refused.append('Request to assign label %s to version %d of model %s, which is not '
                         'currently available for inference' % (missing[0] + (entry.name,)))
        else:
          manager.labels = dict(entry.labels)
      if refused:
        raise ConfigError('; '.join(refused))

  async def poll(self):
    async with self._lock:
      await self._poll_all()

  async def _poll_all(self):
    for manager in list(self.managers.values()):
      try:
        await manager.poll()
      except Exception as e:  # pylint: disable=broad-except
        models.log('error while looking for versions of %s under %s: %s: %s' % (
            manager.name, manager.base_path, type(e).__name__, e))

  def resolve(self, name, version=None, label=None):
    """The loaded version a request names, or the error TF Serving gives (a ServingError)."""
    manager = self.managers.get(name)
    if manager is not None:
      return manager.resolve(version, label)
    if label is not None:
      raise models.bad_request('Unrecognized servable version label: %s' % label)
    models.parse_version(version)
    raise models.not_found_for(name, version)

  def acquire(self, name, version=None, label=None):
    """resolve(), acquired for a call (the caller releases it). A version retired between
    resolving and acquiring is resolved again, to the one that replaced it; a 503 if that one
    goes too."""
    loaded = self.resolve(name, version, label)
    if not loaded.acquire():
      loaded = self.resolve(name, version, label)
      if not loaded.acquire():
        raise models.ServingError(503, 'the model is being replaced; retry')
    return loaded

  def status(self, name, version=None, label=None):
    """The versions GetModelStatus lists: all of the model's served versions, or the one
    named, with TF Serving's NOT_FOUND wording."""
    manager = self.managers.get(name)
    if label is not None:
      return [self.resolve(name, None, label).version]
    number = models.parse_version(version)
    served = sorted(manager.versions) if manager is not None else []
    if number is None and served:
      return served
    if number is None:
      raise models.not_found('Could not find any versions of model %s' % name)
    if number not in served:
      raise models.not_found('Could not find version %d of model %s' % (number, name))
    return [number]

  def close(self):
    for manager in self.managers.values():
      manager.close()
