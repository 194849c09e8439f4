"""The one default for dynamic input dims, in a module that imports nothing.

It lives apart from graphprune.inputs (numpy, onnx) because the CLI states it in
`--help`, and building the argument parser must not import onnx.
"""

# a dynamic dim other than the batch (H, W, sequence length) is set to this unless --input-shape says
DEFAULT_DYNAMIC_DIM = 64
