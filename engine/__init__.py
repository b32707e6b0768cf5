"""bertrt: a performance-first inference engine for BERT-family encoders."""

__version__ = "0.1.0"

