"""AutoDL: the all-in-one image (engine + API + Open-WebUI under supervisord)
and the native bundle's setup.sh in a plain Debian container with no Docker
inside, as on an AutoDL instance. Engine: llama.cpp CPU on the tiny model."""

import gzip
import hashlib
import json
import subprocess
import uuid

import httpx
import pytest
import testinfra

from support import dockerenv
from support.netwait import wait_for_ok
from support.settings import LLAMACPP_TAG

pytestmark = pytest.mark.image
AIO_TAG = "ktappliance/autodl:llamacpp-b11312-avx2-cpu"
SUPERVISORCTL = ["/opt/kta-api/bin/supervisorctl", "-c", "/opt/ktappliance/autodl/supervisord.conf"]
ADMIN = {"name": "Admin", "email": "admin@example.com", "password": "correct-horse-battery"}


@pytest.fixture(scope="session")
def aio_image(llamacpp_image, webui_image, docker_client):
    # The same command a user runs; the engine image is already built (cached).
    dockerenv.build_py(*dockerenv.llamacpp_build_args(LLAMACPP_TAG), "--autodl", "--no-configure",
                       log_name="autodl-aio")
    return docker_client.images.get(AIO_TAG)


def data_disk(tmp_path_factory, tiny_models, with_model=True):
    disk = tmp_path_factory.mktemp("autodl-tmp")
    (disk / "models" / "gguf").mkdir(parents=True)
    if with_model:
        subprocess.run(["cp", "-r", str(tiny_models["split_first"].parent), str(disk / "models" / "gguf")], check=True)
    return disk


def wait_http(url: str, timeout: float = 300, container=None) -> None:
    def still_running():
        container.reload()
        if container.status == "exited":
            pytest.fail(f"{container.name} exited:\n{container.logs(tail=30).decode(errors='replace')}")
    if not wait_for_ok(url, timeout, interval=2, still_alive=still_running if container is not None else None):
        pytest.fail(f"{url} did not answer within {timeout:.0f} s")


def exec_out(container, *argv: str) -> str:
    code, out = container.exec_run(list(argv))
    return out.decode(errors="replace")


