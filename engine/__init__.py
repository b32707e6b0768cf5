"""bertrt: a performance-first inference engine for BERT-family encoders.

    import bertrt
    engine = bertrt.load()                 # the bundled all-MiniLM-L6-v2
    vectors = engine.embed(["a sentence"])  # (1, 384) float32
"""

__version__ = "0.1.0"

from .api import Engine, load  # noqa: E402
from .errors import BertrtError, InputError, ModelLoadError  # noqa: E402
from .quant import Bf16Config, Fp16Config, Int8DynamicConfig, Int8StaticConfig, quantize_  # noqa: E402

__all__ = ["BertrtError", "Bf16Config", "Engine", "Fp16Config", "InputError", "Int8DynamicConfig",
           "Int8StaticConfig", "ModelLoadError", "__version__", "load", "quantize_"]
