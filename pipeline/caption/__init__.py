"""Captioning with an MLLM served by vLLM: server fleet, async client, caption filters, the resumable run, and
its Ray distributor."""
