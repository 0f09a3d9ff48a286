"""Boot simulation: the rendered manifests, started as real processes.

Every replica of every StatefulSet runs as its own process in its own network
namespace, with the env and argv Kubernetes would give it (see netsim for what
is and is not simulated). The tests then do what the kubelet and a client
would: probe each pod, propose through the proposers' client Service, read
back through the learners' client Service, and use the key-value store
through that Service with the real grpcurl, as k8s/README.md shows.

Every pod serves with mutual TLS, from the Secret the manifests mount (made
with `paxos certs`, see conftest.make_certificates); the client in these
tests presents the client certificate, and the kubelet's probes go to the
plaintext health-only port.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from pathlib import Path

import pytest

from . import manifests as mf
from . import netsim

#: How long all pods of a cluster may take to pass every probe.
BOOT_WAIT = 30.0


def tls_flags(cluster: netsim.Cluster) -> list[str]:
    """`paxos` client flags for the client certificate."""
    assert cluster.client_tls is not None
    ca, cert, key = (str(cluster.client_tls / name) for name in mf.TLS_FILES)
    return ["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key]


def grpcurl_tls(cluster: netsim.Cluster) -> list[str]:
    """grpcurl's flags for the client certificate (instead of -plaintext)."""
    assert cluster.client_tls is not None
    ca, cert, key = (str(cluster.client_tls / name) for name in mf.TLS_FILES)
    return ["-cacert", ca, "-cert", cert, "-key", key]


def propose(cluster: netsim.Cluster, instance: int, value: str) -> str:
    svc, port = mf.client_service(cluster.manifests, "proposer")
    proc = cluster.client(
        [
            "paxos",
            "propose",
            *tls_flags(cluster),
            "--proposer",
            f"{svc['metadata']['name']}:{port}",
            str(instance),
            value,
        ]
    )
    assert proc.returncode == 0, f"propose failed: {proc.stderr}\n{cluster.logs()}"
    return proc.stdout.strip()


def get(cluster: netsim.Cluster, instance: int) -> str:
    svc, port = mf.client_service(cluster.manifests, "learner")
    proc = cluster.client(
        [
            "paxos",
            "get",
            *tls_flags(cluster),
            "--learner",
            f"{svc['metadata']['name']}:{port}",
            str(instance),
        ]
    )
    assert proc.returncode == 0, f"get failed: {proc.stderr}\n{cluster.logs()}"
    return proc.stdout.strip()


def grpcurl(
    cluster: netsim.Cluster, address: str, method: str, request: dict[str, object]
) -> dict[str, object]:
    """One unary call with the real grpcurl from the client namespace (server
    reflection, no proto files), as k8s/README.md shows it. `method` is
    Service/Method; the reply is grpcurl's JSON (bytes as base64, uint64 as
    strings)."""
    proc = cluster.client(
        [
            "grpcurl",
            *grpcurl_tls(cluster),
            *("-max-time", "20", "-d", json.dumps(request)),
            address,
            method,
        ],
        timeout=40,
    )
    assert proc.returncode == 0, (
        f"grpcurl {method} {request} to {address} failed: {proc.stderr}\n{cluster.logs()}"
    )
    reply: dict[str, object] = json.loads(proc.stdout or "{}")
    return reply


def learner_client(cluster: netsim.Cluster) -> str:
    svc, port = mf.client_service(cluster.manifests, "learner")
    return f"{svc['metadata']['name']}:{port}"


def kv_get(cluster: netsim.Cluster, address: str, key: str, *, stale: bool = False) -> str | None:
    """The value of `key` (decoded) through KvService/Get, or None if absent.
    A default Get goes through the log (linearizable); a stale one is served
    from this learner's own replica."""
    request: dict[str, object] = {"key": key}
    if stale:
        request["stale"] = True
    reply = grpcurl(cluster, address, f"{mf.KV_SERVICE}/Get", request)
    if not reply.get("found"):
        return None
    kv = reply["kv"]
    assert isinstance(kv, dict) and kv.get("key") == key, reply
    return base64.b64decode(str(kv.get("value", ""))).decode()


def grpc_port(pod: netsim.Pod) -> int:
    return mf.container_port(pod.container, "grpc")


def health_port(pod: netsim.Pod) -> int:
    return mf.container_port(pod.container, "health")


