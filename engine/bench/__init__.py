"""``bertrt bench``: bertrt against its peers (transformers, ONNX Runtime, OpenVINO) on CPU.

shapes.py  shape specs ("1x128", "8x128", "32x16-128") and seeded inputs (packed and padded)
peers.py   one small class per engine: ``prepare()`` then ``run(inputs)``; ``embed(inputs, out)``
runner.py  timing (warm-up, repeats, median/p90), fidelity (cosine to the FP32 reference)
report.py  table, CSV/JSON, PNG plot stamped with the CPU and the versions
cli.py     the ``bench`` subcommand
"""

from .shapes import ShapeSpec, make_inputs, parse_shapes

__all__ = ["ShapeSpec", "make_inputs", "parse_shapes"]
