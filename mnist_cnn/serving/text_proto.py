"""The protocol-buffer text format of TF Serving's small configuration files, read without
their .proto files (--model_config_file, whose messages gRPC needs anyway, is read by protobuf
itself against tfs_protos.py's).

  parse(text) -> {field: [value, ...]}   a message: each field's values in file order; a
                                         nested message is such a dict, a scalar a str, int,
                                         float or bool, an enum value its name (str)

What TF Serving's --monitoring_config_file and --batching_parameters_file hold is this
format:
`name: value` or `name { ... }` (also `name: { ... }` and `< ... >`), fields separated by
white space, commas or semicolons, `#` comments, strings in single or double quotes with C
escapes. A file that is not that is a TextProtoError naming its line.
"""

import ast
import re

_TOKEN = re.compile(r'''
    (?P<space>[ \t\r\n,;]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?(?![\w.]))
  | (?P<name>[A-Za-z_][\w.]*)
  | (?P<punct>[:{}<>])
''', re.VERBOSE)
_CLOSE = {'{': '}', '<': '>'}


class TextProtoError(ValueError):
  """The text is not a protocol-buffer text message; the message names the line."""


def _tokens(text):
  position, line = 0, 1
  while position < len(text):
    match = _TOKEN.match(text, position)
    if not match:
      raise TextProtoError('line %d: unexpected %r' % (line, text[position:position + 20]))
    if match.lastgroup != 'space':
      yield match.lastgroup, match.group(), line
    line += match.group().count('\n')
    position = match.end()


def _scalar(kind, token, line):
  if kind == 'string':
    try:
      return ast.literal_eval(token)
    except (ValueError, SyntaxError):
      raise TextProtoError('line %d: bad string %s' % (line, token)) from None
  if kind == 'number':
    token = token.rstrip('fF')
    return float(token) if any(c in token for c in '.eE') else int(token)
  return {'true': True, 'True': True, 'false': False, 'False': False}.get(token, token)


def parse(text):
  """The message in text, as {field: [values]}.

  Raises:
    TextProtoError: the text is not in the format; the message says where.
  """
  return _message(list(_tokens(text)), 0, None)[0]


def _message(tokens, index, close):
  message = {}
  while index < len(tokens):
    kind, token, line = tokens[index]
    if close and token == close:
      return message, index + 1
    if kind != 'name':
      raise TextProtoError('line %d: expected a field name, found %r' % (line, token))
    index += 1
    if index < len(tokens) and tokens[index][1] == ':':
      index += 1
    if index >= len(tokens):
      raise TextProtoError('line %d: field %s has no value' % (line, token))
    value_kind, value, value_line = tokens[index]
    if value in _CLOSE:
      value, index = _message(tokens, index + 1, _CLOSE[value])
    elif value_kind in ('string', 'number', 'name'):
      value, index = _scalar(value_kind, value, value_line), index + 1
      # adjacent strings are one string, as in C
      while value_kind == 'string' and index < len(tokens) and tokens[index][0] == 'string':
        value += _scalar('string', tokens[index][1], tokens[index][2])
        index += 1
    else:
      raise TextProtoError('line %d: field %s has no value' % (value_line, token))
    message.setdefault(token, []).append(value)
  if close:
    raise TextProtoError('the file ends inside a message: %r is missing' % close)
  return message, index


def single(message, field, default=None, kind=None, where='the file'):
  """The one value of field in message (default when absent).

  Raises:
    TextProtoError: the field is repeated, or its value is not of kind (a type or tuple).
  """
  values = message.get(field)
  if not values:
    return default
  if len(values) > 1:
    raise TextProtoError('%s: %s is given %d times; it takes one value' % (
        where, field, len(values)))
  if kind is not None and not isinstance(values[0], kind):
    raise TextProtoError('%s: %s has a value of the wrong kind: %r' % (where, field, values[0]))
  return values[0]


def check_fields(message, known, where):
  """Raises TextProtoError naming the first field of message not in known."""
  for field in message:
    if field not in known:
      raise TextProtoError('%s: unknown field %s (known: %s)' % (where, field,
                                                                  ', '.join(sorted(known))))
