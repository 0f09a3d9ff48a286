"""A deliberately broken acceptor, for tests only: proof that the checkers can fail.

**Never use this outside a test.** It is switched on only by the environment
variable :data:`ENV_VAR` (there is no command-line flag for it), and an
acceptor that has it on logs a loud warning at start. The chaos harness sets
it for the acceptors it is told to break
(``python -m paxos_service.chaos --broken-acceptor promise-lower``, see
docs/chaos.md); ``tests/chaos/test_broken_acceptor.py`` shows the run's checkers
catch it.

Modes (the variable's value):

``promise-lower``
    The acceptor ignores its promises: it promises a Prepare or PrepareRange
    whose ballot is not above the one it promised (it reports what it
    accepted, as usual, but keeps its higher promise), and accepts an Accept
    whose ballot is below its promise. Everything else (persisting before
    replying, identity checks, storage failures) is unchanged. With one leader
    nothing goes wrong; with two (the old leader still reaches the acceptors
    but not the other proposers), both get a majority for different values on
    the same instances, and the learners diverge.

The broken logic is a subclass of :class:`roles.Acceptor` that lives here, in
the adapter layer: ``roles/`` stays pure and correct.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from paxos_service.config import ConfigError
from paxos_service.log import get_logger
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
from roles.ballot import ZERO_BALLOT, Ballot

#: The test-only switch. Unset or empty: a correct acceptor.
ENV_VAR: Final = "PAXOS_TEST_BROKEN_ACCEPTOR"
PROMISE_LOWER: Final = "promise-lower"
MODES: Final = (PROMISE_LOWER,)


class PromiseIgnoringAcceptor(Acceptor):
    """An acceptor that promises and accepts whatever ballot comes (mode
    ``promise-lower``). Its own promise never goes down, but it no longer
    holds anyone to it, and the range promise's floor is ignored."""

    def on_prepare(
        self, state: AcceptorState, msg: Prepare, floor: Ballot = ZERO_BALLOT
    ) -> AcceptorStep:
        step = super().on_prepare(state, msg)  # the floor ignored
        if not isinstance(step.reply, Reject):
            return step
        # Promise a ballot at or below the promised one (nothing to persist:
        # the higher promise stays).
        promise = Promise(
            msg.instance, msg.ballot, self.acceptor_id, state.accepted_ballot, state.accepted_value
        )
        return AcceptorStep(state, promise, persist=False)

    def on_accept(
        self, state: AcceptorState, msg: Accept, floor: Ballot = ZERO_BALLOT
    ) -> AcceptorStep:
        step = super().on_accept(state, msg)  # the floor ignored
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
    ) -> RangeStep:
        step = super().on_prepare_range(range_promise, states, msg)
        if not isinstance(step.reply, Reject):
            return step
        accepted = tuple(
            Accepted(instance, state.accepted_ballot, self.acceptor_id, state.accepted_value)
            for instance, state in sorted(states.items())
            if instance >= msg.from_instance and state.accepted_value is not None
        )
        promise = PromiseRange(msg.from_instance, msg.ballot, self.acceptor_id, accepted)
        return RangeStep(range_promise, promise, persist=False)


def mode_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The broken mode :data:`ENV_VAR` asks for, or None. An unknown mode is
    a ConfigError: a typo must not quietly run a correct acceptor in a test
    that means to prove the checkers fail."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not value:
        return None
    if value not in MODES:
        raise ConfigError(f"{ENV_VAR}={value!r} is not a broken-acceptor mode; choose from {MODES}")
    return value


def from_env(acceptor: Acceptor, environ: Mapping[str, str] | None = None) -> Acceptor:
    """``acceptor`` itself, or, when :data:`ENV_VAR` is set, its broken
    replacement (and a loud warning in the log)."""
    mode = mode_from_env(environ)
    if mode is None:
        return acceptor
    get_logger().warning(
        "TEST-ONLY BROKEN ACCEPTOR: this acceptor deliberately breaks Paxos safety "
        "(it promises and accepts ballots below its promise); it exists to prove the chaos "
        f"checkers catch that. Never run it outside a test: unset {ENV_VAR}.",
        broken_mode=mode,
        env=ENV_VAR,
    )
    return PromiseIgnoringAcceptor(acceptor.acceptor_id, acceptor.no_vote_through)
