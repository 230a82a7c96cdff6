"""Every benchmark script's --smoke run (benchmarks/, benchmarks/peers/): exit status 0, and its
JSON and table output as the full run prints them, so that no script rots. Each script runs once
in a subprocess outside the repository, two at a time; with --smoke --json the scripts print the
JSON on stdout and then the table on stderr."""

import concurrent.futures
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds per script; 3-25 s each on an idle 2-core machine

# name: (script, arguments after --smoke, the peer's module or None, a line of the table).
# phenaki draws 2 candidates: the candidate batch is where the script broke (the bundle's 4).
SCRIPTS = {
    "nearby_attention": ("benchmarks/nearby_attention.py", ["--json"], None,
                         "speed-up over dense"),
    "nearby_attention_tiles": ("benchmarks/nearby_attention_tiles.py", ["--json"], None,
                               "layout copies alone"),
    "attention_patterns": ("benchmarks/attention_patterns.py", ["--json"], None,
                           "decode per token"),
    "xla_cpu_options": ("benchmarks/xla_cpu_options.py", ["--json"], None, "train text_encoder"),
    # Prints the table, then the JSON on its last line.
    "input_pipeline": ("benchmarks/input_pipeline.py", [], None, "examples/s"),
    "imagen_peer": ("benchmarks/peers/imagen_training_sampling.py", ["--json"], "imagen_pytorch",
                    "peer / jzoo"),
    "phenaki_peer": ("benchmarks/peers/phenaki_training_sampling.py",
                     ["--json", "--candidates", "2"], "phenaki_pytorch", "peer / jzoo"),
    "nuwa_peer": ("benchmarks/peers/nuwa_decoding.py", ["--json"], "nuwa_pytorch",
                  "3x4x4-token video"),
    "dalle2_peer": ("benchmarks/peers/dalle2_training_sampling.py", ["--json"], "dalle2_pytorch",
                    "peer / jzoo"),
    "cogview2_hierarchical": ("benchmarks/cogview2_hierarchical.py", ["--json"], None,
                              "passes h / flat"),
}
ORDER = ("phenaki_peer", "dalle2_peer", "attention_patterns", "xla_cpu_options", "imagen_peer",
         "nuwa_peer", "input_pipeline", "nearby_attention",
         "cogview2_hierarchical", "nearby_attention_tiles")  # longest first


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{name: (CompletedProcess, seconds)} of every script's smoke run."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")  # compiles dominate, as in tests

  # Made here, not in the threads: tmp_path_factory numbers its folders without a lock.
  folders = {name: tmp_path_factory.mktemp(name) for name in ORDER}

  def run(name):
    script, args, _, _ = SCRIPTS[name]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(REPO, script), "--smoke", *args],
                         cwd=folders[name], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    return out, time.perf_counter() - t0

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    done = dict(zip(ORDER, pool.map(run, ORDER)))
  print(f"\nbenchmark smoke runs, {time.perf_counter() - t0:.1f} s in all: " + ", ".join(
      f"{name} {seconds:.1f} s" for name, (_, seconds) in done.items()), file=sys.stderr)
  return done


def test_every_script_has_a_smoke_run_here():
  scripts = {os.path.relpath(p, REPO) for pattern in ("benchmarks/*.py", "benchmarks/peers/*.py")
             for p in glob.glob(os.path.join(REPO, pattern))}
  assert scripts - {"benchmarks/_common.py"} == {s for s, _, _, _ in SCRIPTS.values()}
  assert set(ORDER) == set(SCRIPTS)


def _has_peer(module):
  return all(importlib.util.find_spec(m) is not None for m in ("torch", module))


def _result(runs, name):
  """The run's JSON object, after checking its exit status, table and peer-skip line."""
  out, _ = runs[name]
  _, args, peer, line = SCRIPTS[name]
  assert out.returncode == 0, f"{name}:\n{out.stderr[-3000:]}"
  if "--json" in args:
    result, table = json.loads(out.stdout), out.stderr
  else:
    result, table = json.loads(out.stdout.splitlines()[-1]), out.stdout
  assert line in table, table[-3000:]
  if peer is not None:
    skipped = not _has_peer(peer)
    assert ("peer skipped:" in out.stderr) == skipped, out.stderr[-3000:]
    assert (result["peer"] is None) == skipped and result["smoke"] is True
  return result


def test_nearby_attention(runs):
  r = _result(runs, "nearby_attention")
  assert r["grid"] == [4, 4, 4] and r["fwd_speedup"] > 0 and r["fwd_bwd_speedup"] > 0
  names = {row["name"] for row in r["rows"]}
  assert {"auto fwd", "auto fwd+bwd", "dense (reference) fwd", "auto fwd (scaling)"} <= names
  assert [s["frames"] for s in r["scaling"]] == [2, 4] and r["scaling"][1]["ratio_to_previous"] > 0


