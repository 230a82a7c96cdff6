"""Logical axis names and the default rules that map them onto mesh axes.

Modules name the axes of every parameter (`nn.with_logical_partitioning`) and
of key activations (`nn.with_logical_constraint`) with the names below; they
never name mesh axes. A config's `axis_rules` maps names to the mesh axes
`data`, `fsdp`, `tensor` (and `sequence` where attention needs it).

Vocabulary (use these, add new ones here with a rule):
  activations: batch, length (text/token sequence), frames, height, width,
               embed (model width / channels), heads, kv (head dim), mlp
  parameters:  embed (model width: FSDP-sharded), mlp (hidden width: tensor),
               heads (tensor), kv (head dim), vocab (vocabulary / codebook),
               conv_in, conv_out (conv kernel channels), norm (scales, biases),
               relpos (relative position buckets), layers (the stacked axis of
               layers under nn.scan: never sharded)
"""

# (logical name, mesh axis | tuple of mesh axes | None). First match wins.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("frames", None),
    ("height", None),
    ("width", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("norm", None),
    ("relpos", None),
    ("layers", None),
)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
