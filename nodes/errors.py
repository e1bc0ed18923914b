"""Errors that name the node, the input and what to do (shown by ComfyUI as the node's error)."""
from __future__ import annotations

import contextlib
from typing import Iterator


class SpacetimeNodeError(ValueError):
    """A bad input found while a node runs; the message starts with ``Node: input 'x'``."""


def node_error(node_cls, input_name: str, message: str) -> SpacetimeNodeError:
    """``SpacetimeX: input 'name': message`` as an exception to raise."""
    # node classes are named after their ids; ComfyUI runs a locked "...Clone" of the class
    node_id = getattr(node_cls, "__name__", str(node_cls)).removesuffix("Clone")
    return SpacetimeNodeError(f"{node_id}: input '{input_name}': {message}")


@contextlib.contextmanager
def blamed_on(node_cls, input_name: str, *errors: type[Exception]) -> Iterator[None]:
    """Inside the block, a ``ValueError`` (the library's way of refusing an input; or one of
    ``errors``) becomes the node error of ``input_name``, with the library's message."""
    try:
        yield
    except (ValueError, *errors) as e:
        if isinstance(e, SpacetimeNodeError):
            raise
        raise node_error(node_cls, input_name, str(e)) from None
