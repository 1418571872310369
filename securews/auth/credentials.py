"""
Which credentials a client put in a request itself.

A request may carry a ticket (``?ticket=``), a JWT (``?token=`` or
``Authorization: Bearer``) and a cookie.  The cookie is the browser's:
it rides along with every request to the site, whatever the page chose,
so it is only consulted when the request carries no credential of the
client's own choosing.  Two credentials the client chose (a token in
the query and a different one in the header, a ticket and a token) are
ambiguous: which one the server believed would be a guess, and a guess
is how one credential ends up authorising another's session.  Such a
request is refused (400), never answered with "the first that works".

Pure code: a request head in, names out.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from securews.rules.head import RequestHead

__all__ = ["explicit_credentials"]

_MAX_QUERY_FIELDS = 100


def explicit_credentials(head: RequestHead, *, ticket_param: str | None,
                         token_param: str | None) -> list[str]:
    """
    The credentials ``head`` carries of the client's choosing, one entry
    per place one was found, named by the method that reads it
    (``"ticket"`` or ``"jwt"``).

    :param ticket_param: the ticket's query parameter, or ``None`` when
        tickets are not a method.
    :param token_param: the JWT's query parameter, or ``None`` when JWTs
        are not a method (then ``Authorization: Bearer`` is no credential
        either).
    :returns: e.g. ``["jwt", "jwt"]`` for a token in the query and one in
        the header.  A query or header that does not parse counts for
        nothing here: the method that reads it refuses it.
    """
    found: list[str] = []
    try:
        query = parse_qs(head.query, keep_blank_values=True,
                         max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        query = {}
    if ticket_param is not None and ticket_param in query:
        found.append("ticket")
    if token_param is not None:
        if token_param in query:
            found.append("jwt")
        for value in head.values("authorization"):
            if value.partition(" ")[0].lower() == "bearer":
                found.append("jwt")
    return found
