"""Writes notebooks/*.ipynb (kept as a script so the notebooks' source is reviewable and shared)."""

import copy
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Colab has no checkout: jzoo comes from a pip spec (a git URL, a wheel or a folder). Where jzoo is
# already importable (CI runs the notebooks from the installed checkout) nothing is installed.
INSTALL_NOTE = new_markdown_cell(
    "## Install\n\n"
    "Where jzoo is already installed (a checkout after `pip install -e .`, CI) the next cell does "
    "nothing. On Colab or a fresh machine set `JZOO_PIP_SPEC` in it to what pip should install:\n\n"
    "- the repository's git URL: `git+https://github.com/<owner>/jzoo.git` (add `@<tag or commit>` "
    "to pin a version);\n"
    "- a wheel you uploaded: `/content/jzoo-0.1.0-py3-none-any.whl` (built with "
    "`pip wheel --no-deps .` in a checkout);\n"
    "- a checkout: `/content/jzoo` (e.g. after `!git clone`).\n\n"
    "Left empty, it installs the checkout this notebook sits in (`notebooks/..`) when there is one.")

INSTALL = new_code_cell(
    "import importlib.util, os, subprocess, sys\n"
    "JZOO_PIP_SPEC = ''  # Colab: a git URL, a wheel or a folder (see above)\n"
    "if importlib.util.find_spec('jzoo') is None:\n"
    "    checkout = [d for d in ('..', '.') if os.path.isfile(os.path.join(d, 'jzoo', '__init__.py'))]\n"
    "    spec = JZOO_PIP_SPEC or (checkout[0] if checkout else None)\n"
    "    if spec is None:\n"
    "        raise SystemExit('jzoo is not installed: set JZOO_PIP_SPEC above to a git URL, a wheel or a folder')\n"
    "    # mediapy shows the samples (jzoo's `dev` extra; the rest of that extra is for tests).\n"
    "    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', spec, 'mediapy'], check=True)")

SETUP = new_code_cell(
    "import os\n"
    "import jzoo  # before jax: off a TPU, jzoo keeps JAX from probing for TPU chips\n"
    "from jzoo import registry\n"
    "import jax, numpy as np, mediapy\n"
    "import imageio_ffmpeg  # mediapy shows videos through ffmpeg; imageio-ffmpeg ships a binary\n"
    "mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())\n"
    "FAST = bool(os.environ.get('JZOO_NOTEBOOK_FAST'))  # CI runs the notebooks with few steps\n"
    "print(jax.devices())")

LOAD_DEFAULT = (
    "name = registry.DEFAULT_MODEL\n"
    "bundled = registry.get_entry(name).bundled\n"
    "if not bundled:  # a checkout before the bundled weights were trained: a random micro model\n"
    "    name = 'imagen-micro'\n"
    "pipe = jzoo.load(name, random_weights=not bundled)  # the model and its weights\n"
    "model, params = pipe.model, pipe.params\n")

# A `moving_shapes` test clip at the model's size (video prediction / image-to-video cells).
FIRST_FRAME_CLIP = (
    "from jzoo.data import shapes\n"
    "T, S = model.output_shape[0], model.output_shape[1]\n"
    "clip = shapes.video_example('test', 0, S, T)\n")

quickstart = [
    new_markdown_cell(
        "# jzoo quickstart\n\n"
        "Sample from the bundled text-to-image model, look at the `shapes` and `moving_shapes` "
        "datasets every model trains on, and train a micro model for a few steps — on a CPU, "
        "a Colab GPU or a TPU VM, with the same code."),
    INSTALL_NOTE,
    INSTALL,
    SETUP,
    new_markdown_cell("## Text to image\n\nThe default model; prompts follow the `shapes` captions "
                      "(see `docs/SHAPES.md`)."),
    new_code_cell(
        LOAD_DEFAULT +
        "prompts = ['a large red circle in the center',\n"
        "           'a small blue square in the top left corner',\n"
        "           'a green triangle to the left of a yellow circle',\n"
        "           'a white square above a magenta circle']\n"
        "images = pipe(prompts, seed=0, steps=4 if FAST else None)\n"
        "mediapy.show_images(list(images), titles=[p[:28] for p in prompts], width=160)"),
    new_markdown_cell("## The datasets\n\nProcedurally rendered, deterministic by (split, index), "
                      "no download."),
    new_code_cell(
        "from jzoo.data import shapes\n"
        "examples = [shapes.image_example('train', i, 64) for i in range(6)]\n"
        "mediapy.show_images([e['image'] for e in examples], titles=[e['caption'][:24] for e in examples], width=128)\n"
        "videos = [shapes.video_example('train', i, 32, 16) for i in range(3)]\n"
        "mediapy.show_videos([v['video'] for v in videos], titles=[v['caption'] for v in videos], width=160, fps=8)"),
    new_markdown_cell("## Train\n\n`train_and_evaluate(config, workdir)` is what `python -m jzoo.train` "
                      "runs. Each stage of a cascade trains into `workdir/<stage>/` and resumes from "
                      "its latest checkpoint."),
    new_code_cell(
        "import tempfile\n"
        "from jzoo import config as config_lib\n"
        "from jzoo.training.loop import train_and_evaluate\n"
        "from jzoo.training.metrics import read_metrics\n"
        "workdir = tempfile.mkdtemp()\n"
        "steps = 3 if FAST else 200\n"
        "for stage in ('text_encoder', 'base'):\n"
        "    config = config_lib.load('imagen:micro', [f'stage={stage}', f'train.steps={steps}',\n"
        "                                              'train.log_every=1', f'train.checkpoint_every={steps}'])\n"
        "    train_and_evaluate(config, workdir, progress=False)\n"
        "    print(stage, [round(m['loss'], 4) for m in read_metrics(os.path.join(workdir, stage))][-3:])"),
]

