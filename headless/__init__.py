"""Headless runs over ComfyUI's HTTP API: host start, queue, progress, UI -> API conversion,
overrides, the models a workflow needs, the workflow templates and ``spacetime-video``."""
