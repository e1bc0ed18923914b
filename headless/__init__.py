"""Headless runs: a client for a ComfyUI host over HTTP (start a host, queue a workflow, follow
its progress, collect its files), the UI -> API conversion, ``--set`` overrides, the models a
workflow needs, the pack's workflow templates and the ``spacetime-video`` command. Imports no
nodes and no ComfyUI."""
