"""Frozen-output caches: what a frozen stage computes, computed once and read by the stages it feeds.

A frozen stage gives the same output for the same input at every step, so the stage that reads
it can train on outputs computed once: a text encoder's embeddings of each distinct caption
(`python -m jzoo.cache_text`; the train step then holds no encoder and does none of its FLOPs),
a visual tokenizer's codes of each train clip (`python -m jzoo.cache_codes`; the step neither
renders pixels nor runs the tokenizer's encoder), CLIP image embeddings of each example. A
stage's DataSpec lists them as `Input`s (jzoo.stage): the producing stage, what rows are
keyed by ("caption": one row per distinct caption, looked up by the batch's captions;
"example": one row per example of the train split, read by the example's index), the arrays a
row holds, and the config key naming the folder.

One folder format serves every Input:

  meta.json          written last: format, version, stage, keyed_by, rows, per array its shape,
                     storage dtype, declared dtype and value range; `provenance` (what the rows
                     were made from: the producing stage's weights, tokenizer, dataset, split)
  <name>.npy         one per array, [rows, *shape], read memory-mapped: floats stored float16
                     (a value beyond float16 fails the build), integers in the smallest dtype
                     holding their declared range (uint16 codes of a 65,536 codebook, int8
                     masks); rows come back in the Input's declared dtype
  keys.bin           the rows' captions, UTF-8, concatenated in row order
  key_offsets.npy    int64 [rows + 1]: row r's caption is keys.bin[off[r]:off[r + 1]]
  index_hashes.npy   caption-keyed only: sorted 64-bit blake2b hashes of the captions
  index_rows.npy     caption-keyed only: the row of each sorted hash

A caption is found by np.searchsorted over the memory-mapped hashes, and every hit is verified
against the stored caption bytes, so a hash collision never returns another caption's row; no
dict or list of all captions is built at read time, so a cache of millions of captions opens
in milliseconds and holds only the pages it reads.

A build (`build`, or `CacheWriter` for callers with their own loop) writes into a hidden
sibling folder and swaps it in at the end: an interrupted build leaves nothing that looks like
a cache, and a valid cache already at the path stays readable until the new one is complete.
A cache pickles as its folder name, so Grain worker processes reopen its memory maps.
"""

import ctypes
import hashlib
import json
import os
import shutil
import uuid

import numpy as np

from jzoo.errors import DataError

FORMAT, VERSION = "jzoo.frozen_cache", 1
META, KEYS, OFFSETS = "meta.json", "keys.bin", "key_offsets.npy"
INDEX_HASHES, INDEX_ROWS = "index_hashes.npy", "index_rows.npy"
HASH = "blake2b-64"
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Integer storage, smallest first: the first that holds an array's range stores it.
INT_STORAGE = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64)
KEYED_BY = ("caption", "example")


def key_hash(data):
  """The 64-bit index hash of a key's UTF-8 bytes (tests monkeypatch it to force collisions)."""
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _hashes(encoded):
  return np.fromiter((key_hash(b) for b in encoded), np.uint64, len(encoded))


def _short(text, n=60):
  return text if len(text) <= n else text[:n - 3] + "..."


def _what(stage, keyed_by):
  return f"{stage} cache (keyed by {keyed_by})"


def storage_dtype(dtype, bounds=None):
  """How an array of declared `dtype` (and inclusive value range `bounds`) is stored."""
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.floating):
    return np.dtype(np.float16)
  if np.issubdtype(dtype, np.integer):
    if bounds is None:
      return dtype
    lo, hi = (int(b) for b in bounds)
    for candidate in INT_STORAGE:
      info = np.iinfo(candidate)
      if info.min <= lo and hi <= info.max:
        return np.dtype(candidate)
    raise DataError(f"value range [{lo}, {hi}] does not fit 64-bit integers")
  raise DataError(f"a frozen-output cache stores float and integer arrays, not {dtype}")


# --- writing -----------------------------------------------------------------------------------

