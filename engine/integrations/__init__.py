"""bertrt inside the systems people already run, each behind an optional extra:

- ``bertrt.integrations.ray``: a Ray Serve app (``build_app``) and Ray Data batch inference
  (``embed_dataset``, ``classify_dataset``, defined in the lighter ``bertrt.integrations.ray_data``,
  which Ray Data actors import without Ray Serve) — ``pip install bertrt[ray]``;
- ``bertrt.integrations.kserve``: a ``kserve.Model`` on KServe's ModelServer — ``bertrt[kserve]``;
- ``bertrt.integrations.sentence_transformers``: ``SentenceTransformer.encode`` semantics on bertrt;
- ``bertrt.integrations.langchain``: a LangChain ``Embeddings`` — ``bertrt[langchain]``.

Nothing here is imported by ``import bertrt``; each module imports its library when it is imported.
"""
