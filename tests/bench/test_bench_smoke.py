"""The benchmark end to end, tiny: real clusters, real load processes, the JSON it writes.

Each run is ``python -m paxos_service.bench`` as a user runs it, bounded by a
subprocess timeout, so a hang fails the test instead of stalling the suite.
The etcd comparison needs Debian's etcd-server: it is used if installed, and
installed (as the benchmark itself would) when this runs as root with apt-get.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from paxos_service.bench._etcd import EtcdUnavailable, ensure_etcd
from tests.support.processes import clean_env

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 120


def _bench(out: Path, *args: str) -> tuple[dict[str, Any], str]:
    command = [sys.executable, "-m", "paxos_service.bench", "--out", str(out), *args]
    done = subprocess.run(
        command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads((out / "bench.json").read_text()), done.stdout


def _check_run(run: dict[str, Any]) -> None:
    what = f"{run['target']} {run['op']} c={run['level']}"
    assert run["throughput"] > 0, what
    assert run["ops"] > 0, what
    assert run["errors"] == 0, (what, run["error_samples"])
    lat = run["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], (what, lat)
    # A closed loop of c requests cannot be faster than c / p50 by much.
    assert lat["p50"] < 10_000, (what, lat)
    assert run["cpu_s_total"] > 0, what
    assert all(rss > 0 for rss in run["rss_bytes"].values()), (what, run["rss_bytes"])


def _pids(stderr: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"pid (\d+)", stderr)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (it only waits for its parent to reap it).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_tiny_run_reports_throughput_and_sane_percentiles(tmp_path: Path) -> None:
    report, stdout = _bench(
        tmp_path,
        "--levels", "1,4", "--duration", "2", "--warmup", "0.3", "--ops", "put,get",
        "--keys", "100",  # written once before the gets: keep that short
    )  # fmt: skip
    runs = report["runs"]
    assert {(r["op"], r["level"]) for r in runs} == {
        ("put", 1),
        ("get", 1),
        ("put", 4),
        ("get", 4),
    }
    for run in runs:
        assert run["target"] == "paxos"
        _check_run(run)
        assert set(run["cpu_s"]) == {
            "acceptor-0",
            "acceptor-1",
            "acceptor-2",
            "proposer-0",
            "proposer-1",
            "learner-0",
        }
        if run["op"] == "get":
            assert run["misses"] == 0  # every key was written before the gets
    assert report["ratios_to_etcd"] == []
    memory = report["memory"]
    assert set(memory["rss_bytes_before"]["paxos"]) == set(memory["rss_bytes_after"]["paxos"])
    assert report["disk"]["paxos"]["puts"] >= 100  # the prefill, then the puts
    assert "OPS/S" in stdout and "P99 MS" in stdout
    assert (tmp_path / "bench.txt").read_text().strip() == stdout.split("\nwrote ")[0].strip()
    # The plot (matplotlib comes with the dev install, as `make bench` uses it).
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupt_stops_every_process_it_started(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "paxos_service.bench", "--out", str(tmp_path),
        "--levels", "8", "--duration", "60", "--ops", "put",
    ]  # fmt: skip
    bench = subprocess.Popen(
        command, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert bench.stderr is not None
        for line in bench.stderr:
            lines.append(line)
            if line.startswith("load generators:"):
                break
        pids = _pids("".join(lines))
        assert len(pids) == 6 + 2, lines  # six servers, two load generators
        time.sleep(1.0)  # into the measured run
        bench.send_signal(signal.SIGINT)
        _, rest = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if _alive(pid)] == []
    assert not (tmp_path / "bench.json").exists()


def _ensure_etcd() -> None:
    """etcd is installed, or installed now (this machine and CI are root with
    apt). A failure here is a failure, not a skip: it would hide a broken setup."""
    if shutil.which("etcd") or Path("/usr/bin/etcd").exists():
        return
    assert os.geteuid() == 0 and shutil.which("apt-get"), (
        "etcd is not installed and cannot be apt-installed here (needs root and apt-get)"
    )
    try:
        ensure_etcd()
    except EtcdUnavailable as exc:
        raise AssertionError(f"could not install etcd: {exc}") from exc


def test_compare_etcd_reports_ratios(tmp_path: Path) -> None:
    _ensure_etcd()
    report, stdout = _bench(
        tmp_path,
        "--levels", "4", "--duration", "1", "--warmup", "0.3", "--ops", "put", "--compare", "etcd",
    )  # fmt: skip
    assert {r["target"] for r in report["runs"]} == {"paxos", "etcd"}
    for run in report["runs"]:
        _check_run(run)
    etcd = next(r for r in report["runs"] if r["target"] == "etcd")
    assert set(etcd["cpu_s"]) == {"etcd-0", "etcd-1", "etcd-2"}
    (ratio,) = report["ratios_to_etcd"]
    assert (ratio["op"], ratio["level"]) == ("put", 4)
    for name in ("throughput", "p50", "p95", "p99"):
        assert isinstance(ratio[name], float) and ratio[name] > 0, ratio
    assert report["meta"]["etcd"]  # the version it ran against
    assert "Ratio paxos/etcd" in stdout
