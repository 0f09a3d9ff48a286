"""The nemesis: the code that injects the faults of a run's schedule
(:mod:`paxos_testing.chaos.schedule`) and heals them.

One fault at a time, and never more than one acceptor impaired, so a majority
of acceptors can always be reached by whoever holds the other side: every
window is expected to end with the cluster serving again.

=====================  ==================================================  =========================
kind                   fault                                               heal
=====================  ==================================================  =========================
partition-leader       the leader drops all traffic to and from the        flush its rules
                       other nodes (iptables in its namespace)
partition-majority     one acceptor plus some proposers/learners cut off   flush the rules
                       from the rest, both ways
partition-one-way      one node hears nobody (INPUT dropped) but its       flush the rules
                       packets still go out
partition-flap         one node (often the leader) isolated and healed     flush the rules
                       again every 0.3-1 s for the whole window
loss                   every node drops a random share of packets from     flush the rules
                       the other nodes (iptables ``statistic``)
kill, kill-leader      SIGKILL                                             restart, same data
pause, pause-leader    SIGSTOP                                             SIGCONT
slow-link              one node's outgoing traffic squeezed through a     remove the qdisc
                       token bucket (``tc tbf``, 64-512 kbit/s, up to
                       500 ms queueing): a congested link, not a cut
clock-jump             a proposer's (the leader's, or a follower's) wall   nothing: clocks never
                       and monotonic clocks jump ahead by 2-120 s         run backwards
                       (libfaketime timestamp file; every proposer runs
                       under it when this kind is on)
split-brain            two halves, {the leader, one learner} and {the     flush the rules
                       other proposers, the other learner}, that cannot
                       talk to each other (TCP reset) but both reach every
                       acceptor; the leader is paused until another
                       proposer has taken over, then continued: each half
                       has a proposer that believes it leads
fsync                  libfiu makes fsync fail in one running acceptor     disable; SIGKILL; restart
                       (``fiu-ctrl -c "enable name=posix/io/sync/*"``);
                       it must stop voting
disk-full              a filler file fills one acceptor's tmpfs;           delete it; SIGKILL;
                       it must stop voting and keep its file readable      restart
learner-wipe           SIGKILL one learner and delete its volume (store,   start it: it fetches a
                       WAL, snapshot), if every other learner serves and   snapshot from the other
                       holds a snapshot at or above the acceptors'         learner and catches up
                       compaction point (else a plain kill)                from the acceptors
=====================  ==================================================  =========================

The client's own address (the hub) is never blocked: clients see the cluster
the way a client outside a partition would, and the learners they use may be
on either side.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from paxos_testing.chaos.harness import FSYNC_FAILPOINT, Harness
from paxos_testing.chaos.nodes import HUB_IP, SUBNET, Node
from paxos_testing.chaos.schedule import LEADER, FaultRecord, PlannedFault

#: A flapping partition is toggled after each of these many seconds.
FLAP_SECONDS: Final = (0.3, 1.0)
#: How long a storage fault stays on after its target stopped voting.
STORAGE_FAULT_LINGER: Final = 1.0
#: split-brain: the old leader stays paused at most this long for another to take over.
SPLIT_BRAIN_TAKEOVER: Final = 3.0


async def _status_field(node: Node, detail: str, field: str) -> int:
    """One number from ``node``'s GetNodeStatus (-1 if it does not answer:
    never enough to cover a compaction point)."""
    if not node.alive() or node.paused:
        return -1
    try:
        async with grpc.aio.insecure_channel(node.address) as channel:
            reply = await pb_grpc.OperatorServiceStub(channel).GetNodeStatus(
                pb.GetNodeStatusRequest(), timeout=2.0
            )
    except grpc.RpcError:
        return -1
    return int(getattr(getattr(reply, detail), field))


async def leader_of(harness: Harness) -> str | None:
    """The proposer that says it leads (the highest ballot if several do)."""
    best: tuple[tuple[int, int], str] | None = None

    async def ask(node: Node) -> None:
        nonlocal best
        if not node.alive() or node.paused:
            return
        try:
            async with grpc.aio.insecure_channel(node.address) as channel:
                reply = await pb_grpc.ProposerServiceStub(channel).GetLeader(
                    pb.GetLeaderRequest(), timeout=0.5
                )
        except grpc.RpcError:
            return
        if reply.is_leader:
            ballot = (reply.ballot.round, reply.ballot.proposer_id)
            if best is None or ballot > best[0]:
                best = (ballot, node.name)

    await asyncio.gather(*(ask(n) for n in harness.nodes.values() if n.role == "proposer"))
    return best[1] if best is not None else None


async def health(node: Node, timeout: float = 0.5) -> int | None:
    """The node's overall health status, or None if it did not answer."""
    try:
        async with grpc.aio.insecure_channel(node.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
    except grpc.RpcError:
        return None
    status: int = reply.status
    return status


class Nemesis:
    """Injects the planned faults into a running :class:`Harness`."""

    def __init__(self, harness: Harness, rng: random.Random, clock: Clock) -> None:
        self.harness = harness
        self.rng = rng
        self.clock = clock
        self.records: list[FaultRecord] = []
        self.log: list[str] = []

    def _say(self, text: str) -> None:
        self.log.append(f"{self.clock():8.3f}  {text}")

    async def _sh(self, fn: Any, *args: Any) -> Any:
        """Run a blocking harness call (subprocesses) off the event loop."""
        return await asyncio.to_thread(fn, *args)

    async def run(self, schedule: Sequence[PlannedFault], stop: asyncio.Event) -> None:
        for planned in schedule:
            if not await self._sleep_until(planned.start, stop):
                return
            record = FaultRecord(planned)
            self.records.append(record)
            try:
                await self._inject(record)
                self._say(f"fault {planned.index} {planned.kind} on {record.targets}")
                await self._hold(record, stop)
            finally:
                await self._heal(record)
                record.healed = self.clock()
                self._say(f"healed {planned.index} {planned.kind}")

    async def _sleep_until(self, at: float, stop: asyncio.Event) -> bool:
        delay = at - self.clock()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                return True
        return not stop.is_set()

    async def _hold(self, record: FaultRecord, stop: asyncio.Event) -> None:
        """Wait out the fault window. Storage faults poll the target's health;
        a flapping partition toggles its rules."""
        end = record.planned.end
        storage = record.kind in ("fsync", "disk-full")
        node = self.harness.nodes[record.targets[0]] if storage else None
        flapping = record.kind == "partition-flap"
        cut = True
        next_flip = self.clock() + self.rng.uniform(*FLAP_SECONDS)
        while self.clock() < end and not stop.is_set():
            if node is not None and not record.saw_not_serving and await health(node) == 2:
                # NOT_SERVING: it stopped voting. Keep it so a moment longer.
                self._say(f"{node.name} reports NOT_SERVING")
                record.saw_not_serving = True
                end = min(end, self.clock() + STORAGE_FAULT_LINGER)
            if flapping and self.clock() >= next_flip:
                target = self.harness.nodes[record.targets[0]]
                if cut:
                    await self._sh(self.harness.flush_rules, target)
                else:
                    await self._isolate([target], both_ways=True)
                cut = not cut
                record.flips += 1
                next_flip = self.clock() + self.rng.uniform(*FLAP_SECONDS)
            wake = min(end, self.clock() + 0.2, next_flip if flapping else end)
            await self._sleep_until(wake, stop)

    async def _inject(self, record: FaultRecord) -> None:
        h = self.harness
        planned = record.planned
        leader = await leader_of(h)
        target = planned.target
        if target == LEADER:
            if leader is None:
                target = self.rng.choice(sorted(n for n in h.nodes if n.startswith("proposer-")))
                record.notes.append(f"no leader known; hit {target} instead")
            else:
                target = leader
        record.hit_leader = target == leader
        kind = planned.kind
        # The fault's window starts with its first effect, not after the last.
        record.started = self.clock()
        if kind == "loss":
            record.targets = sorted(h.nodes)
            await self._lose(list(h.nodes.values()), str(planned.params["probability"]))
            return
        record.targets = [target]
        node = h.nodes[target]
        signals = {"kill": h.kill, "kill-leader": h.kill, "pause": h.pause, "pause-leader": h.pause}
        if kind in signals:
            await self._sh(signals[kind], node)
        elif kind in ("partition-leader", "partition-flap"):
            await self._isolate([node], both_ways=True)
        elif kind == "partition-majority":
            minority = [h.nodes[n] for n in planned.params["minority"]]
            record.targets = [n.name for n in minority]
            record.hit_leader = leader in record.targets
            await self._isolate(minority, both_ways=True)
        elif kind == "partition-one-way":
            await self._isolate([node], both_ways=False)
            record.notes.append(f"{target} hears nobody; its packets still go out")
        elif kind == "split-brain":
            await self._split_brain(record, node, h.nodes[planned.params["learner"]])
        elif kind == "learner-wipe":
            await self._wipe_learner(record, node)
        elif kind == "slow-link":
            await self._sh(h.slow_link, node, int(planned.params["rate_kbit"]))
        elif kind == "clock-jump":
            offset = await self._sh(h.clock_jump, node, float(planned.params["jump_seconds"]))
            record.notes.append(f"{target}'s clocks now run {offset:g} s ahead")
        elif kind == "fsync":
            record.incarnation = node.starts
            await self._sh(h.fiu, node, f"enable name={FSYNC_FAILPOINT}")
        elif kind == "disk-full":
            record.incarnation = node.starts
            written = await self._sh(h.fill_disk, node)
            record.notes.append(f"filled {target}'s tmpfs with {written} bytes")
        else:
            raise ValueError(kind)

    async def _wipe_learner(self, record: FaultRecord, node: Node) -> None:
        """SIGKILL ``node`` and delete its volume, when the log below the
        compaction point survives elsewhere: every other learner serves with
        a snapshot at or above every acceptor's compaction point. Otherwise
        (a majority of learners' volumes would be gone) only the kill."""
        h = self.harness
        others = [n for n in h.nodes.values() if n.role == "learner" and n is not node]
        acceptors = [n for n in h.nodes.values() if n.role == "acceptor"]
        point = max([await _status_field(n, "acceptor", "compacted_through") for n in acceptors])
        held = [await _status_field(n, "learner", "snapshot_index") for n in others]
        await self._sh(h.kill, node)
        if others and all(index >= point for index in held):
            gone = await self._sh(h.wipe, node)
            record.notes.append(
                f"wiped {node.name}'s volume ({', '.join(gone) or 'empty'}); compaction point "
                f"{point}, other learners' snapshots {held}"
            )
        else:
            record.notes.append(
                f"only killed {node.name}: the other learners' snapshots {held} do not all "
                f"cover the compaction point {point}"
            )

    async def _split_brain(self, record: FaultRecord, old: Node, mine: Node) -> None:
        """Cut {old, mine} from {the other proposers, the other learners}, both
        ways, with TCP resets (a call across fails at once, so each learner
        settles on the proposer of its own half quickly); everyone keeps the
        acceptors. Then pause ``old`` until another proposer says it leads
        (with pre-vote nobody takes over while ``old`` keeps getting values
        accepted), and continue it: it still believes it leads.

        Correct acceptors reject ``old``'s next Accept (the new leader's
        promise is higher) and it steps down; acceptors that ignore their
        promises (``--broken-acceptor promise-lower``) let both halves choose
        values for the same instances."""
        h = self.harness
        half = [old, mine]
        rest = [n for n in h.nodes.values() if n.role != "acceptor" and n not in half]
        rules: dict[str, list[str]] = {n.name: [] for n in (*half, *rest)}
        for a in half:
            for b in rest:
                if a.role == "learner" and b.role == "learner":
                    continue  # learners never talk to each other
                for here, there in ((a, b), (b, a)):
                    rules[here.name] += [
                        f"-A INPUT -s {there.ip} -p tcp -j REJECT --reject-with tcp-reset",
                        f"-A INPUT -s {there.ip} -j DROP",
                    ]
        record.targets = [old.name, *(n for n in rules if n != old.name)]
        await asyncio.gather(
            *(self._sh(h.add_rules, h.nodes[name], lines) for name, lines in rules.items())
        )
        await self._sh(h.pause, old)
        paused = self.clock()
        new: str | None = None
        while self.clock() - paused < SPLIT_BRAIN_TAKEOVER:
            new = await leader_of(h)
            if new is not None and new != old.name:
                break
            await asyncio.sleep(0.1)
        await self._sh(h.resume, old)
        waited = self.clock() - paused
        if new is not None and new != old.name:
            record.notes.append(
                f"{old.name} (with {mine.name}) paused until {new} led, {waited:.2f} s; "
                "then continued"
            )
        else:
            record.notes.append(f"nobody took over from {old.name} in {waited:.2f} s")

    async def _isolate(self, side: Sequence[Node], *, both_ways: bool) -> None:
        """Rules in each node of ``side``: drop what comes from every node not
        in ``side`` (and, ``both_ways``, what goes to it). The hub (the
        clients) stays reachable."""
        names = {n.name for n in side}
        others = [n for n in self.harness.nodes.values() if n.name not in names]
        jobs = []
        for node in side:
            rules = [f"-A INPUT -s {peer.ip} -j DROP" for peer in others]
            if both_ways:
                rules += [f"-A OUTPUT -d {peer.ip} -j DROP" for peer in others]
            jobs.append(self._sh(self.harness.add_rules, node, rules))
        await asyncio.gather(*jobs)

    async def _lose(self, nodes: Sequence[Node], probability: str) -> None:
        """Each node drops that share of the packets it gets from other nodes
        (never from the hub: the clients see no loss of their own)."""
        rules = [
            f"-A INPUT -s {HUB_IP} -j ACCEPT",
            f"-A INPUT -s {SUBNET}.0/24 -m statistic --mode random "
            f"--probability {probability} -j DROP",
        ]
        await asyncio.gather(*(self._sh(self.harness.add_rules, n, rules) for n in nodes))

    async def _heal(self, record: FaultRecord) -> None:
        h = self.harness
        kind = record.kind
        nodes = [h.nodes[n] for n in record.targets]
        if kind.startswith("partition") or kind in ("loss", "split-brain"):
            await asyncio.gather(*(self._sh(h.flush_rules, node) for node in nodes))
            if kind == "split-brain":
                await self._sh(h.resume, nodes[0])
        elif kind in ("kill", "kill-leader", "learner-wipe"):
            for node in nodes:
                if not node.alive():
                    await self._sh(h.start, node)
        elif kind in ("pause", "pause-leader"):
            for node in nodes:
                await self._sh(h.resume, node)
        elif kind == "slow-link":
            for node in nodes:
                await self._sh(h.fast_link, node)
        elif kind in ("fsync", "disk-full"):
            node = nodes[0]
            if kind == "disk-full":
                await self._sh(h.free_disk, node)
            # A storage failure makes the acceptor stop for good: it must be
            # restarted (from the same file) to vote again.
            await self._sh(h.kill, node)
            await self._sh(h.start, node)

    async def heal_all(self) -> None:
        """Whatever state the run was left in: no rules, no pauses, no full
        disk, every node running."""
        h = self.harness
        for node in h.nodes.values():
            await self._sh(h.flush_rules, node)
            await self._sh(h.free_disk, node)
            await self._sh(h.resume, node)
            await self._sh(h.fast_link, node)
            if not node.alive():
                await self._sh(h.start, node)


class Clock:
    """Seconds since the run's start (monotonic); shared by clients and nemesis."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0
