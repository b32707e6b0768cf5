"""For each sentence of a `bertrt embed` JSON-lines file, print its nearest neighbour by cosine.

    bertrt embed --file examples/sentences.txt | python examples/similarity.py
"""

import json
import sys

import numpy as np


def main() -> None:
    records = [json.loads(line) for line in sys.stdin if line.strip()]
    if len(records) < 2:
        raise SystemExit("need at least two embedded sentences")
    texts = [r["text"] for r in records]
    vectors = np.array([r["embedding"] for r in records], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1.0)
    width = max(len(t) for t in texts)
    print(f"{'sentence':<{width}}  cosine  nearest neighbour")
    for i, text in enumerate(texts):
        j = int(similarity[i].argmax())
        print(f"{text:<{width}}  {similarity[i, j]:.3f}   {texts[j]}")


if __name__ == "__main__":
    main()