imagen = [
    new_markdown_cell(
        "# Imagen in jzoo\n\n"
        "A frozen T5 text encoder and a cascade of diffusion models (Saharia et al. 2022): a "
        "32×32 base model and a 32→64 super-resolution model with noise conditioning "
        "augmentation, sampled in one jitted call. Here: the stages side by side, and what "
        "classifier-free guidance does."),
    INSTALL_NOTE,
    INSTALL,
    SETUP,
    new_code_cell(
        LOAD_DEFAULT +
        "import jax.numpy as jnp\n"
        "from jzoo.models.base import Request, to_uint8\n"
        "from jzoo.text.tokenizer import Tokenizer\n"
        "tokenizer = Tokenizer.load(model.config.text.tokenizer)\n"
        "steps = 4 if FAST else model.config.sample.steps\n"
        "stages = jax.jit(model.generate_stages)\n"
        "def request(prompts, guidance):\n"
        "    tokens, mask = tokenizer.encode_batch(prompts, model.text_length)\n"
        "    return Request(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask),\n"
        "                   steps=jnp.int32(steps), guidance=jnp.float32(guidance))\n"
        "print(model.stages, model.output_shape)"),
    new_markdown_cell("## The cascade, stage by stage\n\nTop: the base model's 32×32 output "
                      "(upsampled for display); bottom: the super-resolution stage's 64×64."),
    new_code_cell(
        "prompts = ['a small red circle in the top left corner', 'a large blue square in the center',\n"
        "           'a green triangle to the left of a white circle', 'a yellow circle below a cyan square']\n"
        "outs = stages(params, request(prompts, model.config.sample.guidance), jax.random.PRNGKey(0))\n"
        "low, high = (np.asarray(to_uint8(o)) for o in (outs[0], outs[-1]))\n"
        "mediapy.show_images([np.kron(l, np.ones((2, 2, 1), np.uint8)) for l in low], titles=prompts, width=128)\n"
        "mediapy.show_images(list(high), width=128)"),
    new_markdown_cell("## Guidance\n\nThe same prompt and seed at guidance weights 1 (the "
                      "conditional model alone), 2, 3 and 5: stronger guidance follows the text "
                      "more closely at the cost of diversity. Changing the weight does not recompile."),
    new_code_cell(
        "weights = [1.0, 2.0, 3.0, 5.0]\n"
        "prompt = ['a small magenta square above a green circle'] * 4\n"
        "rows = [np.asarray(to_uint8(stages(params, request(prompt, w), jax.random.PRNGKey(1))[-1]))\n"
        "        for w in weights]\n"
        "mediapy.show_images([r[0] for r in rows], titles=[f'w={w}' for w in weights], width=128)"),
]

