"""Dialling nodes that may be down, for the operator tools (``paxos status``,
``paxos explain``, a node explaining an instance): a connection of one's own,
and a failed call's reason in a few words.

Both the operator client and the servers that ask their peers use these, so
they live in transport, below either.
"""

from __future__ import annotations

import grpc

from paxos_service.transport import tls

#: Channel option: do not share connections with the process's other channels.
FRESH_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


def rpc_reason(exc: BaseException, *, with_tls: bool = False) -> str:
    """Why a call failed, in a few words: "connection refused", "no answer
    before the deadline", a refused TLS handshake in words, or the status code
    and details."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        details = (exc.details() or "").strip() if hasattr(exc, "details") else ""
        refusal = tls.describe_refusal(code, details, tls=with_tls)
        if refusal is not None:
            return refusal
        if code is grpc.StatusCode.UNAVAILABLE:
            lowered = details.lower()
            for known in ("connection refused", "no route to host", "connection reset"):
                if known in lowered:
                    return known
            if "dns resolution failed" in lowered or "name resolution" in lowered:
                return "cannot resolve the host name"
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return "no answer before the deadline"
        return f"{code.name}: {details}" if details else code.name
    return f"{type(exc).__name__}: {exc}"
