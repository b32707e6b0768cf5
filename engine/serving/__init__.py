"""HTTP serving: KServe v2 / Open Inference Protocol, OpenAI-compatible embeddings and task endpoints,
in front of a dynamic batcher that packs concurrent requests into padding-free batches.

    from bertrt.serving import ServeConfig, create_app
    app = create_app(bertrt.load(), ServeConfig())   # an ASGI app for uvicorn
"""

from .app import create_app
from .batcher import DynamicBatcher
from .config import ServeConfig

__all__ = ["DynamicBatcher", "ServeConfig", "create_app"]
