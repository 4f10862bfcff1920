"""balance_serve's scheduler sockets are the engine's alone.

Its RPC socket runs pickle.loads on whatever arrives; its Prometheus
exposers tell how busy the engine is. The build binds them to loopback
(images/engine/patches/v0.3.2-balance-serve-loopback.patch). Probed here
from where an attacker would be: a neighbour container on the compose
stack's network, and, for AutoDL, where the services share the host's
network namespace, another namespace on the same machine. The scheduler is
the engine image's own (the amx image, or on a CPU that cannot run its code
the v0.3.2 avx2 image: the same scheduler and patch), started as the server
starts it and held where a machine without a GPU stops it (hold_scheduler.py
says how); the GPU tier probes the running engine, all three sockets."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support import isa, tiny_deepseek
from support.netwait import free_port
from support.settings import API_TAG

pytestmark = pytest.mark.image
HOLD = Path(__file__).with_name("hold_scheduler.py")
PROBE = ("import socket, sys\n"
         "for port in sys.argv[2:]:\n"
         "    try:\n"
         "        socket.create_connection((sys.argv[1], int(port)), timeout=3).close(); print(port, 'open')\n"
         "    except OSError as exc:\n"
         "        print(port, 'closed', type(exc).__name__)\n")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sockets")
    tiny_deepseek.write_model(out / "model")
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out / "model"


def held_scheduler(docker_client, image, model_dir: Path, control_port: int, **run):
    """The engine image running hold_scheduler.py until the scheduler is held."""
    isa.skip_unless_runs_here(image.labels["ai.ktappliance.cpu-flags"].split())
    container = docker_client.containers.run(
        image.id, ["sh", "-c", "/opt/venv/bin/python /opt/ktappliance/engine/kt-user-config.py --kvc2 1 && "
                                     "exec /opt/venv/bin/python /hold/hold_scheduler.py"],
        entrypoint=[], detach=True, environment={"CONTROL_PORT": str(control_port)},
        volumes={str(model_dir): {"bind": "/models", "mode": "ro"},
                 str(HOLD.parent): {"bind": "/hold", "mode": "ro"}}, **run)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        logs = container.logs().decode(errors="replace")
        held = [line for line in logs.splitlines() if line.startswith("HELD ")]
        if held:
            rpc, exposer = held[0].split()[1:3]
            return container, [int(rpc), int(exposer)]
        container.reload()
        if container.status == "exited":
            break
        time.sleep(1)
    logs = container.logs(tail=40).decode(errors="replace")
    container.remove(force=True)
    pytest.fail(f"the scheduler was not held:\n{logs}")


# Listening TCP sockets of the namespace it runs in, from /proc/net/tcp
# (state 0A), as "address port" lines.
LISTENING = ("import socket, struct\n"
             "for line in open('/proc/net/tcp').read().splitlines()[1:]:\n"
             "    local, state = line.split()[1], line.split()[3]\n"
             "    if state == '0A':\n"
             "        address, port = local.split(':')\n"
             "        print(socket.inet_ntoa(struct.pack('<I', int(address, 16))), int(port, 16))\n")


def listening(output: str) -> dict[int, str]:
    """port -> address it is bound to."""
    return {int(port): address for address, port in (line.split() for line in output.splitlines())}


def probe(docker_client, address: str, ports: list[int], **run) -> dict[int, str]:
    out = docker_client.containers.run(API_TAG, ["/opt/venv/bin/python", "-c", PROBE, address, *map(str, ports)],
                                       entrypoint=[], remove=True, **run).decode()
    return {int(line.split()[0]): line.split()[1] for line in out.splitlines()}


def test_on_the_compose_network_a_neighbour_reaches_none_of_them(engine_serve_image, api_image, docker_client,
                                                                 model_dir):
    network = docker_client.networks.create(f"kta-sockets-{uuid.uuid4().hex[:6]}", internal=True)
    control = 10002
    container, ports = held_scheduler(docker_client, engine_serve_image, model_dir, control, network=network.name)
    try:
        bound = listening(container.exec_run(["/opt/venv/bin/python", "-c", LISTENING]).output.decode())
        assert set(ports) <= set(bound), (ports, bound)
        assert all(bound[port] == "127.0.0.1" for port in ports), bound
        inside = container.exec_run(["/opt/venv/bin/python", "-c", PROBE, "127.0.0.1", *map(str, ports)]).output.decode()
        assert inside.count(" open") == len(ports), inside  # live, for the engine's own processes
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        seen = probe(docker_client, address, [control, *ports], network=network.name)
        assert seen[control] == "open", seen    # the neighbour does reach the engine's container
        assert all(seen[port] == "closed" for port in ports), seen
    finally:
        container.remove(force=True)
        network.remove()


def test_with_host_networking_another_namespace_reaches_none_of_them(engine_serve_image, api_image, docker_client,
                                                                     model_dir):
    # The AutoDL bundle runs the engine in the instance's own namespace (no
    # containers inside); here the scheduler shares this machine's, and a
    # container on Docker's bridge is the other namespace, reaching the
    # machine at the bridge's gateway.
    control = free_port()
    container, ports = held_scheduler(docker_client, engine_serve_image, model_dir, control, network_mode="host")
    try:
        gateway = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
        seen = probe(docker_client, gateway, [control, *ports])
        assert seen[control] == "open", seen
        assert all(seen[port] == "closed" for port in ports), seen
        here = listening(subprocess.run([sys.executable, "-c", LISTENING], capture_output=True, text=True).stdout)
        assert all(here.get(port) == "127.0.0.1" for port in ports), (ports, here)
    finally:
        container.remove(force=True)
