"""Schema and structure of the rendered manifests, for every kustomization.

Each test names a way consensus deployments on Kubernetes are known to fail
(pod IPs that change, probes that kill slow nodes, rolling updates that take
a quorum down, ...) and checks that the manifests rule it out.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import PurePosixPath

import pytest
import yaml

from . import manifests as mf

VALIDATE_VERSIONS = [
    # The oldest Kubernetes with GA gRPC probes, and the newest schema we have.
    "1.27.0",
    "1.37.0",
]
ROLES = tuple(mf.READINESS_SERVICE)
IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")
CERT_MANAGER_EXAMPLE = mf.K8S / "cert-manager" / "example.yaml"


@pytest.fixture(params=list(mf.KUSTOMIZATIONS))
def m(request: pytest.FixtureRequest, rendered: dict[str, mf.Manifests]) -> mf.Manifests:
    return rendered[request.param]


def env_of(m: mf.Manifests, sts: mf.Obj, ordinal: int = 0) -> dict[str, str]:
    facts = mf.PodFacts(
        name=f"{sts['metadata']['name']}-{ordinal}",
        namespace=mf.namespace_of(sts),
        ip="10.244.0.10",
        labels=mf.pod_labels(sts, ordinal),
    )
    return mf.container_env(m, mf.only_container(sts), facts)


def grpc_port(container: mf.Obj) -> int:
    return mf.container_port(container, "grpc")


def health_port(container: mf.Obj) -> int:
    return mf.container_port(container, "health")


def pod_containers(m: mf.Manifests) -> Iterator[tuple[mf.Obj, mf.Obj]]:
    for sts in m.statefulsets:
        for container in sts["spec"]["template"]["spec"]["containers"]:
            yield sts, container


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# Schema


def test_kubectl_missing_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(mf.ManifestError, match="Install a kubectl client"):
        mf.kubectl()


@pytest.mark.parametrize("version", VALIDATE_VERSIONS)
@pytest.mark.parametrize("kustomization", list(mf.KUSTOMIZATIONS))
def test_kubernetes_validate_strict(kustomization: str, version: str) -> None:
    """`kubectl kustomize DIR | kubernetes-validate --strict -`: unknown or
    misspelt fields (publishNotReadyAdresses), a named port in a gRPC probe,
    wrong types."""
    validate = shutil.which("kubernetes-validate", path=str(mf.REPO / ".venv" / "bin"))
    validate = validate or shutil.which("kubernetes-validate")
    if validate is None:
        pytest.fail("kubernetes-validate is missing: pip install kubernetes-validate", False)
    kubectl = subprocess.Popen(
        [mf.kubectl(), "kustomize", str(mf.KUSTOMIZATIONS[kustomization])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert kubectl.stdout is not None
    check = subprocess.run(
        [validate, "--strict", "--quiet", "-k", version, "-"],
        stdin=kubectl.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    kubectl.stdout.close()
    _, kubectl_err = kubectl.communicate(timeout=60)
    assert kubectl.returncode == 0, kubectl_err.decode()
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_object_is_namespaced_consistently(m: mf.Manifests) -> None:
    spaces = {mf.namespace_of(o) for o in m.objects if o["kind"] != "Namespace"}
    assert len(spaces) == 1, f"objects spread over namespaces {spaces}"


# ---------------------------------------------------------------------------
# Identity and addressing


def test_each_role_is_one_parallel_statefulset(m: mf.Manifests) -> None:
    """Proposer ids must be unique for ballots and acceptor ids are the
    membership: both come from StatefulSet ordinals. Parallel start, because
    a new cluster needs a quorum up before any acceptor is useful."""
    assert sorted(mf.role_of(s) for s in m.statefulsets) == sorted(ROLES)
    for sts in m.statefulsets:
        assert sts["spec"].get("podManagementPolicy") == "Parallel", sts["metadata"]["name"]


def test_pod_id_comes_from_the_pod_name(m: mf.Manifests) -> None:
    """PAXOS_ID is the downward-API pod name, so pod <sts>-<i> runs as id i."""
    for sts in m.statefulsets:
        (var,) = [v for v in mf.only_container(sts).get("env", []) if v["name"] == "PAXOS_ID"]
        field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        assert field in ("metadata.name", "metadata.labels['apps.kubernetes.io/pod-index']")
        for ordinal in range(mf.replicas(sts)):
            pod_id = env_of(m, sts, ordinal)["PAXOS_ID"]
            assert re.fullmatch(rf"(.*-)?{ordinal}", pod_id), pod_id


def test_headless_services_publish_not_ready_addresses(m: mf.Manifests) -> None:
    """Peers are found by stable DNS names. The names must exist before the
    pods are ready: readiness says whether an acceptor votes, not whether it
    can be reached."""
    for sts in m.statefulsets:
        svc = mf.governing_service(m, sts)
        assert svc["spec"].get("publishNotReadyAddresses") is True, svc["metadata"]["name"]


def test_client_services_front_proposers_and_learners(m: mf.Manifests) -> None:
    for role in ("proposer", "learner"):
        svc, port = mf.client_service(m, role)
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        container = mf.only_container(mf.sts_of_role(m, role))
        (spec_port,) = svc["spec"]["ports"]
        assert mf.container_port(container, spec_port["targetPort"]) == grpc_port(container)
        assert port > 0


def _peer_list(m: mf.Manifests, env: dict[str, str], key: str, role: str) -> None:
    """`key` names every pod of `role`, by a DNS name of that pod, in ordinal order."""
    target = mf.sts_of_role(m, role)
    mf.governing_service(m, target)  # which is what makes these names exist
    subdomain = target["spec"]["serviceName"]
    entries = env[key].split(",")
    assert len(entries) == mf.replicas(target), f"{key}={env[key]}: one entry per {role} replica"
    for ordinal, entry in enumerate(entries):
        host, port = host_port(entry)
        pod = f"{target['metadata']['name']}-{ordinal}"
        names = mf.pod_dns_names(pod, subdomain, mf.namespace_of(target))
        assert host in names, f"{key} entry {ordinal} is {host!r}; expected one of {names}"
        assert port == grpc_port(mf.only_container(target))


def test_peer_lists_name_every_acceptor_and_learner_in_ordinal_order(m: mf.Manifests) -> None:
    """Acceptor i runs with id i, so the i-th entry of PAXOS_ACCEPTORS must be
    pod paxos-acceptor-i; and the list must match the replica count. The
    acceptors have it too: it is how they know their peers (identity safety)."""
    for role in ("acceptor", "proposer", "learner"):
        _peer_list(m, env_of(m, mf.sts_of_role(m, role)), "PAXOS_ACCEPTORS", "acceptor")
    # The learners read the list too: where a learner with a new or lost
    # volume fetches a snapshot.
    for role in ("proposer", "learner"):
        _peer_list(m, env_of(m, mf.sts_of_role(m, role)), "PAXOS_LEARNERS", "learner")


def test_at_least_two_learners_hold_the_compacted_log(m: mf.Manifests) -> None:
    """Below the compaction point the log lives only in the learners'
    snapshots (a majority of them): with one learner, losing its volume
    would lose it."""
    assert mf.replicas(mf.sts_of_role(m, "learner")) >= 2


def test_proposer_list_matches_the_proposer_replicas(m: mf.Manifests) -> None:
    """PAXOS_PROPOSERS turns on the replicated log. Proposer i runs with id i
    and must find itself at position i; one with no entry (replicas raised,
    list not) refuses to start; an entry with no pod (list raised, replicas
    not) gets heartbeats and redirects that go nowhere. So the list names
    every proposer pod in ordinal order, one entry per replica, and the
    proposers and the learners (which append KV commands through the
    leader) read the same list."""
    lists = {}
    for role in ("proposer", "learner"):
        env = env_of(m, mf.sts_of_role(m, role))
        assert "PAXOS_PROPOSERS" in env, f"the {role}s have no PAXOS_PROPOSERS"
        _peer_list(m, env, "PAXOS_PROPOSERS", "proposer")
        lists[role] = env["PAXOS_PROPOSERS"]
    assert lists["proposer"] == lists["learner"], lists
    # Every ordinal sees the same list, its own entry included.
    proposers = mf.sts_of_role(m, "proposer")
    for ordinal in range(mf.replicas(proposers)):
        assert env_of(m, proposers, ordinal)["PAXOS_PROPOSERS"] == lists["proposer"]


def _configmaps_used_by(m: mf.Manifests, sts: mf.Obj) -> set[str]:
    container = mf.only_container(sts)
    names = {s["configMapRef"]["name"] for s in container.get("envFrom") or []}
    for var in container.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            names.add(ref["name"])
    return names


def test_scaling_proposers_or_learners_never_rolls_the_acceptors(m: mf.Manifests) -> None:
    """Generated ConfigMap names carry a hash of all their data, so a changed
    key rolls every pod that uses that ConfigMap. The lists that change when
    proposers or learners are scaled must not sit in one the acceptors use:
    an acceptor roll is a needless risk to the quorum."""
    acceptor = mf.sts_of_role(m, "acceptor")
    for name in _configmaps_used_by(m, acceptor):
        data = m.configmap_data(name, mf.namespace_of(acceptor)) or {}
        for key in ("PAXOS_PROPOSERS", "PAXOS_LEARNERS"):
            assert key not in data, f"the acceptors use ConfigMap {name}, which holds {key}"


def test_learners_serve_the_key_value_store(m: mf.Manifests) -> None:
    """With PAXOS_DB a learner keeps a KV replica and serves KvService; it then
    needs PAXOS_PROPOSERS (the server refuses to start without it)."""
    env = env_of(m, mf.sts_of_role(m, "learner"))
    assert env.get("PAXOS_DB", "").strip(), "learners without PAXOS_DB serve no KV store"
    assert env.get("PAXOS_PROPOSERS", "").strip()


def test_no_ip_literals_in_configuration(m: mf.Manifests) -> None:
    """Pod IPs change on every reschedule; peers must be DNS names."""
    for sts in m.statefulsets:
        for key, value in env_of(m, sts).items():
            if key.endswith("_LISTEN"):  # PAXOS_LISTEN, PAXOS_HEALTH_LISTEN, ...
                host, _ = host_port(value)
                assert host in ("0.0.0.0", "::"), f"listen on all interfaces, not {host}"
                continue
            assert not IPV4.search(value), f"{sts['metadata']['name']} {key}={value}"
            for entry in value.split(","):
                if ":" in entry:
                    assert not is_ip(host_port(entry)[0]), f"{sts['metadata']['name']} {key}"
    for cm in m.of_kind("ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not IPV4.search(str(value)), f"ConfigMap {cm['metadata']['name']} {key}"


def test_servers_listen_on_the_probed_port(m: mf.Manifests) -> None:
    """The kubelet probes the pod IP, so the server must listen on all
    interfaces: gRPC (mutual TLS) on the `grpc` port, and health alone, in
    plaintext, on the `health` port the probes use."""
    for sts in m.statefulsets:
        env, container = env_of(m, sts), mf.only_container(sts)
        for key, port in (
            ("PAXOS_LISTEN", grpc_port(container)),
            ("PAXOS_HEALTH_LISTEN", health_port(container)),
        ):
            host, listen_port = host_port(env[key])
            assert host in ("0.0.0.0", "::"), f"{sts['metadata']['name']} {key}"
            assert listen_port == port, f"{sts['metadata']['name']} {key}"
        assert health_port(container) != grpc_port(container)


def test_acceptors_have_a_cluster_id(m: mf.Manifests) -> None:
    """Acceptors record the cluster id, so a volume from
    another cluster is recognised; it comes from the shared ConfigMap."""
    sts = mf.sts_of_role(m, "acceptor")
    (var,) = [v for v in mf.only_container(sts)["env"] if v["name"] == "PAXOS_CLUSTER_ID"]
    assert "configMapKeyRef" in var.get("valueFrom", {})
    assert env_of(m, sts)["PAXOS_CLUSTER_ID"].strip()


# ---------------------------------------------------------------------------
# Probes


def test_probes_are_numeric_grpc_with_distinct_services(m: mf.Manifests) -> None:
    """gRPC probes, on the plaintext health-only port: the kubelet's gRPC
    probe cannot do TLS (let alone present a client certificate), and an
    exec probe would start a Python process every few seconds in each pod."""
    for sts, container in pod_containers(m):
        role = mf.role_of(sts)
        port = health_port(container)
        services = {}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            if probe is None:
                assert kind == "startupProbe", f"{role}: {kind} missing"
                continue
            assert set(probe) & {"httpGet", "tcpSocket", "exec"} == set(), f"{role} {kind}"
            grpc = probe["grpc"]
            # A named port is rejected by the API server for gRPC probes.
            assert type(grpc["port"]) is int, f"{role} {kind}: grpc.port must be a number"
            assert grpc["port"] == port
            services[kind] = grpc.get("service", "")
        assert services["readinessProbe"] == mf.READINESS_SERVICE[role]
        assert services["livenessProbe"] == mf.LIVENESS_SERVICE
        assert services.get("startupProbe", mf.LIVENESS_SERVICE) == mf.LIVENESS_SERVICE
        assert services["readinessProbe"] != services["livenessProbe"]


def _window(probe: mf.Obj) -> int:
    """Seconds of consecutive failures before the probe acts."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def test_liveness_does_not_kill_slow_nodes(m: mf.Manifests) -> None:
    """A node slow to fsync is taken out of rotation by readiness long
    before liveness would restart it."""
    for sts, container in pod_containers(m):
        liveness, readiness = container["livenessProbe"], container["readinessProbe"]
        name = sts["metadata"]["name"]
        assert _window(liveness) >= 60, f"{name}: liveness acts after {_window(liveness)}s"
        assert int(liveness.get("timeoutSeconds", 1)) >= 5, name
        assert _window(readiness) < _window(liveness), name


