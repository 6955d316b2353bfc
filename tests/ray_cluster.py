"""A real two-node Ray cluster on this machine, bound to loopback only, for the tests that need one.

Built with ``ray.cluster_utils.Cluster``: each node is a real set of Ray processes (GCS, raylet,
dashboard, agents) with ``node_ip_address`` 127.0.0.1 given explicitly. ``ray start --node-ip-address
127.0.0.1`` does not do here: Ray's CLI replaces a loopback address by the machine's network address on
Linux, and its gRPC servers then listen on every interface; with a loopback node address they listen on
127.0.0.1 only. The dashboard (the Job Submission API) is on 127.0.0.1, every port is picked free (two test
sessions on one machine do not collide), usage stats are off and the session has its own temporary
folder. ``add_node`` and ``kill_node`` let a test replace a node, as a node death and an autoscaler would.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).parent
LOOPBACK = "127.0.0.1"
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def job_environment() -> dict[str, str]:
    """What the cluster's processes inherit: usage stats off, and for a job's ``python -m embedforge...``
    this interpreter with this checkout's sources first (the way a node image would have them)."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray on Linux rewrites a loopback address (127.0.0.1:GCS_PORT in ray.init, as the dashboard agent
        # connects) to the machine's network address, where a loopback-only GCS does not listen; with
        # "multi-node clusters off" its node address is 127.0.0.1 (ray/_private/services.py)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Ray's out-of-memory killer counts the whole machine's memory: on a shared machine it would kill the
        # tests' workers for other processes' use
        "RAY_memory_monitor_refresh_ms": "0",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")] if p
        ),
        # a busy 2-core machine starts Ray's Python parts slowly: the dashboard, and the agents a raylet
        # waits for (by default 60 s and 15 s, after which the raylet aborts)
        "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
        "RAY_agent_register_timeout_ms": "300000",
        "DASHBOARD_METRIC_PORT": str(free_port()),
        "AUTOSCALER_METRIC_PORT": str(free_port()),
    }


def _node_args(num_cpus: int, resources: dict | None) -> dict:
    return {
        "node_ip_address": LOOPBACK,
        "num_cpus": num_cpus,
        "resources": dict(resources or {}),
        "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port(),
        "object_store_memory": 100 * 1024 * 1024,
        "include_log_monitor": False,  # fewer processes to start on a busy machine; job logs stay in files
    }


class RayCluster:
    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="embedforge-ray-"))
        self.dashboard_port = free_port()
        self.address = f"http://{LOOPBACK}:{self.dashboard_port}"  # the Job Submission API
        self.cluster = None
        self.saved_env: dict[str, str | None] = {}

    def start(self) -> RayCluster:
        """Start the head and one more node; on a failure, stop whatever had started."""
        for key, value in job_environment().items():  # node processes inherit os.environ when started
            self.saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start()
                return self
            except Exception:  # Ray gives a node 30 s to register; a loaded machine can miss that
                self._shutdown()
                if attempt == START_ATTEMPTS:
                    self.stop()
                    raise
        return self

    def _start(self) -> None:
        from ray.cluster_utils import Cluster  # after the environment: Ray reads it on import

        _patient_node_registration()

        head = {
            **_node_args(1, None),
            "gcs_server_port": free_port(),
            "include_dashboard": True,
            "dashboard_host": LOOPBACK,
            "dashboard_port": self.dashboard_port,
            "ray_client_server_port": free_port(),
            "temp_dir": str(self.temp),
            "no_monitor": True,  # no autoscaler: the tests add and remove nodes themselves
        }
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.add_node()

    @property
    def head(self):
        return self.cluster.head_node

    def add_node(self, resources: dict | None = None, num_cpus: int = 1):
        """Another node on this machine joining the cluster, with ``resources`` (custom Ray resources)."""
        return self.cluster.add_node(wait=True, **_node_args(num_cpus, resources))

    def worker_nodes(self) -> list:
        return list(self.cluster.worker_nodes)

    def kill_node(self, node) -> None:
        """Kill the node's processes at once (no graceful shutdown), as a machine that loses power; return
        once the cluster counts it dead (until it misses its heartbeats Ray still places work on it)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.cluster.wait_for_nodes(timeout=NODE_START_SECONDS)

    def _shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        _kill_processes_using(self.temp)  # what a node that failed to start left behind

    def stop(self) -> None:
        self._shutdown()
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.temp, ignore_errors=True)

    def pids(self) -> set[int]:
        """Every process of this cluster: each node's processes and their descendants."""
        pids = set()
        for node in [self.head, *self.worker_nodes()]:
            for info in node.all_processes.values():
                for process in info:
                    try:
                        root = psutil.Process(process.process.pid)
                        pids |= {root.pid, *(p.pid for p in root.children(recursive=True))}
                    except psutil.NoSuchProcess:
                        continue
        return pids

    def listeners(self) -> list[str]:
        """Every address a process of this cluster listens on, as ``ip:port``."""
        pids = self.pids()
        return sorted(
            f"{c.laddr.ip}:{c.laddr.port}"
            for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids
        )


NODE_START_SECONDS = 180


def _patient_node_registration() -> None:
    """Give a starting node up to NODE_START_SECONDS to start its dashboard and register with the GCS.
    Ray waits 60 s for the dashboard and a fixed 30 s for the registration
    (``ray._private.node.Node``), which a 2-core machine busy with other work can miss; Ray looks the
    node up through ``services.get_node``, so that lookup retries here until the longer deadline."""
    import ray._private.ray_constants as constants
    import ray._private.services as services

    # read when the dashboard starts; the environment variable counts only if set before Ray's import
    constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S = NODE_START_SECONDS
    constants.ENABLE_RAY_CLUSTER = False  # as RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: loopback stays loopback
    if getattr(services.get_node, "patient", False):
        return
    original = services.get_node

    def get_node(*args, **kwargs):
        deadline = time.monotonic() + NODE_START_SECONDS
        while True:
            try:
                return original(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    get_node.patient = True
    services.get_node = get_node


def _kill_processes_using(folder: Path) -> None:
    """SIGKILL every process whose command line names ``folder`` (this cluster's own temporary folder),
    with its descendants."""
    victims = []
    for process in psutil.process_iter(["cmdline"]):
        if str(folder) in " ".join(process.info["cmdline"] or []):
            try:
                victims += [process, *process.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
    for process in victims:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
