"""paw-lightning: policy and world-model (PaW) co-training for LLM agents in text environments."""

__version__ = "0.1.0"
