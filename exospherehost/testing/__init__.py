"""Zero-setup and testing helpers: a private redis-server the SDK starts itself."""

from exospherehost.testing.server import PrivateServer, ServerInfo

__all__ = ["PrivateServer", "ServerInfo"]
