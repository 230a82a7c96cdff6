"""Shared CLI plumbing: user errors become one line on stderr and exit status 2; sampling
settings from the command line."""

import functools
import sys

from jzoo import errors
from jzoo.errors import UserError


def main_guard(fn):
  """Wraps a CLI main so that a UserError prints one line and exits 2, Ctrl-C exits 130."""

  @functools.wraps(fn)
  def wrapper(argv=None):
    try:
      return fn(argv)
    except errors.UserError as e:
      prog = fn.__module__
      if prog == "__main__":  # python -m jzoo.sample: name the module, not "__main__"
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        prog = spec.name if spec else "jzoo"
      print(f"{prog}: error: {e}", file=sys.stderr)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      sys.exit(130)

  return wrapper


def split_sampling_overrides(argv):
  """argv without its `--config.sample.KEY=VALUE` flags, and those overrides ("sample.KEY=VALUE").
  Only sampling settings can change after training; any other --config.* is refused."""
  from jzoo import config as config_lib  # only here: the CLIs' guard stays import-light
  rest, overrides = config_lib.split_config_overrides(argv)
  for item in overrides:
    if not item.startswith("sample."):
      raise UserError(f"--config.{item}: only sampling settings change at sampling time "
                      "(--config.sample.KEY=VALUE, e.g. --config.sample.temperature=0.5)")
  return rest, overrides