phenaki = [
    new_markdown_cell(
        "# Phenaki in jzoo\n\n"
        "Text to video with a causal video tokenizer (C-ViViT) and a masked transformer "
        "(MaskGIT) conditioned on a frozen T5 encoder (Villegas et al. 2022): text-to-video, a "
        "story told by several prompts in one long video, image-to-video, and what the tokenizer "
        "keeps of a clip."),
    INSTALL_NOTE,
    INSTALL,
    SETUP,
    new_code_cell(
        "name = 'phenaki-tiny-shapes'\n"
        "bundled = registry.get_entry(name).bundled\n"
        "if not bundled:  # a checkout before the bundled weights were trained: a random micro model\n"
        "    name = 'phenaki-micro'\n"
        "pipe = jzoo.load(name, random_weights=not bundled)  # the model and its weights\n"
        "model, params = pipe.model, pipe.params\n"
        "steps = 2 if FAST else None\n"
        "print(name, model.stages, model.output_shape)"),
    new_markdown_cell("## Text to video\n\nPrompts follow the `moving_shapes` captions."),
    new_code_cell(
        "prompts = ['a red circle moving right', 'a blue square moving up',\n"
        "           'a green triangle moving left and a yellow circle moving down']\n"
        "videos = pipe(prompts, seed=0, steps=steps)\n"
        "mediapy.show_videos(list(videos), titles=[p[:30] for p in prompts], width=160, fps=8)"),
    new_markdown_cell("## A story\n\nEach prompt continues the video: the next segment starts "
                      "from the re-encoded last frame of the previous one."),
    new_code_cell(
        "story = ['a white square moving right', 'a white square moving down', 'a white square moving left']\n"
        "long_video = pipe(story, seed=0, steps=steps, story=True)[0]\n"
        "print(long_video.shape)\n"
        "mediapy.show_video(long_video, width=200, fps=8)"),
    new_markdown_cell("## Image to video\n\nThe first frame is given (here: the first frame of a "
                      "`moving_shapes` clip); its tokens stay fixed while the rest is decoded."),
    new_code_cell(
        FIRST_FRAME_CLIP +
        "continued = pipe([clip['caption']], steps=steps, start=clip['video'][:1])[0]\n"
        "mediapy.show_videos([clip['video'], continued], titles=[clip['caption'], 'from its first frame'], width=160, fps=8)"),
    new_markdown_cell("## What the tokenizer keeps\n\nC-ViViT reconstructions of `moving_shapes` "
                      "test clips, and their PSNR."),
    new_code_cell(
        "import jax.numpy as jnp\n"
        "clips = np.stack([shapes.video_example('test', i, S, T)['video'] for i in range(3)])\n"
        "x = jnp.asarray(clips, jnp.float32) / 127.5 - 1.0\n"
        "recon = model.decode_codes(params['tokenizer'], model.encode_video(params['tokenizer'], x))\n"
        "mse = np.mean((np.asarray(recon) - np.asarray(x)) ** 2, axis=(1, 2, 3, 4))\n"
        "print('PSNR (dB):', np.round(10 * np.log10(4.0 / mse), 2))\n"
        "mediapy.show_videos(list(clips) + [np.asarray((recon + 1) * 127.5).clip(0, 255).astype(np.uint8)[i] for i in range(3)],\n"
        "                    columns=3, width=120, fps=8)"),
]

nuwa = [
    new_markdown_cell(
        "# NUWA in jzoo\n\n"
        "A 3D transformer encoder-decoder over VQ-GAN tokens with 3D Nearby Attention (Wu et al. "
        "2021): text-to-video, video prediction from a first frame, and what a token of the "
        "decoder attends to. Sampling is autoregressive with a key/value cache, so each new token "
        "costs the size of its 3D box, not of the video."),
    INSTALL_NOTE,
    INSTALL,
    SETUP,
    new_code_cell(
        "name = 'nuwa-tiny-shapes'\n"
        "bundled = registry.get_entry(name).bundled\n"
        "if not bundled or FAST:  # no bundled weights yet, or CI: a random micro model\n"
        "    name = 'nuwa-micro'\n"
        "pipe = jzoo.load(name, random_weights=not registry.get_entry(name).bundled)  # the model and its weights\n"
        "model, params = pipe.model, pipe.params\n"
        "print(name, model.stages, model.output_shape, 'token grid', model.grid)"),
    new_markdown_cell("## Text to video"),
    new_code_cell(
        "prompts = ['a red circle moving right', 'a blue square moving up']\n"
        "videos = pipe(prompts, seed=0)\n"
        "mediapy.show_videos(list(videos), titles=prompts, width=160, fps=8)"),
    new_markdown_cell("## Video prediction\n\nThe first frame of a `moving_shapes` clip is given; "
                      "its tokens are fixed and the rest of the video is sampled after them."),
    new_code_cell(
        FIRST_FRAME_CLIP +
        "predicted = pipe([clip['caption']], start=clip['video'][:1])[0]\n"
        "mediapy.show_videos([clip['video'], predicted], titles=[clip['caption'], 'predicted from frame 0'], width=160, fps=8)"),
    new_markdown_cell("## What a token attends to\n\nThe decoder's causal 3D nearby attention: for "
                      "one query token (white), the cached tokens it reads (grey) in each frame of "
                      "the token grid: a box of (2rt+1)×(2rh+1)×(2rw+1) cut at the borders and "
                      "at the query in raster order."),
    new_code_cell(
        "from jzoo.models.nuwa import window_offsets\n"
        "t, h, w = model.grid\n"
        "radius = tuple(model.config.transformer.radius)\n"
        "query = (min(2, t - 1), h // 2, w // 2)\n"
        "raster = lambda p: (p[0] * h + p[1]) * w + p[2]\n"
        "pictures = np.zeros((t, h, w), np.uint8)\n"
        "for d in window_offsets(radius):\n"
        "    p = tuple(int(v) for v in np.add(query, d))\n"
        "    if all(0 <= p[i] < (t, h, w)[i] for i in range(3)) and raster(p) <= raster(query):\n"
        "        pictures[p] = 120\n"
        "pictures[query] = 255\n"
        "mediapy.show_images([np.kron(f, np.ones((12, 12), np.uint8)) for f in pictures[:query[0] + 2]],\n"
        "                    titles=[f'frame {i}' for i in range(min(t, query[0] + 2))], width=96)"),
]