def _exchange(a, b):
  """Swaps two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                        ctypes.c_uint]
  return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _is_cache_meta(path):
  """Whether `path` is the meta.json of a cache: this format, or jzoo's earlier text-embedding
  (jzoo/text/cache.py) and code (jzoo/vq/code_cache.py) caches."""
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and (meta.get("format") == FORMAT
                                     or {"text_length", "width", "rows"} <= set(meta)
                                     or {"grid", "codebook_size", "rows"} <= set(meta))


def _replaceable(directory):
  """A path a build may replace: absent, an empty folder, or a cache."""
  if not os.path.exists(directory):
    return True
  return os.path.isdir(directory) and (not os.listdir(directory)
                                       or _is_cache_meta(os.path.join(directory, META)))


class CacheWriter:
  """Writes a cache of `rows` rows of `input` to `directory`, chunk by chunk, in row order.

    with CacheWriter(directory, input, rows, provenance, bounds={"codes": (0, 1023)}) as w:
      w.append(captions, {"codes": codes})   # chunks of any length, validated
    # complete: the folder is swapped in; an exception: nothing changes at `directory`

  `bounds`: inclusive value range of integer arrays, checked on every chunk and choosing their
  storage dtype (without one an integer array is stored in its declared dtype). Float arrays
  are stored float16; a chunk with values beyond float16 (or not finite) is refused.
  For a caption-keyed input the captions must be distinct (`build` removes repeats)."""

  def __init__(self, directory, input, rows, provenance=None, *, bounds=None):
    if input.keyed_by not in KEYED_BY:
      raise ValueError(f"keyed_by must be one of {KEYED_BY}, got {input.keyed_by!r}")
    self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    self.input, self.rows = input, int(rows)
    self.provenance = dict(provenance or {})
    if self.rows <= 0:
      raise DataError(f"no {'captions' if input.keyed_by == 'caption' else 'examples'} to cache")
    if not _replaceable(self.directory):
      raise DataError(f"{self.directory!r} exists and is not a cache; choose another output "
                      "folder (a build replaces the folder it writes)")
    bounds = dict(bounds or {})
    unknown = set(bounds) - set(input.names)
    if unknown:
      raise ValueError(f"bounds for arrays the input does not have: {sorted(unknown)}")
    self._specs = []  # (name, shape, declared dtype, storage dtype, bounds)
    for name, shape, dtype in input.arrays:
      b = bounds.get(name)
      self._specs.append((name, tuple(int(s) for s in shape), np.dtype(dtype),
                          storage_dtype(dtype, b), None if b is None else tuple(int(x) for x in b)))
    parent, base = os.path.split(self.directory)
    os.makedirs(parent, exist_ok=True)
    self.tmp = os.path.join(parent, f".{base}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(self.tmp)
    try:
      self._arrays = {name: np.lib.format.open_memmap(os.path.join(self.tmp, name + ".npy"), "w+",
                                                      storage, (self.rows, *shape))
                      for name, shape, _, storage, _ in self._specs}
      self._keys = open(os.path.join(self.tmp, KEYS), "wb")
    except BaseException:
      shutil.rmtree(self.tmp, ignore_errors=True)
      raise
    self._offsets = np.zeros(self.rows + 1, np.int64)
    self._hashes = np.zeros(self.rows, np.uint64) if input.keyed_by == "caption" else None
    self.written = 0
    self.closed = False

  def __enter__(self):
    return self

  def __exit__(self, kind, value, traceback):
    if kind is None:
      self.finish()
    else:
      self.abort()
    return False

  def _check(self, name, shape, dtype, bounds, chunk, n):
    what = f"the {self.input.stage}'s {name!r}"
    chunk = np.asarray(chunk)
    if chunk.shape != (n, *shape):
      raise DataError(f"{what} has shape {chunk.shape[1:]} per row ({chunk.shape[0]} rows), "
                      f"the cache needs {shape} ({n} rows)")
    if np.issubdtype(dtype, np.floating):
      if chunk.size and (not np.isfinite(chunk).all() or np.abs(chunk).max() > FLOAT16_MAX):
        raise DataError(f"{what} overflow float16 (or are not finite); the cache stores float16")
      return chunk
    if chunk.dtype == np.bool_:
      chunk = chunk.astype(np.uint8)
    if not np.issubdtype(chunk.dtype, np.integer):
      raise DataError(f"{what} are {chunk.dtype}, the input declares {dtype}")
    if chunk.size:
      lo, hi = bounds if bounds is not None else (np.iinfo(dtype).min, np.iinfo(dtype).max)
      cmin, cmax = int(chunk.min()), int(chunk.max())
      if cmin < lo or cmax > hi:
        raise DataError(f"{what} lie in [{cmin}, {cmax}], not in [{lo}, {hi}] of shape {shape}")
    return chunk

  def append(self, keys, arrays):
    """Rows `written ... written + len(keys) - 1`: their captions and {name: [n, *shape]}."""
    if self.closed:
      raise ValueError("append to a finished cache writer")
    keys = list(keys)
    n = len(keys)
    start, stop = self.written, self.written + n
    if stop > self.rows:
      raise DataError(f"{stop} rows given to a cache of {self.rows}")
    if set(arrays) != set(self.input.names):
      raise DataError(f"the {self.input.stage} gave arrays {sorted(arrays)}, the cache holds "
                      f"{sorted(self.input.names)}")
    checked = {name: self._check(name, shape, dtype, bounds, arrays[name], n)
               for name, shape, dtype, _, bounds in self._specs}
    for name, _, _, storage, _ in self._specs:
      self._arrays[name][start:stop] = checked[name].astype(storage)
    encoded = []
    for k in keys:
      if not isinstance(k, str):
        raise DataError(f"cache keys are captions (str), got {type(k).__name__}")
      encoded.append(k.encode("utf-8"))
    self._keys.write(b"".join(encoded))
    lengths = np.fromiter((len(b) for b in encoded), np.int64, n)
    self._offsets[start + 1:stop + 1] = self._offsets[start] + np.cumsum(lengths)
    if self._hashes is not None:
      self._hashes[start:stop] = _hashes(encoded)
    self.written = stop

  def _key(self, blob, row):
    return bytes(blob[self._offsets[row]:self._offsets[row + 1]])

  def _write_index(self):
    order = np.argsort(self._hashes, kind="stable")
    hashes = self._hashes[order]
    # Equal hashes are fine (the lookup compares bytes); the same caption twice is not.
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    sizes = np.diff(np.r_[starts, len(hashes)])
    if (sizes > 1).any():
      blob = np.memmap(os.path.join(self.tmp, KEYS), np.uint8, "r")
      for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        seen = set()
        for row in order[start:start + size]:
          key = self._key(blob, row)
          if key in seen:
            raise DataError(f"caption {_short(key.decode('utf-8'))!r} is given twice to a "
                            "caption-keyed cache")
          seen.add(key)
      del blob
    np.save(os.path.join(self.tmp, INDEX_HASHES), hashes)
    np.save(os.path.join(self.tmp, INDEX_ROWS), order.astype(np.int64))

  def finish(self):
    """Writes the index and meta.json, then swaps the folder in at `directory`."""
    if self.closed:
      return self.meta
    try:
      if self.written != self.rows:
        raise DataError(f"the cache got {self.written} of its {self.rows} rows")
      self._keys.close()
      for array in self._arrays.values():
        array.flush()
      self._arrays = {}
      np.save(os.path.join(self.tmp, OFFSETS), self._offsets)
      if self._hashes is not None:
        self._write_index()
      self.meta = {
          "format": FORMAT, "version": VERSION, "stage": self.input.stage,
          "keyed_by": self.input.keyed_by, "rows": self.rows, "command": self.input.command,
          "config_key": self.input.config_key,
          "arrays": {name: {"shape": list(shape), "dtype": storage.name, "declared": dtype.name,
                            **({"range": list(bounds)} if bounds is not None else {})}
                     for name, shape, dtype, storage, bounds in self._specs},
          "keys": {"blob": KEYS, "offsets": OFFSETS, "encoding": "utf-8"},
          "index": ({"hash": HASH, "hashes": INDEX_HASHES, "rows": INDEX_ROWS}
                    if self._hashes is not None else None),
          "provenance": self.provenance,
      }
      with open(os.path.join(self.tmp, META), "w") as f:  # last: the folder is now complete
        json.dump(self.meta, f, indent=2)
      self._swap_in()
    except BaseException:
      self.abort()
      raise
    self.closed = True
    return self.meta

  def _swap_in(self):
    if not _replaceable(self.directory):  # made while this build ran
      raise DataError(f"{self.directory!r} exists and is not a cache; choose another output "
                      "folder (a build replaces the folder it writes)")
    if not os.path.exists(self.directory):
      os.rename(self.tmp, self.directory)
    elif _exchange(self.tmp, self.directory):  # one step: the path never lacks a valid cache
      shutil.rmtree(self.tmp)
    else:  # two renames: the path is briefly absent, never half-written
      old = self.tmp + ".old"
      os.rename(self.directory, old)
      os.rename(self.tmp, self.directory)
      shutil.rmtree(old)
    self.tmp = None

  def abort(self):
    """Drops what was written; `directory` is left as it was."""
    self.closed = True
    try:
      self._keys.close()
    except Exception:  # pylint: disable=broad-except
      pass
    self._arrays = {}
    if self.tmp is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)
      self.tmp = None


def build(directory, input, items, compute, provenance=None, *, batch_size, bounds=None):
  """Computes and writes a cache of `input` over `items`; returns its meta.

  items: the captions (caption-keyed: each distinct one is computed once, in order of first
    appearance) or the example indices (example-keyed), one row each.
  compute(batch) -> (keys, {name: array [batch_size, *shape]}): `batch` always holds
    `batch_size` items (the last batch is padded by repeating its last item, so a jitted
    function compiles once; the padding's rows are dropped); `keys` are the batch's captions.
  bounds, provenance: as CacheWriter's."""
  if batch_size <= 0:
    raise ValueError("batch_size must be positive")
  items = list(dict.fromkeys(items)) if input.keyed_by == "caption" else list(items)
  with CacheWriter(directory, input, len(items), provenance, bounds=bounds) as writer:
    for start in range(0, len(items), batch_size):
      batch = items[start:start + batch_size]
      n = len(batch)
      keys, arrays = compute(batch + [batch[-1]] * (batch_size - n))
      writer.append(list(keys)[:n], {k: np.asarray(v)[:n] for k, v in arrays.items()})
  return writer.meta


def folder_size(directory):
  """Bytes of the files in a folder (the CLIs' summary line)."""
  return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))