def chat_through_ui(webui: str) -> str:
    with httpx.Client(base_url=webui, timeout=120) as http:
        response = http.post("/api/v1/auths/signup", json=ADMIN)
        if response.status_code != 200:
            response = http.post("/api/v1/auths/signin", json={"email": ADMIN["email"], "password": ADMIN["password"]})
        token = response.json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        assert "DeepSeek-R1" in [m["id"] for m in http.get("/api/models").json()["data"]]
        reply = http.post("/api/chat/completions", json={
            "model": "DeepSeek-R1", "stream": False, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hello"}]})
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def appliance(aio_image, docker_client, tiny_models, tmp_path_factory):
    disk = data_disk(tmp_path_factory, tiny_models)
    container = docker_client.containers.run(
        AIO_TAG, detach=True, name="kta-aio-" + uuid.uuid4().hex[:6],
        volumes={str(disk): {"bind": "/root/autodl-tmp", "mode": "rw"}},
        environment={"LLAMA_ARG_CTX_SIZE": "2048", "LLAMA_ARG_THREADS": "2"},
        ports={"6006/tcp": ("127.0.0.1", None), "6008/tcp": ("127.0.0.1", None)})
    try:
        webui = f"http://127.0.0.1:{dockerenv.published_port(container, '6006/tcp')}"
        api = f"http://127.0.0.1:{dockerenv.published_port(container, '6008/tcp')}"
        wait_http(webui + "/health", timeout=600, container=container)
        yield {"container": container, "webui": webui, "api": api,
               "key": exec_out(container, "cat", "/root/.config/ktappliance/api_key").strip(), "disk": disk}
    finally:
        container.remove(force=True)


def test_all_programs_running(appliance):
    status = exec_out(appliance["container"], *SUPERVISORCTL, "status")
    for program in ("engine", "api", "webui", "stop-on-fatal"):
        assert any(line.startswith(program) and "RUNNING" in line for line in status.splitlines()), status


def test_chat_through_6006_and_api_on_6008(appliance):
    assert chat_through_ui(appliance["webui"]) is not None
    reply = httpx.post(appliance["api"] + "/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {appliance['key']}"},
                       json={"model": "DeepSeek-R1", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200 and reply.json()["model"] == "DeepSeek-R1"
    # UI data lives on the data disk, never in the image.
    assert (appliance["disk"] / "webui").is_dir() and any((appliance["disk"] / "webui").iterdir())


def test_killed_engine_is_restarted_and_api_says_503_meanwhile(appliance):
    container, headers = appliance["container"], {"Authorization": f"Bearer {appliance['key']}"}
    body = {"model": "DeepSeek-R1", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    container.exec_run(["pkill", "-KILL", "-x", "llama-server"])
    response = httpx.post(appliance["api"] + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
    wait_http(appliance["api"] + "/ready", timeout=120)
    assert httpx.post(appliance["api"] + "/v1/chat/completions", json=body, headers=headers,
                      timeout=60).status_code == 200


def test_with_testinfra(appliance):
    host = testinfra.get_host(f"docker://{appliance['container'].id}")
    assert host.process.get(comm="supervisord").user == "root"
    # The services themselves run unprivileged.
    table = [line.split(None, 1) for line in host.check_output("ps -eo user:20,args").splitlines()[1:]]
    for service in ("llama-server", "-m ktappliance.api", "open-webui serve"):
        users = {user for user, args in table if service in args and "wait-for" not in args}
        assert users == {"kta"}, (service, users)
    assert host.socket("tcp://0.0.0.0:6006").is_listening
    assert host.socket("tcp://0.0.0.0:6008").is_listening
    assert host.socket("tcp://127.0.0.1:8080").is_listening  # the engine stays inside
    assert not host.socket("tcp://0.0.0.0:8080").is_listening
    assert host.file("/root/.config/ktappliance/api_key").mode == 0o600
    assert host.file("/root/.config/ktappliance/api_key").user == "kta"


def test_fatal_program_stops_the_container(aio_image, docker_client, tiny_models, tmp_path_factory):
    disk = data_disk(tmp_path_factory, tiny_models)
    container = docker_client.containers.run(
        AIO_TAG, detach=True, volumes={str(disk): {"bind": "/root/autodl-tmp", "mode": "rw"}},
        environment={"LLAMA_ARG_MODEL": "/root/autodl-tmp/models/gone.gguf"})
    try:
        result = container.wait(timeout=180)
        logs = container.logs().decode(errors="replace")
        assert "engine failed to start; stopping" in logs
        assert result["StatusCode"] is not None
    finally:
        container.remove(force=True)


def test_no_model_on_the_data_disk_is_one_line(aio_image, tiny_models, tmp_path_factory):
    disk = data_disk(tmp_path_factory, tiny_models, with_model=False)
    done = subprocess.run(["docker", "run", "--rm", "-v", f"{disk}:/root/autodl-tmp", AIO_TAG],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no model on the data disk" in lines[0]


def test_export_archive_loads_back(bases, docker_client, tmp_path):
    from ktappliance.image.autodl import export_image
    archive = export_image(dockerenv.DEBIAN_BASE, tmp_path)
    manifest = json.loads((tmp_path / "kta-test_debian_bookworm.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (tmp_path / f"{archive.name}.sha256").read_text().split()[0] == manifest["sha256"]
    loaded = subprocess.run(["docker", "load"], input=gzip.decompress(archive.read_bytes()), capture_output=True)
    assert loaded.returncode == 0 and b"kta-test/debian:bookworm" in loaded.stdout


def test_native_bundle_setup_and_start(bases, docker_client, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    sdist = dockerenv.pypi_sdist("llama-cpp-python", "0.3.36")
    done = subprocess.run([*dockerenv.build_py_argv(), "--engine", "llamacpp", "--cpu-only", "--target", "avx2",
                           "--llamacpp-src", str(sdist), "--autodl", "--bundle", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bundle = next((out / "autodl").glob("*.tar.gz"))
    disk = data_disk(tmp_path_factory, tiny_models)
    # A plain Debian instance: no Docker, no systemd, root, the data disk mounted.
    instance = docker_client.containers.run(
        dockerenv.DEBIAN_BASE, ["sleep", "infinity"], detach=True, name="kta-instance-" + uuid.uuid4().hex[:6],
        volumes={str(bundle.parent): {"bind": "/bundle", "mode": "ro"},
                 str(disk): {"bind": "/root/autodl-tmp", "mode": "rw"},
                 dockerenv.CA_BUNDLE: {"bind": "/etc/kta-ca.pem", "mode": "ro"},
                 "kta-test-native-ccache": {"bind": "/root/.cache/ccache", "mode": "rw"}},
        environment={"KTA_CA_CERT": "/etc/kta-ca.pem", "LLAMA_ARG_CTX_SIZE": "2048"},
        ports={"6006/tcp": ("127.0.0.1", None), "6008/tcp": ("127.0.0.1", None)})
    try:
        setup = ["sh", "-c", f"cd /root && tar xzf /bundle/{bundle.name} && sh ktappliance-autodl/setup.sh"]
        code, output = instance.exec_run(setup)
        log = output.decode(errors="replace")
        (dockerenv.LOG_DIR / "autodl-native-setup.log").write_text(log)
        assert code == 0, log[-3000:]
        assert "Next:" in log and "6006" in log
        code, output = instance.exec_run(setup)  # safe to run twice
        assert code == 0 and "llama.cpp already built" in output.decode(errors="replace")
        instance.exec_run(["sh", "-c", "/opt/ktappliance/start.sh >/root/autodl-tmp/ktappliance.log 2>&1"],
                          detach=True)
        webui = f"http://127.0.0.1:{dockerenv.published_port(instance, '6006/tcp')}"
        api = f"http://127.0.0.1:{dockerenv.published_port(instance, '6008/tcp')}"
        wait_http(webui + "/health", timeout=600, container=instance)
        key = exec_out(instance, "cat", "/root/.config/ktappliance/api_key").strip()
        ready = httpx.get(api + "/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        reply = httpx.post(api + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                           json={"model": "DeepSeek-R1", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200
        assert chat_through_ui(webui) is not None
    finally:
        instance.remove(force=True)


@pytest.mark.parametrize("case, fragment", [
    ("port-taken", "port 6006 is already taken"),
    ("disk-small", "disk too small"),
    ("no-gpu", "no NVIDIA GPU visible"),
])
def test_start_refuses_with_one_line(aio_image, tiny_models, tmp_path_factory, case, fragment):
    disk = data_disk(tmp_path_factory, tiny_models)
    argv = ["docker", "run", "--rm", "-v", f"{disk}:/root/autodl-tmp"]
    if case == "port-taken":
        argv += ["--entrypoint", "sh", AIO_TAG, "-c",
                 "/opt/kta-api/bin/python -m http.server 6006 >/dev/null 2>&1 & sleep 2; "
                 "exec /opt/ktappliance/autodl/start.sh"]
    elif case == "disk-small":
        argv += ["-e", "KTA_MIN_FREE_GB=1000000", AIO_TAG]
    else:
        argv += ["-e", "KTA_ENGINE=ktransformers", AIO_TAG]  # KTransformers needs a GPU; none here
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
