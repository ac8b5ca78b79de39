"""The one check every command that listens on a port makes (serve, webui, eval annotate)."""

from __future__ import annotations

from ember.errors import ConfigError


def check_port(port: int) -> None:
    """Raises ConfigError for a number that is no TCP port: the socket layer would take 99999 modulo 65536, and
    report -1 as a bad host."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port: use a number from 0 to 65535")
