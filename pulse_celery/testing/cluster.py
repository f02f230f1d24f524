"""Extra RabbitMQ nodes on this machine, alone or as a cluster, to fail on purpose.

* :class:`RabbitNode`: one more RabbitMQ node (its own node name, AMQP port, distribution
  port, data and log directories and ``rabbitmq.conf``, optionally a TLS listener with the
  test CA of ``scripts/rabbitmq-tls.sh``) that a test may start, stop, SIGKILL, ``stop_app``
  and ``start_app``;
* :class:`RabbitCluster`: three such nodes joined with ``rabbitmqctl join_cluster``.

The node the suite runs on (``rabbit@localhost``, 5672) is never touched: every command here
names its own node with ``rabbitmqctl -n``. Nodes run as the ``rabbitmq`` user when this
process is root (so they share the Erlang cookie ``rabbitmqctl`` uses), else as this user.
Each node keeps to one scheduler thread, so three of them fit on a 2-core machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .broker import TLS_CA_CERTS, TLS_DIR, rabbitmqctl

#: The server script behind the distribution's ``rabbitmq-server`` wrapper (which would send
#: its output to /var/log/rabbitmq and insist on the default node).
SERVER = os.environ.get("PULSE_CELERY_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server")

#: One scheduler, no busy waiting: an idle node costs almost no CPU.
LIGHT_ERL_ARGS = "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"

#: Where nodes keep their files unless told otherwise: a fixed place, so that the nodes of a
#: crashed run can be found and killed by the next one.
DEFAULT_BASE = Path(tempfile.gettempdir()) / "pulse-celery-rabbit"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _node_of(pid: int) -> str | None:
    """The RabbitMQ node name a process was started for (its ``RABBITMQ_NODENAME``), if any.

    A beam's command line does not name its node (the node names itself at boot), but
    every process :class:`RabbitNode` starts has the name in its environment.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"RABBITMQ_NODENAME="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


