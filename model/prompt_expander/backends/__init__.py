"""LLM backends of the prompt expander: an OpenAI-compatible HTTP client (``requests``)
and a local transformers model (optional, imported lazily)."""
