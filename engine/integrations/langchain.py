"""A LangChain ``Embeddings`` on a bertrt engine (``pip install bertrt[langchain]``).

    from bertrt.integrations.langchain import BertrtEmbeddings
    embeddings = BertrtEmbeddings(model="path/to/model")      # any vector store taking Embeddings
    embeddings.embed_documents(["a text", ...])                  # list of lists of floats
"""

from __future__ import annotations

import asyncio

import bertrt
from langchain_core.embeddings import Embeddings  # optional dependency: bertrt[langchain]


class BertrtEmbeddings(Embeddings):
    """``bertrt.load(model, task="embed", **load_options)`` behind LangChain's interface.
    ``query_prefix`` / ``document_prefix`` are prepended (for models trained with instructions);
    the async methods run the engine in a worker thread so the event loop is not blocked."""

    def __init__(self, model=None, query_prefix: str = "", document_prefix: str = "", normalize: bool | None = None,
                 engine=None, **load_options):
        self.engine = engine if engine is not None else bertrt.load(model, task="embed", **load_options)
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.normalize = normalize

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One (hidden,) list of floats per text."""
        return self.engine.embed([self.document_prefix + t for t in texts], normalize=self.normalize).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.engine.embed([self.query_prefix + text], normalize=self.normalize)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
