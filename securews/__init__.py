"""
securews: a hardened, production WebSocket server on Twisted and Autobahn.

Embedding::

    config = securews.load_config("securews.toml")
    factory = securews.SecureServerFactory(config, protocol=MyApp,
                                           authenticator=my_auth)
    endpoint.listen(securews.listening_factory(factory))
"""

from securews._version import __version__
from securews.auth.interfaces import HandshakeRequest, IAuthenticator, Principal
from securews.rules.config import Config, ConfigError
from securews.rules.config import load as load_config
from securews.wire.factory import SecureServerFactory
from securews.wire.listening import listening_factory
from securews.wire.protocol import SecureServerProtocol

__all__ = [
    "Config",
    "ConfigError",
    "HandshakeRequest",
    "IAuthenticator",
    "Principal",
    "SecureServerFactory",
    "SecureServerProtocol",
    "__version__",
    "listening_factory",
    "load_config",
]
