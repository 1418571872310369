"""
Assembly: settings in, running services out (the listener, the admin
listener, certificate reload, the systemd watchdog), and development mode.
"""

from securews.service._service import SecureWebSocketService, build_service

__all__ = ["SecureWebSocketService", "build_service"]