@dataclass
class RabbitNode:
    """One extra RabbitMQ node on this machine, e.g. ``pulse-c1@localhost`` on 127.0.0.1:5681.

    ``start()`` makes its files under ``base_dir/<name>`` (wiped on the first start of this
    object; kept on later starts, so a killed node comes back with its data and its cluster).
    With ``tls_port`` it also listens for TLS there, with the server certificate made by
    ``scripts/rabbitmq-tls.sh`` (host names ``localhost`` and ``127.0.0.1``).
    """

    name: str = "pulse-c1"
    port: int = 5681
    #: Erlang distribution port (clustering and rabbitmqctl); AMQP port + 20000 by default.
    dist_port: int | None = None
    #: TLS listener port, or None for none.
    tls_port: int | None = None
    base_dir: Path = DEFAULT_BASE
    erl_args: str = LIGHT_ERL_ARGS
    #: Extra lines for its rabbitmq.conf.
    extra_config: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _started_once: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.dist_port is None:
            self.dist_port = self.port + 20000
        self.base_dir = Path(self.base_dir)

    # -- where it is -------------------------------------------------------------------

    @property
    def node(self) -> str:
        """The Erlang node name, for ``rabbitmqctl -n``."""
        return f"{self.name}@localhost"

    @property
    def home(self) -> Path:
        return self.base_dir / self.name

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def pid_file(self) -> Path:
        return self.home / "rabbit.pid"

    def url(
        self, user: str = "guest", password: str = "guest", vhost: str = "/", *, tls: bool = False
    ) -> str:
        """An AMQP URL of this node (``amqps://localhost:<tls_port>`` with ``tls``), credentials encoded."""
        if tls:
            if self.tls_port is None:
                raise ValueError(f"node {self.node} has no TLS listener: give it a tls_port")
            scheme, host, port = "amqps", "localhost", self.tls_port
        else:
            scheme, host, port = "amqp", "127.0.0.1", self.port
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"{scheme}://{credentials}@{host}:{port}/{quote(vhost, safe='')}"

    @property
    def ca_certs(self) -> str:
        """The test CA that signed the TLS listener's certificate."""
        return TLS_CA_CERTS

    # -- commands ----------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl -n <node> ARGS``; RuntimeError with its message if it fails."""
        return rabbitmqctl(*args, node=self.node, timeout=timeout)

    @property
    def running(self) -> bool:
        """True while the node's beam process lives (its RabbitMQ application may be stopped)."""
        pid = self.beam_pid()
        return pid is not None and _pid_alive(pid)

    def beam_pid(self) -> int | None:
        """The OS pid of the node's Erlang VM (from its pid file), or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _node_of(pid) == self.node else None

    def start(self, timeout: float = 120, *, fresh: bool | None = None) -> RabbitNode:
        """Start the node and wait until it accepts AMQP connections.

        ``fresh`` wipes its data first; by default only on this object's first start.
        """
        if fresh is None:
            fresh = not self._started_once
        self.kill_leftovers()
        if fresh and self.home.exists():
            shutil.rmtree(self.home)
        write_node_files(self)
        self._started_once = True
        owner = rabbitmq_owner()
        log = open(self.log_dir / "stdout.log", "ab")  # noqa: SIM115 -- the child keeps it
        try:
            self.process = subprocess.Popen(
                [SERVER],
                cwd=self.home,
                env=node_environment(self),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # As the rabbitmq user when root: its cookie is the one rabbitmqctl uses.
                user=owner.pw_uid if owner else None,
                group=owner.pw_gid if owner else None,
                extra_groups=[] if owner else None,
            )
        finally:
            log.close()
        self.wait_started(timeout)
        return self

    def wait_started(self, timeout: float = 120) -> None:
        """Wait until the RabbitMQ application runs and the AMQP port takes connections."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {self.node} exited at start:\n{self.log_tail()}")
            if port_open(self.port):
                try:
                    self.ctl("await_startup", timeout=30)
                    return
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"RabbitMQ node {self.node} did not start in {timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 60) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``), SIGKILL it if that does not work."""
        if not self.running:
            self._reap()
            return
        try:
            self.ctl("stop", timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill()
            return
        pid = self.beam_pid()
        deadline = time.monotonic() + timeout
        while pid is not None and _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid is not None and _pid_alive(pid):
            self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM at once, as a crashed machine would stop it."""
        pid = self.beam_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 30
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._reap()

    def stop_app(self) -> None:
        """Stop the RabbitMQ application; the Erlang VM stays up (``rabbitmqctl stop_app``)."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 120) -> None:
        """Start the RabbitMQ application again and wait for it."""
        self.ctl("start_app", timeout=timeout)
        self.wait_started(timeout)

    def kill_leftovers(self) -> None:
        """SIGKILL a VM of this node left by an earlier run that crashed (idempotent)."""
        pids = {p for p in [self.beam_pid()] if p is not None}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _node_of(int(entry.name)) == self.node:
                pids.add(int(entry.name))
        for pid in pids:
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 30
        while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._reap()

    def log_tail(self, chars: int = 3000) -> str:
        texts = []
        for path in sorted(self.log_dir.glob("*.log")) if self.log_dir.exists() else []:
            texts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(texts)

    def _reap(self) -> None:
        """Collect the server script's process and whatever else is left in its group."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.process = None


# -- a node's files and environment ------------------------------------------------------


def node_config(node: RabbitNode) -> str:
    """The node's rabbitmq.conf: its listeners (TLS with the test CA's server certificate if asked)."""
    lines = [
        f"listeners.tcp.local = 127.0.0.1:{node.port}",
        "log.console = false",
        "log.file.level = info",
        # Statistics are for the management plugin, which these nodes do not run.
        "collect_statistics_interval = 60000",
    ]
    if node.tls_port is not None:
        lines += [
            f"listeners.ssl.local = 127.0.0.1:{node.tls_port}",
            f"ssl_options.cacertfile = {TLS_CA_CERTS}",
            f"ssl_options.certfile = {os.path.join(TLS_DIR, 'server.pem')}",
            f"ssl_options.keyfile = {os.path.join(TLS_DIR, 'server.key')}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
    return "\n".join([*lines, *node.extra_config]) + "\n"


def write_node_files(node: RabbitNode) -> None:
    """Make the node's directories, rabbitmq.conf, enabled_plugins and rabbitmq-env.conf."""
    node.log_dir.mkdir(parents=True, exist_ok=True)
    (node.home / "rabbitmq.conf").write_text(node_config(node))
    (node.home / "enabled_plugins").write_text("[].\n")
    # Read by the server script and by the node itself; it replaces /etc/rabbitmq/rabbitmq-env.conf,
    # whose NODENAME is the main node's.
    (node.home / "rabbitmq-env.conf").write_text(
        f"NODENAME={node.node}\nNODE_PORT={node.port}\nDIST_PORT={node.dist_port}\n"
        "ERL_EPMD_ADDRESS=127.0.0.1\n"
        'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
    )
    owner = rabbitmq_owner()
    if owner is not None:
        for path in [node.base_dir, *_tree(node)]:
            os.chown(path, owner.pw_uid, owner.pw_gid)


def _tree(node: RabbitNode) -> Iterator[Path]:
    yield node.home
    yield from node.home.rglob("*")


