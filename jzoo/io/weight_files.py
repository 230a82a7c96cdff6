"""Reading public weight files without their frameworks: `torch.save` files (zip and legacy
formats, tensors only: a restricted unpickler that builds nothing but storages and tensors) and
safetensors (single files, sharded indexes and folders, memory-mapped)."""

import collections
import json
import math
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

from jzoo.errors import CheckpointError


_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsFile:
  """Minimal lazy safetensors reader (memory-mapped; handles bf16 via ml_dtypes)."""

  def __init__(self, path):
    self.path = path
    try:
      with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n < 100_000_000:
          raise ValueError("bad header length")
        header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    header.pop("__metadata__", None)
    self.header = header
    self.offset = 8 + n

  def keys(self):
    return self.header.keys()

  def shape(self, key):
    return tuple(self.header[key]["shape"])

  def get(self, key) -> np.ndarray:
    info = self.header[key]
    if info["dtype"] not in _ST_DTYPES:
      raise CheckpointError(f"{self.path}: tensor {key} has unsupported dtype {info['dtype']}")
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    start, end = info["data_offsets"]
    count = (end - start) // dtype.itemsize
    arr = np.memmap(self.path, dtype=dtype, mode="r", offset=self.offset + start, shape=(count,))
    return np.asarray(arr, dtype=np.float32).reshape(info["shape"])


def open_safetensors(path_or_dir):
  """Returns ({key: SafetensorsFile}, directory, description) for a file, index or directory."""
  path = os.fspath(path_or_dir)
  if os.path.isdir(path):
    for name in ("model.safetensors.index.json", "model.safetensors"):
      if os.path.exists(os.path.join(path, name)):
        path = os.path.join(path, name)
        break
    else:
      raise CheckpointError(
          f"{path}: no model.safetensors or model.safetensors.index.json in this directory")
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file")
  directory = os.path.dirname(path)
  if path.endswith(".json"):
    try:
      with open(path) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
      raise CheckpointError(f"{path}: not a safetensors index with a weight_map ({e})") from e
    files = {name: SafetensorsFile(os.path.join(directory, name))
             for name in sorted(set(weight_map.values()))}
    tensors = {}
    for key, name in weight_map.items():
      if key not in files[name].header:
        raise CheckpointError(f"{path}: tensor {key} is listed for {name} but not in it")
      tensors[key] = files[name]
  else:
    f = SafetensorsFile(path)
    tensors = {k: f for k in f.keys()}
  return tensors, directory, path


# ----------------------------------------------------------------------------
# Reading torch.save files without torch.

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of the legacy (pre-1.6) format


class _Storage:
  """A flat typed storage; `data` is filled once its bytes are read."""

  def __init__(self, dtype, data=None):
    self.dtype, self.data = dtype, data


class _Tensor:
  """A tensor waiting for its storage (the legacy format stores the bytes after the pickle)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def numpy(self):
    flat = self.storage.data
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if math.prod(self.size) and not 0 <= self.offset <= last < flat.size:
      raise ValueError("tensor reaches past its storage")
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], self.size, [s * flat.itemsize for s in self.stride])
    return np.array(view)  # own the memory, C order


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a state_dict, allowing only tensors and dicts (no code runs)."""

  def __init__(self, file, read_storage):
    super().__init__(file)
    self.read_storage = read_storage  # (storage type name, key, numel) -> _Storage
    self.storages = {}

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

  def persistent_load(self, pid):
    if pid[0] != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {pid[0]!r}")
    # zip: (storage, type, key, location, numel); legacy adds view_metadata.
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if key not in self.storages:
      self.storages[key] = self.read_storage(storage_type, key, numel)
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError("storage views (old shared storages) are not supported")
    return self.storages[key]


def _read_zip(path):
  """torch.save's zip format (PyTorch >= 1.6): <archive>/data.pkl + <archive>/data/<key>."""
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise ValueError("no data.pkl in the zip")
    prefix = pkl[0][:-len("data.pkl")]
    order = "<"
    if prefix + "byteorder" in zf.namelist():
      order = {"little": "<", "big": ">"}[zf.read(prefix + "byteorder").decode()]

    def read_storage(storage_type, key, numel):
      dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder(order)
      data = np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype, count=numel)
      return _Storage(dtype, data.astype(dtype.newbyteorder("=")))

    with zf.open(pkl[0]) as f:
      return _TorchUnpickler(f, read_storage).load()


def _read_legacy(path):
  """torch.save's legacy format: magic, protocol, sys_info, the object, storage keys, then
  each storage's bytes as <int64 numel><raw data>."""
  with open(path, "rb") as f:
    plain = lambda: _TorchUnpickler(f, None).load()  # restricted too: no code runs
    if plain() != _TORCH_MAGIC:
      raise ValueError("not a torch.save file (bad magic number)")
    plain()  # protocol version
    info = plain()
    order = "<" if not isinstance(info, dict) or info.get("little_endian", True) else ">"
    unpickler = _TorchUnpickler(f, lambda t, key, numel: _Storage(
        np.dtype(_STORAGE_DTYPES[t]).newbyteorder(order)))
    result = unpickler.load()
    for key in plain():
      storage = unpickler.storages[str(key)]
      numel = int(np.frombuffer(f.read(8), order + "i8")[0])
      raw = f.read(numel * storage.dtype.itemsize)
      storage.data = np.frombuffer(raw, storage.dtype, count=numel).astype(
          storage.dtype.newbyteorder("="))
    return result


def read_torch_state_dict(path):
  """{name: numpy array} of a state_dict saved by torch.save (zip or legacy format), no torch."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file")
  try:
    result = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if not isinstance(result, dict):
      raise ValueError(f"it holds a {type(result).__name__}, not a state_dict")
    return {str(k): v.numpy() if isinstance(v, _Tensor) else np.asarray(v)
            for k, v in result.items()}
  except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError,
          pickle.UnpicklingError, zipfile.BadZipFile) as e:
    raise CheckpointError(f"{path}: not a readable PyTorch state_dict file ({e})") from e


def read_safetensors(path):
  """{name: numpy array} of a safetensors file."""
  import safetensors.numpy  # a jzoo dependency; imported here as only this reader needs it
  try:
    return dict(safetensors.numpy.load_file(os.fspath(path)))
  except Exception as e:  # safetensors raises its own error types
    raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def checked_params(keys, read, expected, path_of, convert, source, *, unexpected, missing):
  """A nested params dict from named arrays, checked name by name and shape by shape.

  keys: the tensor names to load; read(key) -> array; expected: {flax path tuple: shape};
  path_of(key, expected) -> flax path; convert(path, array) -> the array in flax layout.
  `unexpected` ends the error for a name with no path ("not a CLIPModel weight"); `missing` =
  (what a missing path is, why) for the error naming the first one."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = {}
  for key in sorted(keys):
    path = path_of(key, expected)
    if path not in expected:
      raise CheckpointError(f"{source}: unexpected tensor {key} ({unexpected})")
    raw = read(key)
    array = convert(path, np.asarray(raw, dtype=np.float32))
    if array.shape != expected[path]:
      raise CheckpointError(f"{source}: tensor {key} has shape {tuple(np.shape(raw))}, which "
                            f"gives {'/'.join(path)} {array.shape}; the config needs "
                            f"{expected[path]}")
    flat[path] = array
  absent = sorted(set(expected) - set(flat))
  if absent:
    what, why = missing
    raise CheckpointError(f"{source}: missing {what} {'/'.join(absent[0])} ({len(absent)} "
                          f"missing; {why})")
  return traverse_util.unflatten_dict(flat)
