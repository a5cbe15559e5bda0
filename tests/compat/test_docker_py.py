"""docker-py (the Docker SDK for Python) drives corrald unchanged."""

import secrets

import pytest
from imagebuild import busybox_image, write_docker_archive

docker = pytest.importorskip(
    "docker", reason="needs docker-py: pip install -e '.[test]' installs it"
)


@pytest.fixture(scope="module")
def client(daemon):
    client = docker.DockerClient(base_url=f"unix://{daemon.socket}", timeout=60)
    yield client
    client.close()


def test_ping_and_version_answer(client):
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.44"


def test_containers_run_detached_then_logs_wait_and_remove(client, daemon, name):
    container = client.containers.run(
        "busybox:test",
        ["sh", "-c", "echo out; echo err >&2; exit 4"],
        name=name,
        detach=True,
    )

    result = container.wait(timeout=30)
    stdout = container.logs(stdout=True, stderr=False)
    stderr = container.logs(stdout=False, stderr=True)
    container.reload()

    assert result == {"StatusCode": 4, "Error": None}
    assert (stdout, stderr) == (b"out\n", b"err\n")
    assert (container.status, container.attrs["State"]["ExitCode"]) == ("exited", 4)
    assert container.name == name

    container.remove()

    assert daemon.request("GET", f"/containers/{name}/json").status == 404
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)


def test_containers_run_without_detach_returns_the_output(client, name):
    output = client.containers.run(
        "busybox:test", ["echo", "hello"], name=name, remove=True
    )

    assert output == b"hello\n"


def test_containers_run_raises_container_error_on_a_nonzero_exit(client, name):
    with pytest.raises(docker.errors.ContainerError) as caught:
        client.containers.run(
            "busybox:test", ["sh", "-c", "echo bad >&2; exit 2"], name=name, stderr=True
        )

    assert caught.value.exit_status == 2
    assert b"bad" in caught.value.stderr


def test_containers_list_stop_and_remove_force(client, name):
    container = client.containers.run(
        "busybox:test",
        ["sleep", "300"],
        name=name,
        detach=True,
        mem_limit="32m",
        pids_limit=50,
    )

    listed = [c.name for c in client.containers.list(filters={"name": name})]
    container.reload()
    host_config = container.attrs["HostConfig"]
    container.stop(timeout=1)
    container.reload()

    assert listed == [name]
    assert (host_config["Memory"], host_config["PidsLimit"]) == (32 << 20, 50)
    assert (container.status, container.attrs["State"]["ExitCode"]) == ("exited", 137)
    container.remove(force=True)
    assert client.containers.list(all=True, filters={"name": name}) == []


def test_an_api_error_reaches_docker_py_with_its_status(client, name):
    with pytest.raises(docker.errors.APIError) as caught:
        client.containers.create(
            "busybox:test", ["true"], name=name, mem_limit=1024 * 1024
        )

    assert caught.value.status_code == 400
    assert "minimum is 6 MiB" in str(caught.value)
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create("nosuch:image", ["true"])


def test_images_list_load_and_remove(client, tmp_path):
    tag = f"compat-py-{secrets.token_hex(3)}:v1"
    write_docker_archive(
        tmp_path / "image.tar",
        [busybox_image([tag], extra_layers=[{"marker": "py\n"}])],
    )

    with open(tmp_path / "image.tar", "rb") as f:
        loaded = client.images.load(f.read())
    tags = [t for image in client.images.list() for t in image.tags]
    client.images.remove(tag)

    assert [image.tags for image in loaded] == [[tag]]
    assert "busybox:test" in tags and tag in tags
    assert tag not in [t for image in client.images.list() for t in image.tags]


def test_containers_run_with_auto_remove_is_gone_after_wait(client, daemon, name):
    # The pause leaves ample time to ask for the wait before the exit.
    container = client.containers.run(
        "busybox:test",
        ["sh", "-c", "sleep 1.5; exit 3"],
        name=name,
        detach=True,
        auto_remove=True,
    )

    assert container.wait(timeout=30, condition="removed")["StatusCode"] == 3
    assert daemon.request("GET", f"/containers/{name}/json").status == 404
