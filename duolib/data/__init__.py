"""Data: offline corpora, byte-level BPE tokenizers, memmap token caches and stateless batches."""
