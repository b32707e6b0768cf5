"""bertrt's BERT encoder (padded and padding-free), task heads and checkpoint loading."""

from .bert import BertModel
from .config import EncoderConfig
from .encoder import Encoder, KernelPlan
from .heads import PoolingConfig
from .loader import Checkpoint, default_model_dir, load_checkpoint

__all__ = ["BertModel", "Checkpoint", "Encoder", "EncoderConfig", "KernelPlan", "PoolingConfig",
           "default_model_dir", "load_checkpoint"]
