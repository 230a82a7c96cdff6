"""The training loop: `train_and_evaluate(config, workdir)`, called by `python -m jzoo.train` and notebooks.

One jitted step with explicit in/out shardings and donated state; sharded
init; orbax checkpoints every `train.checkpoint_every` steps (async), resumed
automatically; metrics to DIR/<stage>/metrics.jsonl and TensorBoard. A NaN or
infinite loss stops training before anything is saved.

`train.freeze` keeps matching parameters at their init; `train.init_from` starts a fresh run
from an export's `train.init_stage` through the mapping `train.init_map` (jzoo.training.init_maps);
`train.teacher_from` hands a distilling loss its teacher's params in `frozen[TEACHER]`.
"""

import functools
import json
import math
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jzoo import loading, registry
from jzoo.data import frozen_cache
from jzoo.data.pipeline import InputPipeline
from jzoo.data.sources import get_source
from jzoo.errors import CheckpointError, ConfigError, TrainingDiverged, UserError
from jzoo.io import checkpoint as ckpt_lib
from jzoo.models import params as params_lib
from jzoo.parallel import compiler, mesh as mesh_lib
from jzoo.parallel.sharding import logical_shardings, mesh_context, replicated
from jzoo.training import init_maps
from jzoo.training.metrics import MetricWriter, drop_rows_after, has_rows
from jzoo.training.optim import freeze_mask, freeze_patterns, make_optimizer


# A raw PRNG key, abstractly: shapes are derived without creating arrays on any device (the mesh
# may be a TPU topology that only exists for ahead-of-time compilation).
ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)

# The key of `frozen` under which a stage's loss finds the `train.teacher_from` params.
TEACHER = "teacher"


def ema_decay_at(step, decay):
  # Warm-up of the EMA so that short runs are not dominated by the random init.
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def _overwrite(params, new_values, path=()):
  """`params` with the leaves of the subtree `new_values` replaced (same paths, shapes, dtypes)."""
  out = dict(params)
  for key, value in new_values.items():
    if key not in params:
      raise ValueError(f"state update for {'/'.join(path + (key,))}, which is not a parameter")
    if isinstance(value, dict):
      out[key] = _overwrite(params[key], value, path + (key,))
    else:
      out[key] = jnp.asarray(value, params[key].dtype).reshape(params[key].shape)
  return out