def prepare(cluster: netsim.Cluster, pod: netsim.Pod, instance: int) -> dict[str, object]:
    """A peer's Prepare (round 2**32, proposer 7) straight to the pod's IP,
    over mutual TLS with the peer certificate: what a proposer sends,
    whether the pod is ready or not."""
    peer = cluster.secrets[mf.PEER_TLS_SECRET]
    name = f"{pod.name}.{pod.sts['spec']['serviceName']}"
    address = f"{pod.ip}:{grpc_port(pod)}"
    ballot = [str(2**32), "7"]
    reply = cluster.hub_run(
        ["prepare", "--tls", str(peer), "--server-name", name, address, str(instance), *ballot]
    )
    answer: dict[str, object] = json.loads(reply.stdout or "{}")
    assert answer, reply.stderr
    return answer


def db_on_its_volume(cluster: netsim.Cluster, pod: netsim.Pod) -> Path:
    """Where the pod's PAXOS_DB really is: the file on its PersistentVolume."""
    db = Path(cluster.env_of(pod)["PAXOS_DB"])
    (mount,) = [vm for vm in pod.container["volumeMounts"] if db.is_relative_to(vm["mountPath"])]
    return pod.claim_dir(mount["name"]) / db.relative_to(mount["mountPath"])


def check_key_value_store(cluster: netsim.Cluster) -> None:
    """The replicated log and the KV store, as k8s/README.md shows them: a Put
    and a Get through the learners' client Service with grpcurl, a read
    through every learner, a learner restart that keeps the data (its volume),
    and a learner that lost its volume rebuilding it from the acceptors."""
    learners = [p for p in cluster.pods.values() if p.role == "learner"]
    client = learner_client(cluster)

    # Every learner serves the KV store and reports its health, and
    # reflection lists it (grpcurl needs that).
    targets = [f"{p.name}/kv={p.ip}:{health_port(p)}/{mf.KV_SERVICE}@3" for p in learners]
    health = cluster.hub_run(["probe", "--wait", "10", *targets])
    assert health.returncode == 0, health.stdout + health.stderr
    listing = cluster.client(["grpcurl", *grpcurl_tls(cluster), client, "list"])
    assert mf.KV_SERVICE in listing.stdout.split(), listing.stdout + listing.stderr

    # Put through whichever learner the Service picks: the learner appends
    # the command through the leader proposer (PAXOS_PROPOSERS).
    value = base64.b64encode(b"hello").decode()
    put = grpcurl(cluster, client, f"{mf.KV_SERVICE}/Put", {"key": "greeting", "value": value})
    assert int(str(put.get("revision", 0))) >= 1, put
    assert kv_get(cluster, client, "greeting") == "hello"
    # Every learner has it: each one's default Get goes through the log.
    for pod in learners:
        address = f"{pod.name}.{pod.sts['spec']['serviceName']}:{grpc_port(pod)}"
        assert kv_get(cluster, address, "greeting") == "hello", pod.name

    # Each learner's replica is on its own persistent volume.
    for pod in learners:
        assert db_on_its_volume(cluster, pod).is_file(), f"{pod.name}: PAXOS_DB not on its volume"

    # Restart the learner behind the Service. Stop the acceptors too while it
    # starts, so that nothing can be replayed from them: a key it still has
    # came from its volume, with the applied instance it had reached.
    learner = cluster.backend(client.rpartition(":")[0])
    before = grpcurl(cluster, client, f"{mf.KV_SERVICE}/Get", {"key": "greeting", "stale": True})
    applied = int(str(before.get("applied_instance", 0)))
    assert before.get("found") and applied >= 1, before
    acceptors = [p for p in cluster.pods.values() if p.role == "acceptor"]
    cluster.stop_many([learner, *acceptors])
    cluster.start(learner)
    cluster.wait_serving([learner], wait=BOOT_WAIT)
    after = grpcurl(cluster, client, f"{mf.KV_SERVICE}/Get", {"key": "greeting", "stale": True})
    assert after.get("found"), f"{learner.name} lost its replica on restart: {after}"
    assert int(str(after.get("applied_instance", 0))) >= applied, (before, after)
    assert kv_get(cluster, client, "greeting", stale=True) == "hello"

    # With the acceptors back, the restarted learner takes part in the log
    # again: a write and a linearizable read through it.
    for pod in acceptors:
        cluster.start(pod)
    cluster.wait_serving(wait=BOOT_WAIT)
    value = base64.b64encode(b"again").decode()
    grpcurl(cluster, client, f"{mf.KV_SERVICE}/Put", {"key": "greeting", "value": value})
    assert kv_get(cluster, client, "greeting") == "again"

    # A learner's volume is a replica, not the truth: one that lost it (the
    # PVC deleted and re-created, as k8s/README.md allows) rebuilds the store
    # from the acceptors.
    cluster.stop(learner)
    cluster.wipe_volumes(learner)
    cluster.start(learner)
    cluster.wait_serving([learner], wait=BOOT_WAIT)
    assert kv_get(cluster, client, "greeting") == "again"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kustomization", list(mf.KUSTOMIZATIONS))
