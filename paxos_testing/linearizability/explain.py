"""What a failed check says: the longest linearizable prefix the search found,
the operation it could not place, and why each pending one could not go next.
Written for a person reading a chaos report, with every operation named by its
position in the history as given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from paxos_testing.linearizability.history import Operation
from paxos_testing.linearizability.search import Failure

# How many operations of the longest linearizable prefix an explanation shows.
_PREFIX_SHOWN: Final = 12


def explain_failure(key: str, history: Sequence[tuple[int, Operation]], failure: Failure) -> str:
    def describe(i: int) -> str:
        position, op = history[i]
        return f"#{position} {_describe(op)}"

    # Replay the prefix with the real values: the search may have merged
    # values that nothing reads (rule 3 in :mod:`.search`).
    state: bytes | None = None
    for i in failure.prefix:
        state = _apply(history[i][1], state)

    lines = [
        f"not linearizable: key {key!r} ({len(history)} operations; #N is an operation's "
        "position in the history as given)",
        f"longest linearizable prefix found: {len(failure.prefix)} operations",
    ]
    shown = failure.prefix[-_PREFIX_SHOWN:]
    if len(shown) < len(failure.prefix):
        lines.append(f"  ... {len(failure.prefix) - len(shown)} earlier operations")
    for i in shown:
        assumed = "" if history[i][1].status == "ok" else " (assumed to take effect here)"
        lines.append(f"  {describe(i)}{assumed}")
    lines.append(f"value after that prefix: {_show_value(state)}")
    stuck_op = history[failure.stuck][1]
    lines.append(
        f"stuck: {describe(failure.stuck)} returned at {stuck_op.complete!r}, but no order of "
        "the operations pending then lets it take effect by that time"
    )
    lines.append("operations of known outcome pending then, and applying each next:")
    for i in failure.candidates:
        lines.append(f"  {describe(i)}: {_why(history[i][1], state)}")
    return "\n".join(lines)


def explain_unwritten_read(key: str, history: Sequence[tuple[int, Operation]], i: int) -> str:
    position, op = history[i]
    observed = op.output if op.kind == "get" else op.expected
    return (
        f"not linearizable: key {key!r}: #{position} {_describe(op)} observed "
        f"{_show_value(observed)}, but no put or cas on this key that could have written it "
        f"was invoked before {op.complete!r} (#N is an operation's position in the history "
        "as given)"
    )


def _apply(op: Operation, state: bytes | None) -> bytes | None:
    """The state after ``op`` takes effect on ``state`` (the sequential model)."""
    if op.kind == "put" or (op.kind == "cas" and state == op.expected):
        return op.value
    if op.kind == "delete":
        return None
    return state


def _why(op: Operation, state: bytes | None) -> str:
    """Why the known-outcome ``op`` can or cannot go next, on ``state``."""
    if op.kind == "get" and op.output != state:
        return f"cannot be next: it read {_show_value(op.output)} (value is {_show_value(state)})"
    if op.kind == "cas" and (state == op.expected) != op.output:
        outcome = "swapped" if op.output else "did not swap"
        return f"cannot be next: it {outcome}, but the value is {_show_value(state)}"
    return "could go next, but then the operations after it could not all be placed"


def _describe(op: Operation) -> str:
    if op.kind == "put":
        call = f"put({_show_value(op.value)})"
    elif op.kind == "delete":
        call = "delete()"
    elif op.kind == "get":
        call = "get()"
    else:
        call = f"cas({_show_value(op.expected)} -> {_show_value(op.value)})"
    if op.status == "ok":
        if op.kind == "get":
            call += f" -> {_show_value(op.output)}"
        elif op.kind == "cas":
            call += " -> swapped" if op.output else " -> not swapped"
        timing = f"[{op.invoke!r}, {op.complete!r}]"
    else:
        call += " -> outcome unknown"
        timing = f"[{op.invoke!r}, ...)"
    return f"client {op.client_id} {call} {timing}"


def _show_value(value: bytes | bool | None, limit: int = 40) -> str:
    if value is None:
        return "absent"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