def node_environment(node: RabbitNode) -> dict[str, str]:
    """The server script's environment: every path and port of the node, nothing of the main node's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    owner = rabbitmq_owner()
    if owner is not None:
        env.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
    home = str(node.home)
    env.update(
        RABBITMQ_CONF_ENV_FILE=f"{home}/rabbitmq-env.conf",
        RABBITMQ_NODENAME=node.node,
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(node.port),
        RABBITMQ_DIST_PORT=str(node.dist_port),
        RABBITMQ_CONFIG_FILE=f"{home}/rabbitmq.conf",
        RABBITMQ_ADVANCED_CONFIG_FILE=f"{home}/advanced.config",
        RABBITMQ_ENABLED_PLUGINS_FILE=f"{home}/enabled_plugins",
        RABBITMQ_MNESIA_BASE=f"{home}/mnesia",
        RABBITMQ_LOG_BASE=str(node.log_dir),
        RABBITMQ_PID_FILE=str(node.pid_file),
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=node.erl_args,
        ERL_EPMD_ADDRESS="127.0.0.1",
    )
    return env


def rabbitmq_owner() -> pwd.struct_passwd | None:
    """The ``rabbitmq`` user when we are root (its cookie is the one rabbitmqctl uses)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        return None


@dataclass
class QueueInfo:
    """A queue as ``rabbitmqctl list_queues`` shows it on a cluster."""

    name: str
    type: str
    #: the leader's node name ('' for a classic queue)
    leader: str
    #: node names of its replicas (quorum queues)
    members: tuple[str, ...]
    ready: int
    unacked: int


class RabbitCluster:
    """``size`` :class:`RabbitNode` s joined into one RabbitMQ cluster (``pulse-c1``, ``pulse-c2``...).

    Node *i* (from 1) listens on ``first_port + i - 1``. :meth:`start` kills what a crashed
    earlier run left, starts every node afresh and joins them to the first one.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        prefix: str = "pulse-c",
        first_port: int = 5681,
        tls_first_port: int | None = None,
        base_dir: Path = DEFAULT_BASE,
    ) -> None:
        self.nodes = [
            RabbitNode(
                name=f"{prefix}{i + 1}",
                port=first_port + i,
                tls_port=None if tls_first_port is None else tls_first_port + i,
                base_dir=base_dir,
            )
            for i in range(size)
        ]

    def __iter__(self) -> Iterator[RabbitNode]:
        return iter(self.nodes)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def node(self, name: str) -> RabbitNode:
        """The node named ``name`` (``pulse-c2`` or ``pulse-c2@localhost``)."""
        for n in self.nodes:
            if name in (n.name, n.node):
                return n
        raise KeyError(name)

    def urls(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:
        """kombu's failover form of every node's URL: ``amqp://...:5681/v;amqp://...:5682/v;...``."""
        return ";".join(n.url(user, password, vhost) for n in self.nodes)

    def start(self, timeout: float = 180) -> RabbitCluster:
        """Start every node afresh (at once) and join the others to the first."""
        for n in self.nodes:
            n.kill_leftovers()
        errors: list[BaseException] = []

        def boot(n: RabbitNode) -> None:
            try:
                n.start(timeout=timeout, fresh=True)
            except BaseException as exc:  # reported below, in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=boot, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise errors[0]
        first = self.nodes[0]
        for n in self.nodes[1:]:
            n.stop_app()
            n.ctl("join_cluster", first.node)
            n.start_app()
        running = self.running_nodes()
        if sorted(running) != sorted(n.node for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running nodes {running}")
        return self

    def stop(self) -> None:
        """Stop every node (the last ones first, so the first, which others joined, goes last)."""
        for n in reversed(self.nodes):
            n.stop()

    def kill_leftovers(self) -> None:
        for n in self.nodes:
            n.kill_leftovers()

    def running_nodes(self, via: RabbitNode | None = None) -> list[str]:
        """Node names the cluster sees as running, asked of ``via`` (the first running node by default)."""
        import json

        via = via or next(n for n in self.nodes if n.running)
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def queue(self, vhost: str, name: str, via: RabbitNode | None = None) -> QueueInfo | None:
        """The queue's type, leader, members and counts (``list_queues``), or None if it does not exist."""
        import json

        via = via or next(n for n in self.nodes if n.running)
        out = via.ctl(
            "list_queues", "-p", vhost, "name", "type", "leader", "members",
            "messages_ready", "messages_unacknowledged", "--formatter", "json",
        )  # fmt: skip
        for row in json.loads(out):
            if row.get("name") == name:
                members = row.get("members") or []
                return QueueInfo(
                    name=name,
                    type=str(row.get("type", "")),
                    leader=str(row.get("leader") or ""),
                    members=tuple(str(m) for m in members) if isinstance(members, list) else (),
                    ready=int(row.get("messages_ready") or 0),
                    unacked=int(row.get("messages_unacknowledged") or 0),
                )
        return None