def test_boot_probe_propose_and_read_back(
    kustomization: str, rendered: dict[str, mf.Manifests], boot: netsim.Boot
) -> None:
    cluster = boot(rendered[kustomization])

    # Startup, liveness and readiness probes, as the kubelet sends them.
    cluster.wait_serving(wait=BOOT_WAIT)

    # A client in the namespace reaches the proposers and learners through
    # their client Services' names.
    assert propose(cluster, 1, "hello") == "hello"
    assert get(cluster, 1) == "hello"
    # Without a client certificate, only the probes' health port answers.
    plain = cluster.client(["paxos", "get", "--learner", learner_client(cluster), "1"])
    assert plain.returncode == 1 and "requires TLS" in plain.stderr, plain.stderr

    # Reflection through the client Service, which k8s/README.md's grpcurl
    # commands rely on.
    svc, port = mf.client_service(cluster.manifests, "proposer")
    address = f"{svc['metadata']['name']}:{port}"
    listing = cluster.client(["grpcurl", *grpcurl_tls(cluster), address, "list"])
    assert "paxos_service.v1.ProposerService" in listing.stdout.split(), listing.stderr

    # Each acceptor's database is on its own persistent volume.
    for pod in cluster.pods.values():
        if pod.role == "acceptor":
            assert db_on_its_volume(cluster, pod).is_file(), f"{pod.name}: PAXOS_DB not on it"

    # The replicated log and the key-value store on the learners.
    check_key_value_store(cluster)

    # SIGTERM drains within PAXOS_SHUTDOWN_GRACE, well inside the pods'
    # terminationGracePeriodSeconds, so the kubelet never needs SIGKILL.
    pods = list(cluster.pods.values())
    grace = max(mf.shutdown_grace(cluster.env_of(p)) for p in pods)
    started = time.monotonic()
    cluster.stop_many(pods)
    took = time.monotonic() - started
    codes = netsim.exit_codes(cluster.pods)
    assert all(code is not None and code >= 0 for code in codes.values()), codes
    assert took < grace + 2, f"shutdown took {took:.1f}s, grace is {grace}s"


def test_simulation_enforces_the_read_only_root(
    rendered: dict[str, mf.Manifests], boot: netsim.Boot
) -> None:
    """The boot simulation is only a proof if it can fail. An acceptor whose
    PAXOS_DB is not on its volume lands on the read-only root filesystem and
    must not become ready, and nothing may be written to the host."""
    stray = Path("/var/tmp") / f"paxos-k8s-{uuid.uuid4().hex}.db"
    objects = []
    for obj in copy.deepcopy(rendered["base"].objects):
        if obj["kind"] == "StatefulSet":
            if mf.role_of(obj) != "acceptor":
                continue
            obj["spec"]["replicas"] = 1
            for var in obj["spec"]["template"]["spec"]["containers"][0]["env"]:
                if var["name"] == "PAXOS_DB":
                    var["value"] = str(stray)
        objects.append(obj)
    cluster = boot(mf.Manifests(source="", objects=tuple(objects)))
    (pod,) = cluster.pods.values()
    ready, status = cluster.probe([pod], kinds=["readinessProbe"], wait=3.0)
    assert not ready, f"an acceptor with its database on the read-only root is ready: {status}"
    assert not stray.exists()


class AcceptorVotedWithoutItsState(AssertionError):
    """An acceptor voted although its volume was wiped or is another cluster's."""


def assert_refuses_to_vote(cluster: netsim.Cluster, pod: netsim.Pod) -> str:
    """The acceptor, just restarted, must not vote. Either it refuses to start
    (exits non-zero: the pod crash-loops and is never ready), or it stays
    alive (liveness) but not ready, and refuses Prepare, which proposers send
    by DNS name whether it is ready or not. Returns which of the two."""
    assert pod.process is not None
    deadline = time.monotonic() + BOOT_WAIT
    while True:
        code = pod.process.poll()
        if code is not None:
            assert code != 0, f"{pod.name} exited 0\n{cluster.logs()}"
            return f"refused to start (exit {code})"
        alive, status = cluster.probe([pod], kinds=["startupProbe", "livenessProbe"], wait=0.5)
        if alive:
            break
        assert time.monotonic() < deadline, f"{pod.name} neither up nor exited: {status}"

    # Not ready, for several readiness periods' worth of polling...
    ready, status = cluster.probe([pod], kinds=["readinessProbe"], wait=3.0)
    if ready:
        raise AcceptorVotedWithoutItsState(f"{pod.name} is ready: {status}")
    # ...and no promise to any peer that asks.
    answer = prepare(cluster, pod, 1)
    if "promise" in answer:
        raise AcceptorVotedWithoutItsState(f"{pod.name} promised: {answer}")
    assert answer.get("error") == "UNAVAILABLE" or "reject" in answer, answer
    return "alive, not ready, refuses Prepare"


