"""Evaluation: encode with caching, retrieval and zero-shot metrics, benchmark adapters, and the run over them."""