dalle2 = [
    new_markdown_cell(
        "# DALL-E 2 (unCLIP) in jzoo\n\n"
        "Text to image through CLIP's image embedding (Ramesh et al. 2022): a diffusion prior "
        "turns a caption into a CLIP image embedding, a decoder turns the embedding into an "
        "image, an upsampler enlarges it. Because the decoder only needs an embedding, an image "
        "can be varied (its own embedding, new noise), two images can be blended (a spherical "
        "path between their embeddings) and an image can be edited towards another caption (the "
        "text-diff: its embedding moved along the difference of the captions' embeddings)."),
    INSTALL_NOTE,
    INSTALL,
    SETUP,
    new_code_cell(
        "name = 'dalle2-tiny-shapes'\n"
        "bundled = name in registry.MODELS and registry.get_entry(name).bundled\n"
        "if not bundled or FAST:  # no bundled weights yet, or CI: a random micro model\n"
        "    name = 'dalle2-micro'\n"
        "pipe = jzoo.load(name, random_weights=not registry.get_entry(name).bundled)\n"
        "model, params = pipe.model, pipe.params\n"
        "steps = 2 if FAST else None\n"
        "print(name, model.stages, model.output_shape)"),
    new_markdown_cell("## Text to image\n\nPrompts follow the `shapes` captions."),
    new_code_cell(
        "prompts = ['a red circle', 'a blue square above a green triangle']\n"
        "images = pipe(prompts, seed=0, steps=steps)\n"
        "mediapy.show_images(list(images), titles=prompts, width=128)"),
    new_markdown_cell("## Variations\n\nA `shapes` test image, and new images decoded from its "
                      "CLIP image embedding."),
    new_code_cell(
        "from jzoo.data import shapes\n"
        "S = model.output_shape[0]\n"
        "a, b = (shapes.image_example('test', i, S) for i in (0, 1))\n"
        "variations = pipe.variations(a['image'], num=3, seed=0, steps=steps)\n"
        "mediapy.show_images([a['image'], *variations], titles=[a['caption'][:24], 'variation', 'variation', 'variation'], width=128)"),
    new_markdown_cell("## Interpolation\n\nThe same noise along the path between two images' "
                      "embeddings."),
    new_code_cell(
        "path = pipe.interpolate(a['image'], b['image'], alphas=(0.0, 0.5, 1.0), seed=0, steps=steps)\n"
        "mediapy.show_images(list(path), titles=['alpha 0', 'alpha 0.5', 'alpha 1'], width=128)"),
    new_markdown_cell("## A text-diff edit\n\nImage `a` moved from its caption towards another."),
    new_code_cell(
        "target = 'a yellow circle'\n"
        "edits = pipe.edit(a['image'], a['caption'], target, alphas=(0.25, 0.5), seed=0, steps=steps)\n"
        "mediapy.show_images([a['image'], *edits], titles=[a['caption'][:24], 'alpha 0.25', 'alpha 0.5'], width=128)"),
]


def write(name, cells):
  # Cell ids by position (nbformat draws random ones), so regenerating changes only what changed.
  cells = [dict(copy.deepcopy(c), id=f"{name}-{i}") for i, c in enumerate(cells)]
  nb = new_notebook(cells=[nbformat.from_dict(c) for c in cells], metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []},
  })
  os.makedirs(os.path.join(ROOT, "notebooks"), exist_ok=True)
  nbformat.write(nb, os.path.join(ROOT, "notebooks", f"{name}.ipynb"))


write("quickstart", quickstart)
write("imagen", imagen)
write("phenaki", phenaki)
write("nuwa", nuwa)
write("dalle2", dalle2)
