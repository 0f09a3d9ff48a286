"""Options of every gRPC channel a node or client opens: message limits sized
to the largest allowed value, and fast reconnects to a peer back from a crash.
Client and server code both use it, so it lives apart from the server."""

from __future__ import annotations

from typing import Any

# Room for protobuf framing around the largest allowed value.
MESSAGE_OVERHEAD = 64 * 1024


def channel_options(max_value_bytes: int) -> list[tuple[str, Any]]:
    size = max_value_bytes + MESSAGE_OVERHEAD
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        # Reconnect quickly to a peer that comes back after a crash.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
    ]
