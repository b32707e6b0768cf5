"""Names the command line offers, importable without torch (``bertrt --help`` stays fast)."""

CPU_PEER_NAMES = ("transformers-fp32", "transformers-bf16", "ort-fp32", "ort-int8", "openvino")  # CPU default
PEER_NAMES = (*CPU_PEER_NAMES, "transformers-fp16", "sentence-transformers-fp16")
# --device cuda: the peers and bertrt precisions by default (ONNX Runtime / OpenVINO peers are CPU sessions)
GPU_PEER_NAMES = ("transformers-fp16", "transformers-bf16", "sentence-transformers-fp16")
GPU_PRECISIONS = ("fp16", "bf16")
PRECISIONS = ("fp32", "bf16", "int8", "int8a7", "int8a7sq", "fp16")
# int8 precisions -> Int8DynamicConfig keyword arguments; int8a7sq: 7-bit activations with a zero point per
# token and SmoothQuant (alpha 0.5) calibrated on seeded texts that are not the timed ones
INT8_PRECISIONS = {"int8": {}, "int8a7": {"act_bits": 7},
                   "int8a7sq": {"act_bits": 7, "act_symmetric": False, "smoothquant_alpha": 0.5}}
CALIBRATION_SHAPE, CALIBRATION_SEED = "32x16-128", 1_000_003
DEFAULT_SHAPES = ("1x128", "8x128", "32x16-128")
