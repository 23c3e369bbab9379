"""The client side: StateManager (graphs, runs, dead letters) and what it reads."""

from exospherehost.client.statemanager import StateManager

__all__ = ["StateManager"]
