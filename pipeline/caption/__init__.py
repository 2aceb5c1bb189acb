"""Captioning with an MLLM served by vLLM: server fleet, async client, caption filters, and the resumable run."""