def test_nearby_attention_tiles(runs):
  r = _result(runs, "nearby_attention_tiles")
  (row,) = r["rows"]
  assert (row["block_q"], row["block_k"]) == (16, 16) and row["fwd_ms"] > 0
  assert row["fwd_bwd_ms"] > 0 and r["layout_copies_ms"] > 0


def test_attention_patterns(runs):
  r = _result(runs, "attention_patterns")
  assert [p["pattern"] for p in r["patterns"]] == ["axial_t", "local", "cross", "window"]
  for p in r["patterns"]:
    assert p["fwd_speedup"] > 0 and p["fwd_bwd_speedup"] > 0 and p["doubling_ratio_fwd"] > 0
    assert p["decode_ratio"] > 0 and p["dense_decode_ratio"] > 0 and "jzoo.nn" in p["decode_note"]
  assert r["patterns"][2]["k_grid"] == [1, 2, 2] and r["smoke"] is True


def test_xla_cpu_options(runs):
  r = _result(runs, "xla_cpu_options")
  assert r["config"] == "imagen:micro" and r["fusions"]
  assert set(r["seconds"]) == {f"{label}/{what}" for label in ("xla_defaults", "fusions")
                               for what in ("train text_encoder", "generate 1")}
  assert all(s > 0 for s in r["seconds"].values())


def test_input_pipeline(runs):
  r = _result(runs, "input_pipeline")
  assert r["images"] == 16 and r["batch"] == 4
  assert "thread prefetch" in r["examples_per_s"] and all(
      v > 0 for v in r["examples_per_s"].values())
  assert r["vs_thread_prefetch"]["thread prefetch"] == 1.0


def test_imagen_peer(runs):
  r = _result(runs, "imagen_peer")
  assert r["config"] == "imagen:micro" and r["stage"] == "base"
  assert r["jzoo"]["params"] > 0 and r["jzoo"]["gflops"] > 0 and r["jzoo"]["batch"] > 0
  assert r["best"]["jzoo_train"]["seconds"] > 0 and r["best"]["jzoo_sample"]["seconds"] > 0
  for key in ("train_speedup", "sample_speedup", "param_ratio"):
    assert (r[key] is None) == (r["peer"] is None)


def test_phenaki_peer(runs):
  r = _result(runs, "phenaki_peer")
  assert r["config"] == "phenaki:micro" and r["candidates"] == r["jzoo"]["candidates"] == 2
  names = ("train_tokenizer", "train_transformer", "sample")
  assert all(r["best"]["jzoo_" + k]["seconds"] > 0 for k in names)
  assert set(r["speedup"]) == set(names)
  assert all((v is None) == (r["peer"] is None) for v in r["speedup"].values())
  assert r["jzoo"]["tokenizer_params"] > 0 and r["jzoo"]["transformer_params"] > 0


def test_nuwa_peer(runs):
  r = _result(runs, "nuwa_peer")
  assert r["tokens"] == 3 * 4 * 4 and r["jzoo"]["seconds"] > 0 and r["jzoo"]["params"] > 0
  assert (r["speedup"] is None) == (r["peer"] is None)


def test_dalle2_peer(runs):
  r = _result(runs, "dalle2_peer")
  assert r["config"] == "dalle2:micro" and r["jzoo"]["candidates"] == 2
  names = ("train_prior", "train_decoder", "sample_prior", "sample_decoder", "sample_total")
  assert all(r["best"]["jzoo_" + k]["seconds"] > 0 for k in names)
  assert set(r["speedup"]) == set(names)
  assert all((v is None) == (r["peer"] is None) for v in r["speedup"].values())
  assert r["jzoo"]["prior_params"] > 0 and r["jzoo"]["decoder_params"] > 0
  assert all((v is None) == (r["peer"] is None) for v in r["param_ratio"].values())


def test_cogview2_hierarchical(runs):
  (r,) = _result(runs, "cogview2_hierarchical")["rows"].values()
  assert (r["coarse_grid"], r["fine_grid"]) == ([2, 2], [4, 4])
  assert r["hierarchical_s"] > 0 and r["flat_s"] > 0 and r["speedup"] > 0
  assert r["flat_forward_passes"] == 16 and r["coglm_params"] > 0 and r["sr_params"] > 0


def test_peer_programs_do_not_see_the_repos_kernels_folder():
  """The peers' transformers imports the pip package `kernels`: the repository's kernels/ must
  not shadow it, even from the repo root with the repo on PYTHONPATH."""
  spec = importlib.util.spec_from_file_location("benchmarks_common",
                                                os.path.join(REPO, "benchmarks", "_common.py"))
  _common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(_common)
  code = "import importlib.util; print(importlib.util.find_spec('kernels'))"
  env = dict(os.environ, PYTHONPATH=REPO)
  bare = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, check=True)
  assert "kernels" in bare.stdout  # what the peer found before
  guarded = subprocess.run([sys.executable, "-c", _common.PATH_GUARD + code], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True)
  assert guarded.stdout.strip() == "None"
