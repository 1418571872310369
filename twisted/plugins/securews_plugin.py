"""twistd plugin: ``twistd securews``.  The module is named as a string,
so nothing of securews is imported until the plugin is used."""

from twisted.application.service import ServiceMaker

securews = ServiceMaker(
    "securews",
    "securews.tap",
    "A hardened, production WebSocket server (wss:// only).",
    "securews",
)
