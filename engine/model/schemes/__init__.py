"""Streaming schemes: how a graph is run chunk by chunk, and what a stream carries between chunks.
A model directory's `streaming.scheme` names one; each is a class in its own file (`scheme.Scheme`)."""

from engine.model.schemes.buffered import Buffered
from engine.model.schemes.explicit_state import ExplicitState
from engine.model.schemes.scheme import Scheme

SCHEMES: dict[str, type[Scheme]] = {"explicit_state": ExplicitState, "buffered": Buffered}

__all__ = ["SCHEMES", "Buffered", "ExplicitState", "Scheme"]
