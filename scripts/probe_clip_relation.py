"""Can dalle2-tiny-shapes' CLIP learn the relation at all? From the bundled CLIP, Adam 1e-3 on
two-object `train` images only, the loss a 2-way softmax over [own caption, relation-swapped
twin]; prints the loss and the relation accuracy (image closer to its caption than to the twin)
on 128 two-object `test` images every 50 steps (docs/models/dalle2-tiny-shapes.md).

  python scripts/probe_clip_relation.py     # ~4 min on 2 cores
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jzoo import loading, registry
from jzoo.data import shapes
from jzoo.text import clip as clip_lib
from jzoo.text import contrastive
from jzoo.text.tokenizer import Tokenizer

MODEL, STEPS, BATCH, LENGTH = "dalle2-tiny-shapes", 300, 64, 24


def two_object_batch(tokenizer, split, start, n, size):
  """n two-object examples from index `start`: (images, caption ids, mask, twin ids, mask)."""
  examples = [shapes.image_example(split, i, size) for i in range(start, start + 3 * n)]
  examples = [e for e in examples if e["form"] == "two"][:n]
  captions = [e["caption"] for e in examples]
  ids, mask = tokenizer.encode_batch(captions, LENGTH)
  twin_ids, twin_mask = tokenizer.encode_batch([shapes.relation_swapped(c) for c in captions],
                                               LENGTH)
  images = np.stack([e["image"] for e in examples]).astype(np.float32) / 127.5 - 1
  return tuple(jnp.asarray(a) for a in (images, ids, mask, twin_ids, twin_mask))


def main():
  model = registry.build_model(loading.load_config(MODEL))
  module = model.clip.module
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32),
                                  loading.load_bundled_params(MODEL, model)["clip"])
  tokenizer = Tokenizer.load("shapes")
  size = int(model.config.clip.resolution)

  def relation_loss(p, batch):
    images, ids, mask, twin_ids, twin_mask = batch
    pixels = clip_lib.preprocess_jax(images, module.processing)
    i = contrastive.normalize(module.apply({"params": p}, pixels,
                                           method=clip_lib.CLIP.get_image_features))
    text = lambda t, m: contrastive.normalize(module.apply(
        {"params": p}, t, m, method=clip_lib.CLIP.get_text_features))
    scale = jnp.exp(jnp.minimum(p["logit_scale"], contrastive.MAX_LOGIT_SCALE))
    own = scale * jnp.sum(i * text(ids, mask), -1)
    twin = scale * jnp.sum(i * text(twin_ids, twin_mask), -1)
    return jnp.mean(jax.nn.softplus(twin - own)), jnp.mean(own > twin)

  optimizer = optax.adam(1e-3)
  state = optimizer.init(params)

  @jax.jit
  def step(p, state, batch):
    (loss, accuracy), grads = jax.value_and_grad(relation_loss, has_aux=True)(p, batch)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss, accuracy

  test = two_object_batch(tokenizer, "test", 0, 128, size)
  evaluate = jax.jit(lambda p: relation_loss(p, test))
  print(f"step 0: test relation accuracy {float(evaluate(params)[1]):.3f}", flush=True)
  start = time.time()
  for k in range(STEPS):
    params, state, loss, accuracy = step(params, state,
                                         two_object_batch(tokenizer, "train", 200 * k, BATCH, size))
    if (k + 1) % 50 == 0:
      print(f"step {k + 1}: loss {float(loss):.4f} (ln 2 = 0.6931), train accuracy "
            f"{float(accuracy):.3f}, test relation accuracy {float(evaluate(params)[1]):.3f} "
            f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