# --- reading -----------------------------------------------------------------------------------

def _not_a_cache(directory, input, why):
  build_with = (f"; build one with {input.command} (--config MODEL --workdir DIR --out FOLDER) "
                f"and pass it as --config.{input.config_key}=FOLDER") if input is not None else ""
  return DataError(f"{directory!r} is not a frozen-output cache ({why}){build_with}")


class FrozenCache:
  """A cache folder, read memory-mapped. `check(input, provenance)` refuses one made for another
  input or from other weights/data.

  caption-keyed: `lookup(captions) -> {name: array [B, *shape]}` (declared dtypes).
  every cache: `len`, `rows(indices) -> {name: [B, *shape]}`, `cache[i] -> {name: [*shape],
  "caption": str}` (so an example-keyed cache is an example source), `caption(i)`.
  `input`, when given, names the command that builds one in the not-a-cache error."""

  def __init__(self, directory, input=None):
    self.directory = os.fspath(directory)
    path = os.path.join(self.directory, META)
    if not os.path.isfile(path):
      raise _not_a_cache(self.directory, input, f"no {META}")
    try:
      with open(path) as f:
        self.meta = json.load(f)
    except (OSError, ValueError) as e:
      raise _not_a_cache(self.directory, input, f"unreadable {META}: {e}") from None
    if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
      # A cache of jzoo's earlier formats (jzoo/text/cache.py, jzoo/vq/code_cache.py).
      raise _not_a_cache(self.directory, input, f"{META} is of an older or another format")
    if int(self.meta.get("version", 0)) > VERSION:
      raise DataError(f"{self.directory!r} is a {FORMAT} of version {self.meta['version']}; this "
                      f"jzoo reads version {VERSION}: update jzoo or rebuild the cache")
    self._opened = None

  # Pickles as its folder: worker processes reopen the memory maps.
  def __getstate__(self):
    return {"directory": self.directory, "meta": self.meta}

  def __setstate__(self, state):
    self.directory, self.meta, self._opened = state["directory"], state["meta"], None

  def _open(self):
    if self._opened is None:
      path = lambda name: os.path.join(self.directory, name)
      arrays = {name: np.load(path(name + ".npy"), mmap_mode="r") for name in self.meta["arrays"]}
      size = os.path.getsize(path(KEYS))
      blob = np.memmap(path(KEYS), np.uint8, "r") if size else np.zeros(0, np.uint8)
      offsets = np.load(path(OFFSETS), mmap_mode="r")
      index = self.meta.get("index")
      hashes = rows = None
      if index:
        hashes = np.load(path(index["hashes"]), mmap_mode="r")
        rows = np.load(path(index["rows"]), mmap_mode="r")
      for name, a in arrays.items():
        if a.shape[0] != len(self):
          raise DataError(f"cache {self.directory!r}: {name}.npy has {a.shape[0]} rows, meta.json "
                          f"{len(self)}; rebuild it with {self.meta.get('command')}")
      self._opened = (arrays, blob, offsets, hashes, rows)
    return self._opened

  @property
  def stage(self):
    return self.meta["stage"]

  @property
  def keyed_by(self):
    return self.meta["keyed_by"]

  @property
  def provenance(self):
    return dict(self.meta.get("provenance") or {})

  @property
  def names(self):
    return tuple(self.meta["arrays"])

  def __len__(self):
    return int(self.meta["rows"])

  def _declared(self, name):
    return np.dtype(self.meta["arrays"][name]["declared"])

  def check(self, input, provenance=None):
    """Raises a one-line DataError when this cache is not `input`'s, made from `provenance`
    (every key given must match). Returns the cache."""
    where = f"{_what(self.stage, self.keyed_by)} {self.directory!r}"
    rebuild = f"rebuild it with {input.command}"
    if (self.stage, self.keyed_by) != (input.stage, input.keyed_by):
      raise DataError(f"{self.directory!r} is a {_what(self.stage, self.keyed_by)}, but "
                      f"--config.{input.config_key} needs a {_what(input.stage, input.keyed_by)}; "
                      f"build one with {input.command}")
    for name, shape, dtype in input.arrays:
      have = self.meta["arrays"].get(name)
      if have is None:
        raise DataError(f"{where} has no {name!r} array (it has {list(self.names)}); {rebuild}")
      if tuple(have["shape"]) != tuple(int(s) for s in shape):
        raise DataError(f"{where} has {name!r} of shape {tuple(have['shape'])} per row, the model "
                        f"needs {tuple(int(s) for s in shape)}; {rebuild}")
      if np.dtype(have["declared"]) != np.dtype(dtype):
        raise DataError(f"{where} has {name!r} of dtype {have['declared']}, the model needs "
                        f"{np.dtype(dtype).name}; {rebuild}")
    have = self.provenance
    for key, want in (provenance or {}).items():
      if have.get(key) != want:
        raise DataError(f"{where} was made from {key} {have.get(key)!r}, but this run needs "
                        f"{want!r}; {rebuild}")
    return self

  def _key(self, row):
    _, blob, offsets, _, _ = self._open()
    return bytes(blob[int(offsets[row]):int(offsets[row + 1])])

  def caption(self, index):
    """Row `index`'s caption (an example-keyed cache: that example's)."""
    return self._key(self._row(index)).decode("utf-8")

  def _row(self, index):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"row {index} out of range [0, {len(self)})")
    return index

  def rows(self, indices):
    """{name: array [len(indices), *shape]} of rows `indices`, in the declared dtypes."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"rows {indices.min()}..{indices.max()} out of range [0, {len(self)})")
    arrays = self._open()[0]
    order = np.argsort(indices, kind="stable")  # sorted reads from the memory maps
    out = {}
    for name, array in arrays.items():
      values = np.empty((len(indices), *array.shape[1:]), self._declared(name))
      values[order] = array[indices[order]]
      out[name] = values
    return out

  def __getitem__(self, index):
    row = self._row(index)
    arrays = self._open()[0]
    example = {name: np.asarray(a[row], self._declared(name)) for name, a in arrays.items()}
    example["caption"] = self.caption(row)
    return example

  def find(self, captions):
    """The row of each caption, or -1 where the cache lacks it (caption-keyed)."""
    if self.keyed_by != "caption":
      raise TypeError(f"{self.directory!r} is keyed by example: read it by index, not caption")
    _, blob, offsets, hashes, index_rows = self._open()
    encoded = [c.encode("utf-8") for c in captions]
    wanted = _hashes(encoded)
    lo = np.searchsorted(hashes, wanted, "left")
    hi = np.searchsorted(hashes, wanted, "right")
    found = np.full(len(encoded), -1, np.int64)
    for i, data in enumerate(encoded):
      for j in range(int(lo[i]), int(hi[i])):  # one candidate but for a hash collision
        row = int(index_rows[j])
        if bytes(blob[int(offsets[row]):int(offsets[row + 1])]) == data:
          found[i] = row
          break
    return found

  def lookup(self, captions):
    """{name: array [B, *shape]} of each caption's row; a caption not in the cache is a
    DataError naming it."""
    captions = list(captions)
    found = self.find(captions)
    missing = np.flatnonzero(found < 0)
    if missing.size:
      raise DataError(f"caption {_short(captions[missing[0]])!r} is not in the "
                      f"{_what(self.stage, self.keyed_by)} {self.directory!r} ({len(self)} "
                      f"captions); rebuild it over this dataset with {self.meta.get('command')}")
    return self.rows(found)


class JoinedSource:
  """An example source whose examples carry rows of example-keyed caches: `source[i]` plus every
  cache's row i, or, without a `source` (batches without pixels), the caches' rows alone with
  the first cache's captions. Limited to the caches' rows (the first N of the split).

  A Grain random-access source (`len`, `[i]`) that pickles, as sources.py's do."""

  def __init__(self, source, caches):
    self.source, self.caches = source, tuple(caches)
    if not self.caches:
      raise ValueError("JoinedSource needs at least one cache")
    lengths = [len(c) for c in self.caches] + ([len(source)] if source is not None else [])
    self._len = min(lengths)
    if source is not None:
      for cache in self.caches:
        if len(cache) > len(source):
          raise DataError(f"cache {cache.directory!r} has {len(cache)} rows, but the dataset has "
                          f"{len(source)} train examples; rebuild it over this dataset")
        for i in sorted({0, len(cache) - 1}):  # the rows are this dataset's examples
          if cache.caption(i) != source.caption(i):
            raise DataError(f"cache {cache.directory!r} row {i} has caption "
                            f"{_short(cache.caption(i))!r}, but train example {i} is "
                            f"{_short(source.caption(i))!r}; rebuild it over this dataset")

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range [0, {self._len})")
    example = dict(self.source[index]) if self.source is not None else {}
    for cache in self.caches:
      row = cache[index]
      caption = row.pop("caption")
      example.setdefault("caption", caption)
      example.update(row)
    return example

  def caption(self, index):
    if self.source is not None:
      return self.source.caption(index)
    return self.caches[0].caption(index)