class Trainer:
  """Builds the sharded state and the jitted step for one stage of a model."""

  def __init__(self, config, mesh, model=None):
    self.config = config
    self.mesh = mesh
    self.model = model or registry.build_model(config)
    self.stage = config.stage
    if self.stage not in self.model.stages:
      raise ConfigError(f"config.stage {self.stage!r} is not a stage of {config.model}; "
                        f"choose one of {list(self.model.stages)}")
    if self.model.stage(self.stage).untrainable:  # weights only from files: say so first
      raise ConfigError(self.model.stage(self.stage).untrainable)
    self.rules = self.model.axis_rules
    self.batch_spec = params_lib.abstract_batch(self.model, self.stage, config.train.batch_size)
    abstract_params, param_sh = abstract_stage(self.model, self.stage, mesh, self.batch_spec)
    # Checked here, before anything compiles or loads.
    self.frozen_mask = freeze_mask(abstract_params, config.train.freeze)
    self.init_map = init_maps.get(config.train.init_map)
    self.set_total_steps(config.train.steps)
    self._build_shardings(abstract_params, param_sh)

  def set_total_steps(self, total):
    """The optimizer and learning-rate schedule of a run of `total` steps."""
    self.tx, self.schedule = make_optimizer(self.config.optim, total, self.frozen_mask)

  # --- state ---------------------------------------------------------------
  def _init_params(self, rng, batch):
    return self.model.init(self.stage, rng, batch)["params"]

  def _build_shardings(self, abstract_params, param_sh):
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    repl = replicated(self.mesh)
    # Frozen leaves (train.freeze) are MaskedNodes in the optimizer state: they stay so.
    masked = lambda x: isinstance(x, optax.MaskedNode)
    opt_sh = optax.tree_map_params(self.tx, lambda o, s: o if masked(o) else s, abstract_opt,
                                   param_sh, transform_non_params=lambda _: repl, is_leaf=masked)
    self.state_shardings = {"step": repl, "rng": repl, "params": param_sh, "ema": param_sh,
                            "opt_state": opt_sh}
    self.abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        {"step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
         "params": abstract_params, "ema": abstract_params, "opt_state": abstract_opt},
        self.state_shardings)
    self.batch_shardings = {k: mesh_lib.batch_sharding(self.mesh, len(v.shape))
                            for k, v in self.batch_spec.items()}

  def init_state(self, seed):
    """Creates the train state directly in its shards (never whole on one device)."""

    def init(rng):
      init_rng, train_rng = jax.random.split(rng)
      batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in self.batch_spec.items()}
      params = nn.unbox(self._init_params(init_rng, batch))
      return {"step": jnp.zeros((), jnp.int32), "rng": train_rng, "params": params,
              "ema": params, "opt_state": self.tx.init(params)}

    with mesh_context(self.mesh, self.rules):
      return jax.jit(init, out_shardings=self.state_shardings)(jax.random.PRNGKey(seed))

  # --- step ----------------------------------------------------------------
  def _keep_frozen(self, new, old):
    """`new` with its `train.freeze` leaves taken from `old`."""
    if self.frozen_mask is None:
      return new
    return jax.tree_util.tree_map(lambda f, n, o: o if f else n, self.frozen_mask, new, old)

  def _train_step(self, state, batch, frozen):
    step_rng = jax.random.fold_in(state["rng"], state["step"])

    def loss_fn(params):
      # No gradients are computed for frozen leaves (their backward pass is dead code).
      params = self._keep_frozen(params, jax.lax.stop_gradient(params))
      return self.model.loss(self.stage, params, batch, step_rng, frozen)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Parameters a model updates without gradients (e.g. an EMA codebook) come back from the
    # loss as new values under "state_updates", a subtree of the params; they replace the
    # optimizer's (zero-gradient) result.
    new_values = metrics.pop("state_updates", None)
    if new_values is not None:
      params = _overwrite(params, jax.lax.stop_gradient(new_values))
    # Frozen leaves stay bit-identical, state updates included (adding a zero update, or an EMA
    # of a constant, can round).
    params = self._keep_frozen(params, state["params"])
    decay = ema_decay_at(state["step"], self.config.train.ema_decay)
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema"], params)
    ema = self._keep_frozen(ema, state["ema"])
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree_utils.tree_norm(grads),
                   lr=self.schedule(state["step"]))
    new_state = {"step": state["step"] + 1, "rng": state["rng"], "params": params, "ema": ema,
                 "opt_state": opt_state}
    return new_state, metrics

  def jit_step(self, frozen_shardings):
    repl = replicated(self.mesh)
    step = compiler.jit(self._train_step, ynn_fusions=compiler.ynn_fusions_of(self.config),
                        in_shardings=(self.state_shardings, self.batch_shardings, frozen_shardings),
                        out_shardings=(self.state_shardings, repl),
                        donate_argnums=(0,))

    @functools.wraps(step)
    def run(*args):
      with mesh_context(self.mesh, self.rules):
        return step(*args)

    return run

  def init_from_export(self, state):
    """A fresh state whose params and EMA are `train.init_from`'s weights of `train.init_stage`
    (default: this stage), mapped by `train.init_map`."""
    folder = loading.init_folder(self.config, keys=("init_from",))
    if folder is None:
      return state
    source = self.config.train.init_stage or self.stage
    params = loading.load_exported_stage(folder, source)
    if params is None:
      raise CheckpointError(f"train.init_from {folder!r} has no {source}.safetensors to start "
                            f"stage {self.stage!r} from; set train.init_stage to one of its stages")
    abstract = self.abstract_state["params"]
    params = self.init_map(params, abstract)
    # Parameters the export lacks (a module added to the config since) keep their fresh values:
    # they are marked with their abstract shapes here and taken from the fresh state on device.
    params, added = _fill_missing(params, abstract)
    if added:
      print(f"train.init_from: {len(added)} parameters not in the export start fresh: "
            + ", ".join(added[:8]) + (" ..." if len(added) > 8 else ""))
    what = f"train.init_from's {source!r}"
    shardings = self.state_shardings["params"]
    # params and ema from separate copies (each with its own fresh leaves): the step donates the
    # state, and one buffer donated twice crashes XLA.
    return dict(state, params=_placed(params, abstract, shardings, what, fresh=state["params"]),
                ema=_placed(params, abstract, shardings, what, fresh=state["ema"]))

  # --- frozen dependencies ---------------------------------------------------
  def frozen_abstract(self):
    """Abstract params and logical shardings of the frozen stages this stage reads, and of the
    teacher (under TEACHER) when `train.teacher_from` names one."""
    abstract, shardings = {}, {}
    for dep in self.model.frozen_stages(self.stage):
      external = self.model.frozen_abstract_params(dep)
      if external is not None:  # not a stage of this model (e.g. a perceptual loss network)
        abstract[dep] = external
        shardings[dep] = jax.tree_util.tree_map(lambda _: replicated(self.mesh), external)
        continue
      abstract[dep], shardings[dep] = abstract_stage(self.model, dep, self.mesh)
    teacher = self.teacher()
    if teacher is not None:
      # The teacher's architecture is its export's config, which may differ from this one.
      folder, stage = teacher
      model = registry.build_model(loading.exported_config(folder))
      abstract[TEACHER], shardings[TEACHER] = abstract_stage(model, stage, self.mesh)
    return abstract, shardings

  def teacher(self):
    """(export folder, stage) of the `train.teacher_from` params a distilling loss reads, or
    None."""
    folder = loading.init_folder(self.config, keys=("teacher_from",))
    if folder is None:
      return None
    stage = self.config.train.teacher_stage or self.stage
    if not os.path.isfile(os.path.join(folder, f"{stage}.safetensors")):
      raise CheckpointError(f"train.teacher_from {folder!r} has no {stage}.safetensors; set "
                            "train.teacher_stage to one of its stages")
    return folder, stage

  def load_frozen(self, workdir):
    """Frozen stages' params (and the teacher's), placed with their own logical shardings:
    arguments of the step, so no gradients and no optimizer state."""
    frozen = loading.load_frozen(self.model, self.stage, workdir)
    teacher = self.teacher()
    if teacher is not None:
      frozen[TEACHER] = loading.load_exported_stage(*teacher)
    abstract, shardings = self.frozen_abstract()
    placed = {}
    for dep, params in frozen.items():
      what = (f"train.teacher_from's {teacher[1]!r}" if dep == TEACHER
              else f"frozen stage {dep!r}")
      placed[dep] = _placed(params, abstract[dep], shardings[dep], what)
    return placed, {dep: shardings[dep] for dep in placed}


