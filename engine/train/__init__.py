"""Fine-tuning and knowledge distillation for BERT-family encoders.

Training uses transformers' ``Bert*`` modules (this is training, not the inference engine); the outputs
are Hugging Face-format directories that both ``bertrt.load`` and ``transformers`` load.

- :mod:`bertrt.train.data`: CSV/JSONL readers with errors that name file, line and column.
- :mod:`bertrt.train.wordnet`: the WordNet supersense demo set (gloss -> lexicographer file, 45 classes).
- :mod:`bertrt.train.finetune`: sequence and token classification fine-tuning.
- :mod:`bertrt.train.distill`: teacher -> student distillation (soft labels, hidden MSE, attention KL,
  embedding MSE + cosine).
- :mod:`bertrt.train.loop` / :mod:`bertrt.train.checkpoint`: the seeded, resumable training loop.
- :mod:`bertrt.train.report`: teacher vs student accuracy, agreement, size and latency.
- :mod:`bertrt.train.cli`: ``register(subparsers)`` adds the ``finetune`` and ``distill`` commands.
"""
