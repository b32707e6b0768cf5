#!/usr/bin/env python3
"""Build the WordNet supersense set (gloss -> lexicographer file, 45 classes) from Debian's wordnet-base.

Same as ``python -m bertrt.train.wordnet``; see that module for the format and the split.
"""

from bertrt.train.wordnet import main

if __name__ == "__main__":
    main()