def abstract_stage(model, stage, mesh, batch=None):
  """A stage's abstract params and their logical shardings on `mesh`, built without allocating
  (`batch`: abstract, default one example of the stage's data)."""
  batch = params_lib.abstract_batch(model, stage, 1) if batch is None else batch
  with mesh_context(mesh, model.axis_rules):
    boxed = jax.eval_shape(lambda r, b: model.init(stage, r, b)["params"], ABSTRACT_KEY, batch)
  return nn.unbox(boxed), logical_shardings(boxed, mesh, model.axis_rules)


def _fill_missing(params, fresh, path=""):
  """`params` with the entries only `fresh` has added from it; returns (tree, added paths)."""
  if not isinstance(fresh, dict) or not isinstance(params, dict):
    return params, []
  out, added = dict(params), []
  for key, value in fresh.items():
    where = f"{path}/{key}"
    if key not in params:
      out[key] = value
      added.append(where)
    else:
      out[key], more = _fill_missing(params[key], value, where)
      added += more
  return out, added


def _placed(params, abstract, shardings, what, fresh=None):
  """Host params put on the mesh with `shardings`, cast to `abstract`'s dtypes (float16 exports
  load as float32); a clear error when their tree or shapes differ from `abstract`. Leaves left
  abstract in `params` (see _fill_missing) are taken from `fresh`, already on the mesh."""
  flat, tree = jax.tree_util.tree_flatten_with_path(params)
  want, want_tree = jax.tree_util.tree_flatten_with_path(abstract)
  if tree != want_tree:
    raise CheckpointError(f"{what} does not match the config's architecture: its parameters are "
                          f"{len(flat)} arrays, the config's {len(want)}; check the config")
  for (path, leaf), (_, spec) in zip(flat, want):
    if tuple(np.shape(leaf)) != tuple(spec.shape):
      raise CheckpointError(f"{what} does not match the config's architecture: "
                            f"{jax.tree_util.keystr(path)} is {tuple(np.shape(leaf))}, the config "
                            f"makes {tuple(spec.shape)}; check the config")

  def place(x, a, sh, f):
    return f if isinstance(x, jax.ShapeDtypeStruct) else jax.device_put(np.asarray(x, a.dtype), sh)

  return jax.tree_util.tree_map(place, params, abstract, shardings,
                                abstract if fresh is None else fresh)


