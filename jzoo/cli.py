"""Shared CLI plumbing: user errors become one line on stderr and exit status 2."""

import functools
import sys

from jzoo import errors


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
