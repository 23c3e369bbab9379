"""Redis Streams transport: streams, consumer groups and the Lua scripts that settle states.

Installed and imported as `exospherehost.broker` (the repository keeps the folder at its top
level; exospherehost/broker links to it). It imports nothing of the SDK outside itself.
"""

if __name__ != "exospherehost.broker":
    # In the repository the folder is also reachable as a top-level `broker` (the tests put
    # the repository root on sys.path). Two module objects for one file would split every
    # isinstance check and hide an installed wheel's missing `broker`; refuse it loudly.
    raise ImportError(f"import exospherehost.broker, not {__name__!r} (see broker/__init__.py)")