def _check_finite(step, value, stage_dir, last_saved):
  if not math.isfinite(value):
    where = (f"the last good checkpoint (step {last_saved}) in {stage_dir} is kept"
             if last_saved is not None else "no checkpoint was written")
    raise TrainingDiverged(f"loss is {value} at step {step}; stopping, {where}. Lower "
                           "--config.optim.lr or raise --config.optim.warmup_steps and resume")


def _out_of_time(deadline):
  """Whether the wall-clock `deadline` has passed, decided by host 0 for every host (clocks
  differ, and hosts that disagree on stopping would hang in the next collective)."""
  late = time.monotonic() > deadline
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    late = bool(multihost_utils.broadcast_one_to_all(np.int32(late)))
  return late


class ScheduleFitter:
  """`--fit-minutes`: chooses `train.steps` so that a fresh run ends, its learning-rate schedule
  complete, when the time budget does. It times the steps after the first compiled ones for a
  probe (a tenth of the budget, at most 30 s), then sets the total from that rate and the time
  left, capped at the config's `train.steps`."""

  def __init__(self, minutes, cap, start_time):
    self.budget = 60.0 * float(minutes)
    self.cap = int(cap)
    self.end_time = start_time + self.budget
    self.probe_s = min(30.0, 0.1 * self.budget)
    self.first_step_s = None
    self.probe_from = None  # (step, time) where the timed probe started
    self.total = None       # the fitted total, once decided
    self.rate = None        # the probe's steps/s, once decided

  def observe(self, done, now, step_started):
    """Called after each step; returns the fitted total when it is decided, else None."""
    if self.total is not None:
      return None
    if self.first_step_s is None:
      self.first_step_s = now - step_started  # compile + one step: the cost of a recompile
    elif self.probe_from is None:
      self.probe_from = (done, now)
    elif now - self.probe_from[1] >= self.probe_s:
      rate = (done - self.probe_from[0]) / (now - self.probe_from[1])
      # Reserve the recompile with the new schedule (about the first step: compile + step).
      left = self.end_time - now - self.first_step_s
      self.total = int(min(self.cap, done + max(1, rate * left)))
      self.rate = rate
      return self.total
    return None


