"""bertrt: a performance-first inference engine for BERT-family encoders.

    import bertrt
    engine = bertrt.load()                 # the bundled all-MiniLM-L6-v2
    vectors = engine.embed(["a sentence"])  # (1, 384) float32
"""

from ._version import __version__
from .api import Engine, load
from .errors import BertrtError, InputError, ModelLoadError
from .quant import Bf16Config, Fp16Config, Int8DynamicConfig, Int8StaticConfig, quantize_

__all__ = ["BertrtError", "Bf16Config", "Engine", "Fp16Config", "InputError", "Int8DynamicConfig",
           "Int8StaticConfig", "ModelLoadError", "__version__", "load", "quantize_"]
