"""
The security guide's attacks, end to end, against ``twistd securews``.

Each test attacks a server started the way an operator starts it
(``twistd --nodaemon --pidfile= securews --config securews.toml``, the
installed plugin, real TLS on loopback) and checks three things:

* the documented outcome (HTTP status, close code and reason, or a TCP
  drop, with the log event the operator sees);
* a well-behaved client, connected before the attack, exchanges messages
  before, during and after it (:class:`bystander.Bystander`);
* the server's peak resident memory (``VmHWM`` in ``/proc/<pid>/status``,
  reset first through ``clear_refs``) grew by less than the bound for the
  attack's class (:mod:`attacks.harness`, ``*_BOUND``).

Attackers and the well-behaved client never share a rate-limit key: every
test gets fresh loopback source addresses (``127.1.x.y`` for attackers,
``127.2.x.y`` for the good client; all of 127.0.0.0/8 is loopback) and,
behind the trusted-proxy listener, fresh IPv6 /64 networks in
``X-Forwarded-For``, so no test depends on another's leftovers.
"""
