"""What the benchmark scripts share: the `--smoke` flag, and starting the PyTorch peers.

Scripts import it with their own folder's parent on sys.path (benchmarks/ is not a package).
"""

import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# First lines of every peer program: the peers' transformers imports a pip package named
# `kernels`, which the repository's top-level kernels/ (jzoo.kernels' source) would shadow if
# the repo root or '' (python -c's cwd) were on sys.path, e.g. via PYTHONPATH=$PWD.
PATH_GUARD = f"""import os as _os, sys as _sys
_sys.path[:] = [_p for _p in _sys.path if _p and _os.path.realpath(_p) != {REPO!r}]
"""


def parse_args(parser, smoke_defaults, argv=None):
  """parser's arguments plus --smoke, which sets `smoke_defaults` (flags given still win)."""
  parser.add_argument("--smoke", action="store_true",
                      help="one tiny iteration at the smallest shapes, in seconds: checks that "
                           "the script runs end to end (its numbers mean nothing)")
  args = parser.parse_args(argv)
  if args.smoke:
    parser.set_defaults(**smoke_defaults)
    args = parser.parse_args(argv)
  return args


def print_json(args, result, **dumps):
  """With --json, prints `result` as JSON and says whether to stop there: with --smoke the table
  follows, on stderr, so that one run checks both printers."""
  if not args.json:
    return False
  print(json.dumps(result, **dumps), flush=True)
  if args.smoke:
    sys.stdout = sys.stderr  # for the rest of main: the table
  return not args.smoke


def peer_process():
  """subprocess keyword arguments of a peer: outside the repository, offline."""
  return dict(cwd=tempfile.gettempdir(),
              env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))


def missing_peer(python, modules):
  """Why `python` cannot run the peer (a phrase), or None when it finds all of `modules`."""
  if not python:
    return "no --peer-python given"
  code = PATH_GUARD + ("import importlib.util as u\n"
                       "print(' '.join(m for m in _sys.argv[1:] if u.find_spec(m) is None))")
  try:
    out = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True,
                         timeout=120, **peer_process())
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"{python} does not run ({e})"
  if out.returncode:
    return f"{python} failed: {' '.join(out.stderr.split())[-300:]}"
  missing = out.stdout.split()
  return f"{python} has no {', '.join(missing)}" if missing else None


def peer_python(args, packages, modules):
  """The peer's python (`--peer-python`; in smoke mode this one by default), or None after a
  `peer skipped:` line on stderr when it lacks the peer (smoke mode; otherwise an exit)."""
  python = args.peer_python or (sys.executable if args.smoke else None)
  reason = missing_peer(python, modules)
  if reason is None:
    return python
  if not args.smoke:
    sys.exit(f"the peer cannot run: {reason}; --peer-python must name a python with {packages} "
             "(benchmarks/peers/README.md)")
  print(f"peer skipped: {packages} not installed ({reason}); running jzoo's side only",
        file=sys.stderr, flush=True)
  return None


def ratio(num, den):
  """num / den, or None where a side was skipped."""
  return None if num is None or den is None else num / den


def fmt(x, spec, unit="", missing="-"):
  """format(x, spec) + unit, or `missing` for a skipped side's None."""
  return missing if x is None else format(x, spec) + unit
