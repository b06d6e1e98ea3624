"""Decoder LMs (task: text-generation): a static-KV-cache export per runtime, and generation-based checks."""
