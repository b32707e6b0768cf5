"""Names the command line offers, importable without torch (``bertrt --help`` stays fast)."""

PEER_NAMES = ("transformers-fp32", "transformers-bf16", "ort-fp32", "ort-int8", "openvino")
PRECISIONS = ("fp32", "bf16", "int8", "int8a7")
# int8 precisions -> Int8DynamicConfig keyword arguments
INT8_PRECISIONS = {"int8": {}, "int8a7": {"act_bits": 7}}
DEFAULT_SHAPES = ("1x128", "8x128", "32x16-128")