def open_caches(model, spec, dataset, workdir, config):
  """(example source, caption-keyed caches) of a stage whose DataSpec lists frozen-output cache
  inputs (`spec.inputs`), each opened from the folder its config key names and checked against
  what it must have been made from (loading.input_provenance: weights, shapes, tokenizer,
  dataset, split).

  An example-keyed input becomes the example source when the batches carry no pixels
  (`spec.pixels` False: the cache's rows, e.g. a tokenizer's codes) and is joined to the
  dataset's examples by index otherwise (the source then limited to the cache's rows);
  caption-keyed inputs (a text encoder's embeddings) are looked up per batch in this process."""
  by_example, by_caption = [], []
  for inp in spec.inputs:
    folder = loading.config_value(config, inp.config_key)
    if not folder:
      raise ConfigError(f"stage {config.stage} reads {inp.names} from a cache, but "
                        f"--config.{inp.config_key} names none; build one with {inp.command}")
    cache = frozen_cache.FrozenCache(str(folder), inp)
    cache.check(inp, loading.input_provenance(model, inp, workdir, config, dataset))
    (by_caption if inp.keyed_by == "caption" else by_example).append(cache)
  if not spec.pixels:
    if not by_example:
      raise ConfigError(f"stage {config.stage} trains on no pixels but reads no example-keyed "
                        "cache")
    return frozen_cache.JoinedSource(None, by_example), by_caption
  source = get_source(dataset, "train", size=spec.size, frames=spec.frames, fps=spec.fps)
  if by_example:
    source = frozen_cache.JoinedSource(source, by_example)
  return source, by_caption


def _check_same_freeze(config_path, config, checkpointer):
  """UserError when a resumed run changes `train.freeze`: the checkpoint's optimizer state has
  no entries for the leaves that were frozen, so another mask cannot restore it."""
  if not os.path.isfile(config_path):
    return
  with open(config_path) as f:
    before = json.load(f).get("train", {}).get("freeze", "")
  if freeze_patterns(before) != freeze_patterns(config.train.freeze):
    checkpointer.close()
    raise UserError(f"this run trained with train.freeze={before!r}, not "
                    f"{config.train.freeze!r}: resume with --config.train.freeze={before!r}, or "
                    "start a new --workdir from its export (--config.train.init_from=EXPORT)")


