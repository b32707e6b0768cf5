"""``bertrt loadgen``: MLPerf Inference LoadGen (``mlcommons-loadgen``) over bertrt.

A system under test (SUT) runs queries on an engine in this process (bertrt's own backend, or
ONNX Runtime through the same API as a second SUT) or on a running ``bertrt serve`` (KServe v2 /
OpenAI-style HTTP routes); a query sample library (QSL) serves a dataset file: JSON lines of texts
for embed/classify, SQuAD-format JSON for qa. Scenarios SingleStream, MultiStream, Server and
Offline; performance and accuracy modes. See docs/benchmarks.md.
"""

from .accuracy import squad_scores
from .dataset import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset", "squad_scores"]
