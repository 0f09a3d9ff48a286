"""A deliberately broken acceptor, for tests only: proof that the checkers can fail.

**Never use this outside a test.** It is not part of the product: it lives in
:mod:`paxos_testing`, which the wheel does not contain and the product never
imports, and no variable or flag of ``paxos`` turns it on. It runs as its own
process, through its own entry point::

    python -m paxos_testing.broken_acceptor --mode promise-lower --id 0 --listen ... --db ...

which takes every argument of ``paxos acceptor`` after ``--mode`` (a leading
``acceptor`` is allowed too), patches :class:`roles.Acceptor` in that process
only, logs a loud warning, and runs the real acceptor (``paxos_service.cli.main``).
The chaos harness starts the acceptors it is told to break this way
(``python -m paxos_testing.chaos --broken-acceptor promise-lower``, see
docs/chaos.md); ``tests/chaos/test_broken_acceptor.py`` shows the run's
checkers catch it.

Modes:

``promise-lower``
    The acceptor ignores its promises: it promises a Prepare or PrepareRange
    whose ballot is not above the one it promised (it reports what it
    accepted, as usual, but keeps its higher promise), and accepts an Accept
    whose ballot is below its promise. Everything else (persisting before
    replying, identity checks, storage failures) is unchanged. With one leader
    nothing goes wrong; with two (the old leader still reaches the acceptors
    but not the other proposers), both get a majority for different values on
    the same instances, and the learners diverge.

``roles/`` stays pure and correct: the broken logic is here, and it replaces
the role's methods only in a process started through this entry point.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from paxos_service.cli import main as cli
from paxos_service.core.logger import get_logger
from roles import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    AcceptorStep,
    Prepare,
    PrepareRange,
    Promise,
    PromiseRange,
    RangePromise,
    RangeStep,
    Reject,
)
from roles.acceptor import report_start
from roles.ballot import ZERO_BALLOT, Ballot

PROMISE_LOWER: Final = "promise-lower"
MODES: Final = (PROMISE_LOWER,)
#: What every broken acceptor logs at start (the chaos test looks for it).
WARNING: Final = (
    "TEST-ONLY BROKEN ACCEPTOR: this acceptor deliberately breaks Paxos safety "
    "(it promises and accepts ballots below its promise); it exists to prove the chaos "
    "checkers catch that. Never run it outside a test: start `paxos acceptor` instead "
    "of `python -m paxos_testing.broken_acceptor`."
)

# The correct steps, captured before anything is patched: the broken ones
# call these, so they work on any Acceptor once installed on the class.
_CORRECT_PREPARE: Final = Acceptor.on_prepare
_CORRECT_ACCEPT: Final = Acceptor.on_accept
_CORRECT_PREPARE_RANGE: Final = Acceptor.on_prepare_range


class PromiseIgnoringAcceptor(Acceptor):
    """An acceptor that promises and accepts whatever ballot comes (mode
    ``promise-lower``). Its own promise never goes down, but it no longer
    holds anyone to it, and the range promise's floor is ignored."""

    def on_prepare(
        self,
        state: AcceptorState,
        msg: Prepare,
        floor: Ballot = ZERO_BALLOT,
        *,
        compacted_through: int = 0,
    ) -> AcceptorStep:
        step = _CORRECT_PREPARE(self, state, msg, compacted_through=compacted_through)  # no floor
        if not isinstance(step.reply, Reject):
            return step
        # Promise a ballot at or below the promised one (nothing to persist:
        # the higher promise stays).
        promise = Promise(
            msg.instance, msg.ballot, self.acceptor_id, state.accepted_ballot, state.accepted_value
        )
        return AcceptorStep(state, promise, persist=False)

    def on_accept(
        self,
        state: AcceptorState,
        msg: Accept,
        floor: Ballot = ZERO_BALLOT,
        *,
        compacted_through: int = 0,
    ) -> AcceptorStep:
        step = _CORRECT_ACCEPT(self, state, msg, compacted_through=compacted_through)  # no floor
        if not isinstance(step.reply, Reject):
            return step
        # Accept below the promise (msg.ballot < promised_ballot, so the state
        # stays well-formed), and persist it before replying, as usual.
        accepted = Accepted(msg.instance, msg.ballot, self.acceptor_id, msg.value)
        new = AcceptorState(state.promised_ballot, msg.ballot, msg.value)
        return AcceptorStep(new, accepted, persist=new != state)

    def on_prepare_range(
        self,
        range_promise: RangePromise,
        states: Mapping[int, AcceptorState],
        msg: PrepareRange,
        *,
        chosen_through: int = 0,
        compacted_through: int = 0,
        page_bytes: int | None = None,
    ) -> RangeStep:
        step = _CORRECT_PREPARE_RANGE(
            self,
            range_promise,
            states,
            msg,
            chosen_through=chosen_through,
            compacted_through=compacted_through,
            page_bytes=page_bytes,
        )
        if not isinstance(step.reply, Reject):
            return step
        # Promise anyway, everything in one page.
        chosen_through = max(chosen_through, compacted_through)
        start = report_start(msg, chosen_through)
        accepted = tuple(
            Accepted(instance, state.accepted_ballot, self.acceptor_id, state.accepted_value)
            for instance, state in sorted(states.items())
            if instance >= start and state.accepted_value is not None
        )
        promise = PromiseRange(
            msg.from_instance,
            msg.ballot,
            self.acceptor_id,
            accepted,
            chosen_through=chosen_through,
            page_from=msg.page_from,
        )
        return RangeStep(range_promise, promise, persist=False)