@pytest.mark.timeout(120)
def test_acceptor_on_another_clusters_volume_refuses_to_vote(
    rendered: dict[str, mf.Manifests], boot: netsim.Boot
) -> None:
    """A volume moved from another cluster (or a PAXOS_CLUSTER_ID that
    changed under it) holds someone else's promises. The id reaches the
    acceptor from the ConfigMap, and the acceptor must not vote with it."""
    cluster = boot(rendered["base"])
    cluster.wait_serving(wait=BOOT_WAIT)
    assert propose(cluster, 1, "hello") == "hello"

    pod = cluster.pods["paxos-acceptor-0"]
    cluster.stop(pod)
    pod.env_override["PAXOS_CLUSTER_ID"] = "some-other-cluster"
    cluster.start(pod)
    assert_refuses_to_vote(cluster, pod)

    # The other two acceptors are still a quorum.
    assert propose(cluster, 2, "world") == "world"


@pytest.mark.timeout(180)
def test_wiped_acceptor_refuses_to_vote_until_recovered(
    rendered: dict[str, mf.Manifests], boot: netsim.Boot
) -> None:
    """An acceptor that lost its volume has forgotten its
    promises; if it voted as its old self, two different values could be
    chosen. After a restart on an empty volume it must not vote until an
    operator recovers it, with the step k8s/README.md documents:

        kubectl exec paxos-acceptor-0 -- paxos acceptor recover
        kubectl delete pod paxos-acceptor-0
    """
    cluster = boot(rendered["base"])
    cluster.wait_serving(wait=BOOT_WAIT)
    assert propose(cluster, 1, "hello") == "hello"

    pod = cluster.pods["paxos-acceptor-0"]
    cluster.stop(pod)
    cluster.wipe_volumes(pod)
    cluster.start(pod)
    assert assert_refuses_to_vote(cluster, pod) == "alive, not ready, refuses Prepare"
    log = pod.log.read_text(errors="replace")
    assert "acceptor 0's data was lost" in log, log
    assert "paxos acceptor recover" in log, log

    # The other two acceptors are still a quorum.
    assert propose(cluster, 2, "world") == "world"

    # The documented recovery step, as `kubectl exec` runs it: inside the pod,
    # with the container's environment (PAXOS_ID, PAXOS_DB, PAXOS_ACCEPTORS,
    # PAXOS_CLUSTER_ID), user and read-only root. (--settle is shortened
    # here; the docs keep the default.)
    recovered = cluster.exec(pod, ["paxos", "acceptor", "recover", "--settle", "1"])
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr + cluster.logs()
    assert "never votes on instances <= 2" in recovered.stdout, recovered.stdout
    # Still not ready until the pod is restarted (`kubectl delete pod`).
    ready, _ = cluster.probe([pod], kinds=["readinessProbe"], wait=0.5)
    assert not ready
    cluster.stop(pod)
    cluster.start(pod)
    cluster.wait_serving([pod], wait=BOOT_WAIT)

    # It abstains where its lost self may have voted, and votes above: with
    # another acceptor down, a new instance needs it.
    assert prepare(cluster, pod, 2) == {"error": "UNAVAILABLE"}
    other = cluster.pods["paxos-acceptor-1"]
    cluster.stop(other)
    assert propose(cluster, 3, "again") == "again"
    # What was chosen before the loss stays chosen.
    cluster.start(other)
    cluster.wait_serving([other], wait=BOOT_WAIT)
    assert propose(cluster, 1, "other") == "hello"
    # The learner (a KV replica) reads instance 1 from the acceptors; its
    # channel to the restarted acceptor may take a moment to reconnect.
    svc, port = mf.client_service(cluster.manifests, "learner")
    deadline = time.monotonic() + BOOT_WAIT
    while True:
        learner = f"{svc['metadata']['name']}:{port}"
        read = cluster.client(["paxos", "get", *tls_flags(cluster), "--learner", learner, "1"])
        if read.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (read.returncode, read.stdout.strip()) == (0, "hello"), read.stderr + cluster.logs()