def train_and_evaluate(config, workdir, *, devices=None, stop_after=None, progress=True,
                       max_minutes=None, fit_minutes=None):
  """Trains `config.stage` of `config.model` into `workdir/<stage>/`, resuming if checkpoints exist.

  `stop_after`: stop (with a checkpoint) once this step is reached, keeping the schedule of
  `config.train.steps` — for splitting a run over sessions. `max_minutes`: likewise once this
  much wall-clock time has passed (checked at logging steps). `fit_minutes`: a fresh run whose
  `train.steps` (an upper bound) is cut, after timing the first steps, to what ends in this
  many minutes (see ScheduleFitter); the chosen total is written to `<stage>/config.json`.
  Returns the final metrics dict."""
  started = time.monotonic()
  deadline = None if max_minutes is None else started + 60.0 * float(max_minutes)
  if fit_minutes is not None and deadline is None:
    # The fit's estimate may be off (a short probe on a busy machine): stop a run that overruns
    # its budget by 10%, or by 30 s for budgets under five minutes.
    deadline = started + 60.0 * float(fit_minutes) + max(6.0 * float(fit_minutes), 30.0)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  trainer = Trainer(config, mesh)
  model, stage, train_cfg = trainer.model, trainer.stage, config.train
  stage_dir = ckpt_lib.stage_dir(workdir, stage)
  try:
    os.makedirs(stage_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the work directory {stage_dir!r} ({e.strerror}); "
                    "choose a writable --workdir") from None
  is_host0 = jax.process_index() == 0
  config_path = os.path.join(stage_dir, "config.json")

  def write_config():
    if is_host0:
      with open(config_path, "w") as f:
        f.write(config.to_json(indent=2))

  spec = model.data_spec(stage)
  dataset = config.data.dataset or spec.dataset
  source, caches = open_caches(model, spec, dataset, workdir, config)
  tokenizer = model.text_tokenizer()  # an imported CLIP brings its own BPE
  frozen, frozen_shardings = trainer.load_frozen(workdir)

  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(workdir, stage), keep=train_cfg.keep)
  start = checkpointer.latest_step()
  if fit_minutes is not None and start is not None:
    checkpointer.close()  # before config.json is rewritten: it holds the steps to resume with
    raise UserError(f"--fit-minutes fits the schedule of a fresh run, but {stage_dir} has a "
                    "checkpoint; resume without it (with the train.steps in its config.json) "
                    "or choose a new --workdir")
  if start is not None:
    _check_same_freeze(config_path, config, checkpointer)
  if start is None and is_host0 and (os.path.isfile(config_path) or has_rows(stage_dir)):
    print(f"{stage_dir} has a run that completed no checkpoint; training restarts from step 0",
          file=sys.stderr)
  write_config()
  if start is not None:
    state, meta = checkpointer.restore(start, trainer.abstract_state)
    state = dict(state, step=jax.device_put(jnp.asarray(start, jnp.int32), replicated(mesh)),
                 rng=jax.device_put(jnp.asarray(meta["rng"], jnp.uint32), replicated(mesh)))
    position = int(meta["data_position"])
  else:
    start, position = 0, 0
    state = trainer.init_state(train_cfg.seed)
    state = trainer.init_from_export(state)

  pipeline = InputPipeline(source, tokenizer, global_batch_size=train_cfg.batch_size,
                           text_length=spec.text_length, mesh=mesh, seed=train_cfg.seed,
                           shuffle=config.data.shuffle, position=position, caches=caches,
                           tokens=spec.tokens, negatives=spec.negatives,
                           workers=config.data.workers)
  step_fn = trainer.jit_step(frozen_shardings)
  if is_host0:
    drop_rows_after(stage_dir, start)  # the steps after the checkpoint run again and log again
  writer = MetricWriter(stage_dir)
  total = int(train_cfg.steps)
  end = min(total, int(stop_after)) if stop_after else total
  last_saved = start if start else None

  def save(step, state):
    meta = {"step": step, "data_position": pipeline.position, "stage": stage,
            "model": config.model, "rng": np.asarray(jax.device_get(state["rng"])).tolist()}
    checkpointer.save(step, state, meta)

  bar = None
  if progress and is_host0:
    from tqdm import tqdm
    bar = tqdm(total=end, initial=start, desc=f"{config.model}/{stage}", dynamic_ncols=True)
  last = {}
  fitter = None if fit_minutes is None else ScheduleFitter(fit_minutes, total, started)
  t0, steps_since = time.perf_counter(), 0
  pending = None  # (step, loss array) checked one step late so the host never stalls the device
  try:
    step = start
    while step < end:
      step_started = time.monotonic()
      batch = next(pipeline)
      state, metrics = step_fn(state, batch, frozen)
      if pending is not None:
        _check_finite(pending[0], float(pending[1]), stage_dir, last_saved)
      pending = (step + 1, metrics["loss"])
      steps_since += 1
      step = done = step + 1
      if fitter is not None:
        # The host is at most one step ahead of the device (the loss check above waits).
        fitted = fitter.observe(done, time.monotonic(), step_started)
        if fitted is not None:
          total = fitted
          end = min(total, int(stop_after)) if stop_after else total
          config.train.steps = total
          write_config()
          trainer.set_total_steps(total)
          step_fn = trainer.jit_step(frozen_shardings)
          print(f"--fit-minutes {fit_minutes}: train.steps={total} at {fitter.rate:.3g} steps/s")
          if bar is not None:
            bar.total = end
      if done % train_cfg.log_every == 0 or done == end:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(done, host["loss"], stage_dir, last_saved)
        now = time.perf_counter()
        host["steps_per_sec"] = steps_since / max(now - t0, 1e-9)
        t0, steps_since = now, 0
        writer.write(done, host)
        last = host
        if bar is not None:
          bar.set_postfix(loss=f"{host['loss']:.4f}")
      out_of_time = (deadline is not None and done % train_cfg.log_every == 0
                     and _out_of_time(deadline))
      if done % train_cfg.checkpoint_every == 0 or done == end or out_of_time:
        _check_finite(done, float(metrics["loss"]), stage_dir, last_saved)
        save(done, state)
        last_saved = done
      if bar is not None:
        bar.update(1)
      if out_of_time:
        print(f"stopped at step {done} of {total}: --max-minutes {max_minutes} reached "
              "(a checkpoint was saved; run again to resume)")
        break
  finally:
    if bar is not None:
      bar.close()
    checkpointer.close()  # waits for the async save in flight: never a half-written latest step
    writer.close()
  return last