def install(mode: str, on_create: Callable[[Acceptor], None] | None = None) -> Callable[[], None]:
    """Break every :class:`roles.Acceptor` of this process in ``mode``, and
    call ``on_create`` with each one made from then on. Returns the function
    that undoes it (for tests)."""
    if mode not in MODES:
        raise ValueError(f"{mode!r} is not a broken-acceptor mode; choose from {MODES}")
    names = ("__init__", "on_prepare", "on_accept", "on_prepare_range")
    saved = {name: Acceptor.__dict__[name] for name in names}
    for name in names[1:]:
        setattr(Acceptor, name, PromiseIgnoringAcceptor.__dict__[name])
    correct_init = saved["__init__"]

    def __init__(self: Acceptor, acceptor_id: int, no_vote_through: int = 0) -> None:
        correct_init(self, acceptor_id, no_vote_through)
        if on_create is not None:
            on_create(self)

    Acceptor.__init__ = __init__  # type: ignore[method-assign]

    def uninstall() -> None:
        for name, function in saved.items():
            setattr(Acceptor, name, function)

    return uninstall


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m paxos_testing.broken_acceptor",
        description="TEST ONLY: run `paxos acceptor ARGS...` with an acceptor that "
        "deliberately breaks Paxos safety.",
    )
    parser.add_argument("--mode", required=True, choices=MODES)
    return parser


def acceptor_argv(argv: Sequence[str]) -> tuple[str, list[str]]:
    """``(mode, the argv for paxos_service.cli.main.main)`` from this entry point's argv."""
    args, rest = build_parser().parse_known_args(list(argv))
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if rest[:1] != ["acceptor"]:
        rest = ["acceptor", *rest]
    if rest[1:2] == ["recover"]:
        build_parser().error("only the acceptor server can be broken, not `recover`")
    return args.mode, rest


def main(argv: Sequence[str] | None = None) -> int:
    mode, cli_argv = acceptor_argv(sys.argv[1:] if argv is None else argv)

    def warn(acceptor: Acceptor) -> None:
        # The server makes its Acceptor once logging is set up: the warning
        # lands in the node's log, as a JSON line like any other.
        get_logger().warning(WARNING, broken_mode=mode, acceptor_id=acceptor.acceptor_id)

    print(f"{WARNING} (mode {mode})", file=sys.stderr, flush=True)
    install(mode, on_create=warn)
    return cli.main(cli_argv)


if __name__ == "__main__":
    raise SystemExit(main())