# ---------------------------------------------------------------------------
# Storage, disruption and upgrades


@pytest.mark.parametrize("role", ["acceptor", "learner"])
def test_database_is_on_its_own_persistent_volume(m: mf.Manifests, role: str) -> None:
    """An acceptor's promises, and a learner's KV replica with its applied
    instance, must survive a restart or a reschedule: each pod's PAXOS_DB is
    on its own ReadWriteOnce claim, and claims are never deleted for it."""
    sts = mf.sts_of_role(m, role)
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    db = env_of(m, sts)["PAXOS_DB"]
    (mount,) = [
        vm
        for vm in mf.only_container(sts)["volumeMounts"]
        if db.startswith(vm["mountPath"].rstrip("/") + "/")
    ]
    assert mount["name"] in claims, f"PAXOS_DB={db} is not on a volumeClaimTemplate"
    assert not mount.get("readOnly")
    assert claims[mount["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    policy = sts["spec"].get("persistentVolumeClaimRetentionPolicy", {})
    assert policy.get("whenDeleted", "Retain") == "Retain"
    assert policy.get("whenScaled", "Retain") == "Retain"


def test_pod_disruption_budgets(m: mf.Manifests) -> None:
    """A drain may take one acceptor, never two; no budget blocks drains
    for ever."""
    pdbs = m.of_kind("PodDisruptionBudget")
    for sts in m.statefulsets:
        labels = mf.pod_labels(sts, 0)
        mine = [
            p
            for p in pdbs
            if mf.namespace_of(p) == mf.namespace_of(sts)
            and mf.selects(p["spec"]["selector"].get("matchLabels"), labels)
        ]
        assert len(mine) == 1, f"{sts['metadata']['name']}: {len(mine)} PodDisruptionBudgets"
        spec = mine[0]["spec"]
        if mf.role_of(sts) == "acceptor":
            assert spec.get("maxUnavailable") == 1
        elif "maxUnavailable" in spec:
            assert int(spec["maxUnavailable"]) >= 1
        else:
            assert int(spec["minAvailable"]) < mf.replicas(sts)


def test_acceptor_upgrades_go_one_at_a_time(m: mf.Manifests) -> None:
    sts = mf.sts_of_role(m, "acceptor")
    strategy = sts["spec"].get("updateStrategy", {"type": "RollingUpdate"})
    assert strategy["type"] == "RollingUpdate"
    assert strategy.get("rollingUpdate", {}).get("maxUnavailable", 1) == 1


def test_pods_spread_over_nodes(m: mf.Manifests) -> None:
    for sts in m.statefulsets:
        anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert mf.selects(selector, mf.pod_labels(sts, 0))


def test_grace_period_outlasts_the_server_drain(m: mf.Manifests) -> None:
    """SIGKILL must not cut the graceful shutdown short."""
    for sts in m.statefulsets:
        period = int(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
        server = mf.shutdown_grace(env_of(m, sts))
        assert period >= server + 5, f"{sts['metadata']['name']}: {period}s vs drain {server}s"


# ---------------------------------------------------------------------------
# Resources and security


def test_requests_and_limits(m: mf.Manifests) -> None:
    for sts, container in pod_containers(m):
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in container["resources"][kind], f"{sts['metadata']['name']}"


def test_security_context(m: mf.Manifests, image: mf.Image) -> None:
    for sts, container in pod_containers(m):
        name = sts["metadata"]["name"]
        pod = sts["spec"]["template"]["spec"]
        psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, name
        # The same non-root uid the image runs as.
        assert psc.get("runAsUser") == image.uid != 0, name
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", name
        assert csc.get("allowPrivilegeEscalation") is False, name
        assert csc.get("readOnlyRootFilesystem") is True, name
        assert "ALL" in csc.get("capabilities", {}).get("drop", []), name
        assert not csc.get("privileged"), name
        assert pod.get("automountServiceAccountToken") is False, name
        # Service links would put PAXOS_<SERVICE>_* variables in the
        # server's own configuration namespace.
        assert pod.get("enableServiceLinks") is False, name
        mounts = {vm["mountPath"] for vm in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: no writable /tmp on a read-only root"
    # Pods with volumes (acceptors, learners) can write to them.
    for sts in m.statefulsets:
        if sts["spec"].get("volumeClaimTemplates"):
            pod = sts["spec"]["template"]["spec"]
            assert pod["securityContext"].get("fsGroup") == image.gid, sts["metadata"]["name"]
    for role in ("acceptor", "learner"):
        assert mf.sts_of_role(m, role)["spec"].get("volumeClaimTemplates"), role


def test_overlay_keeps_the_acceptor_membership(rendered: dict[str, mf.Manifests]) -> None:
    """The example overlay scales proposers and learners, not acceptors."""
    base = mf.sts_of_role(rendered["base"], "acceptor")
    example = mf.sts_of_role(rendered["example"], "acceptor")
    assert mf.replicas(base) == mf.replicas(example) == 3
    assert mf.namespace_of(example) != "default"


# ---------------------------------------------------------------------------
# TLS and metrics


def test_every_server_uses_mutual_tls_from_a_secret(m: mf.Manifests) -> None:
    """No plaintext between roles. Each server gets PAXOS_TLS_* (never
    PAXOS_INSECURE), pointing at the files of a read-only Secret volume in
    cert-manager's layout (ca.crt, tls.crt, tls.key), and the pod's user can
    read the key: the Secret's mode gives the group read, and the pod's
    fsGroup is that group (the kubelet makes the files root:fsGroup)."""
    for sts, container in pod_containers(m):
        name = sts["metadata"]["name"]
        env = env_of(m, sts)
        assert "PAXOS_INSECURE" not in env, name
        files = [env["PAXOS_TLS_CA"], env["PAXOS_TLS_CERT"], env["PAXOS_TLS_KEY"]]
        directories = {str(PurePosixPath(f).parent) for f in files}
        assert len(directories) == 1, f"{name}: TLS files in {directories}"
        assert [PurePosixPath(f).name for f in files] == list(mf.TLS_FILES), name
        (mount,) = [vm for vm in container["volumeMounts"] if vm["mountPath"] in directories]
        assert mount.get("readOnly") is True, name
        pod = sts["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        secret = volume["secret"]
        assert secret["secretName"] == mf.PEER_TLS_SECRET, name
        assert not secret.get("optional"), f"{name}: a missing Secret must stop the pod"
        mode = int(secret.get("defaultMode", 0o644))
        assert mode & 0o040 and not mode & 0o007, f"{name}: key mode {mode:o}"
        assert pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsGroup"]


def test_metrics_are_served_and_announced(m: mf.Manifests) -> None:
    """Every pod serves Prometheus metrics on its `metrics` port and says so
    in the conventional prometheus.io annotations."""
    for sts, container in pod_containers(m):
        name = sts["metadata"]["name"]
        port = mf.container_port(container, "metrics")
        host, listen_port = host_port(env_of(m, sts)["PAXOS_METRICS_LISTEN"])
        assert (host, listen_port) == ("0.0.0.0", port), name
        annotations = sts["spec"]["template"]["metadata"].get("annotations") or {}
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(port), name
        assert annotations.get("prometheus.io/path") == "/metrics", name


def _cert_manager_objects() -> list[mf.Obj]:
    return [d for d in yaml.safe_load_all(CERT_MANAGER_EXAMPLE.read_text()) if d]


def test_cert_manager_example_matches_the_example_overlay(
    rendered: dict[str, mf.Manifests],
) -> None:
    """k8s/cert-manager/example.yaml issues the Secret the example overlay
    mounts, in its namespace, with the peer role, for every name a peer or a
    client in the namespace dials (the short pod names in the peer lists,
    which a wildcard cannot cover, and the client Services), plus a client
    certificate."""
    m = rendered["example"]
    namespace = mf.namespace_of(mf.sts_of_role(m, "acceptor"))
    objects = _cert_manager_objects()
    assert all(o["metadata"].get("namespace") == namespace for o in objects)
    certificates = {
        o["spec"]["secretName"]: o["spec"] for o in objects if o["kind"] == "Certificate"
    }
    peer = certificates[mf.PEER_TLS_SECRET]
    assert peer["subject"]["organizationalUnits"] == ["peer"]
    assert {"server auth", "client auth"} <= set(peer["usages"])
    env = {}
    for sts in m.statefulsets:
        env.update(env_of(m, sts))
    dialled = {
        host_port(entry)[0]
        for key in ("PAXOS_ACCEPTORS", "PAXOS_PROPOSERS", "PAXOS_LEARNERS")
        for entry in env[key].split(",")
    }
    dialled |= {
        mf.client_service(m, role)[0]["metadata"]["name"] for role in ("proposer", "learner")
    }
    missing = dialled - set(peer["dnsNames"])
    assert not missing, f"the peer certificate does not name {sorted(missing)}"
    clients = [
        c for c in certificates.values() if c["subject"].get("organizationalUnits") == ["client"]
    ]
    assert len(clients) == 1 and "server auth" not in clients[0]["usages"]
    issuers = {o["metadata"]["name"] for o in objects if o["kind"] == "Issuer"}
    assert all(c["issuerRef"]["name"] in issuers for c in certificates.values())
