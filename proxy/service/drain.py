"""What a draining node answers over ng, and which commands are timed under which name.

A draining node (SIGTERM, see :mod:`proxy.service.serve`) refuses offers for calls it does not
have, and only those: answers, re-offers (hold, transfer), ``block DTMF``, deletes and pings of
the calls that stay on it go on as usual.

Why ``load limit``: Kamailio's rtpengine module (``rtpengine.c``, ``rtpp_function_call``) sends
``supports: [load limit]`` with every command and, on a reply whose ``result`` is ``load
limit``, queries the next node of its set without marking this one disabled — so the answers
and deletes of the calls that stay here still reach it. For a client that does not say it
supports that, the error reason ``Parallel session limit reached`` does the same in Kamailio
(5.6 and later; it is also what rtpengine itself answers at its session limit). Not answering
at all would be worse: the module would wait out its retransmissions, then disable the node for
every call, the live ones included.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from proxy.control import ng
from proxy.control.requests import DtmfRequest, NegotiateRequest, Request

DRAINING_MESSAGE = "draining: this node takes no new calls"
SESSION_LIMIT_REASON = "Parallel session limit reached"
# The ng commands timed by name; anything else (unknown, unparsable) is timed as "other", so a
# client cannot make up metric label values.
NG_COMMANDS = ("ping", "offer", "answer", "delete", "query", "list", "statistics",
               "block DTMF", "unblock DTMF")


def starts_a_call(request: Request, calls: Container[str]) -> bool:
    """An offer for a call this node does not have (a new party on a live call is no new call)."""
    return (isinstance(request, NegotiateRequest) and request.command == "offer"
            and request.call_id not in calls)


def refuse_new_call(request: NegotiateRequest) -> dict[str, Any]:
    """The reply that makes Kamailio's rtpengine module try the next node of its set."""
    if "load-limit" in request.supports:  # the ng key folding turns "load limit" into this
        return {"result": "load limit", "message": DRAINING_MESSAGE}
    return ng.error_reply(SESSION_LIMIT_REASON)


def command_name(request: Request) -> str:
    """The ng command's name as rtpengine spells it (one of :data:`NG_COMMANDS`)."""
    match request:
        case NegotiateRequest():
            return request.command
        case DtmfRequest():
            return "block DTMF" if request.block else "unblock DTMF"
        case _:
            return type(request).__name__.removesuffix("Request").lower()
