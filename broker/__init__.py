"""Redis Streams transport: streams, consumer groups and the Lua scripts that settle states.

This package knows keys, entries and scripts; it never imports `exospherehost`.
"""
