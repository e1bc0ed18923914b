"""LLM backends of the prompt expander: an OpenAI-compatible HTTP client (standard library)
and a local transformers model (optional, imported lazily)."""
