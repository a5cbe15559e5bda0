"""Every error path of the API answers with Docker's status and a message that
says what is wrong, and a refused request leaves nothing behind: no record,
no state directory, no cgroup."""

import json
import secrets

import pytest
from daemon import unique_name
from imagebuild import busybox_image, write_docker_archive

BUSYBOX = {"Image": "busybox:test", "Cmd": ["true"]}


def create(daemon, body, name: str | None = None):
    path = "/containers/create" + (f"?name={name}" if name else "")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return daemon.request("POST", path, data, {"Content-Type": "application/json"})


def assert_nothing_left(daemon, before) -> None:
    after = daemon.snapshot()
    assert after.ids <= before.ids, "a refused request left a container record"
    assert after.dirs <= before.dirs, "a refused request left a state directory"
    assert after.cgroups <= before.cgroups, "a refused request left a cgroup"


def host(**fields) -> dict:
    return {**BUSYBOX, "HostConfig": fields}


# ---- 400: bad parameters -------------------------------------------------------

BAD_CREATES = {
    "memory below 6 MiB": (host(Memory=4 * 1024 * 1024), "the minimum is 6 MiB"),
    "negative memory": (host(Memory=-1), "cannot be negative"),
    "negative cpus": (host(NanoCpus=-1_000_000_000), "cannot be negative"),
    "negative pids limit": (host(PidsLimit=-5), "invalid pids limit -5"),
    "negative memory swap": (
        host(Memory=64 << 20, MemorySwap=-2),
        "invalid memory+swap limit -2",
    ),
    "unknown restart policy": (
        host(RestartPolicy={"Name": "sometimes"}),
        "invalid restart policy 'sometimes'",
    ),
    "negative restart count": (
        host(RestartPolicy={"Name": "on-failure", "MaximumRetryCount": -1}),
        "cannot be negative",
    ),
    "restart count without on-failure": (
        host(RestartPolicy={"Name": "always", "MaximumRetryCount": 3}),
        "can only be used with 'on-failure'",
    ),
    "auto remove with a restart policy": (
        host(AutoRemove=True, RestartPolicy={"Name": "always"}),
        "can't create 'AutoRemove' container with restart policy 'always'",
    ),
    "no image": ({"Cmd": ["true"]}, "no image given"),
    "bad stop signal": (
        {**BUSYBOX, "StopSignal": "SIGNOPE"},
        "invalid signal 'SIGNOPE'",
    ),
    "unknown log option": (
        host(LogConfig={"Type": "json-file", "Config": {"x": "1"}}),
        "unknown log option(s) x",
    ),
    "relative working directory": (
        {**BUSYBOX, "WorkingDir": "relative"},
        "it needs to be an absolute path",
    ),
    "invalid hostname": ({**BUSYBOX, "Hostname": "bad host!"}, "invalid hostname"),
    "NUL in the command": ({**BUSYBOX, "Cmd": ["echo", "a\0b"]}, "holds a NUL byte"),
}


@pytest.mark.parametrize("body, message", BAD_CREATES.values(), ids=BAD_CREATES.keys())
def test_create_with_a_bad_parameter_is_400_and_creates_nothing(daemon, body, message):
    before = daemon.snapshot()

    reply = create(daemon, body, unique_name("bad"))

    assert reply.status == 400, reply.body
    assert message in reply.json()["message"]
    assert_nothing_left(daemon, before)


def test_create_with_more_cpus_than_the_host_has_is_400_naming_the_range(daemon):
    cpus = daemon.api("GET", "/info")["NCPU"]
    before = daemon.snapshot()

    reply = create(daemon, host(NanoCpus=(cpus + 1) * 1_000_000_000))

    assert reply.status == 400
    assert f"range of CPUs is from 0.01 to {cpus}.00" in reply.json()["message"]
    assert_nothing_left(daemon, before)


@pytest.mark.parametrize(
    "bad_name", ["a", "-leading-dash", "has space", "sl/ash", "x!y"]
)
def test_create_with_an_invalid_name_is_400(daemon, bad_name):
    before = daemon.snapshot()

    reply = create(daemon, BUSYBOX, bad_name.replace(" ", "%20").replace("/", "%2F"))

    assert reply.status == 400
    assert f"Invalid container name ({bad_name})" in reply.json()["message"]
    assert_nothing_left(daemon, before)


def test_create_with_a_body_that_is_not_json_is_400(daemon):
    before = daemon.snapshot()

    reply = create(daemon, b'{"Image": "busybox:test",')

    assert reply.status == 400
    assert "request body is not valid JSON" in reply.json()["message"]
    assert_nothing_left(daemon, before)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "1m"], "the minimum is 6 MiB"),
        (["--cpus", "-1"], "cannot be negative"),
        (["--pids-limit", "-7"], "invalid pids limit -7"),
        (["--restart", "sometimes"], "invalid restart policy 'sometimes'"),
        (["--restart", "on-failure:-2"], "cannot be negative"),
        (["--rm", "--restart", "always"], "cannot use --rm together with --restart"),
        (["--log-opt", "max-file=0"], "max-file '0' must be a whole number >= 1"),
    ],
)
def test_run_with_a_bad_flag_exits_125_with_the_reason(daemon, args, message):
    before = daemon.snapshot()

    result = daemon.cli("run", *args, "busybox:test", "true")

    assert result.returncode == 125
    assert message in result.stderr
    assert_nothing_left(daemon, before)


def test_run_with_an_invalid_name_exits_125(daemon):
    before = daemon.snapshot()

    result = daemon.cli("run", "--name", "bad name", "busybox:test", "true")

    assert result.returncode == 125
    assert "Invalid container name (bad name)" in result.stderr
    assert_nothing_left(daemon, before)


@pytest.mark.parametrize(
    "filters, message",
    [
        ("not-json", "is not valid JSON"),
        ('["name"]', "must be a JSON object"),
        ('{"colour": ["red"]}', "invalid filter 'colour'"),
        ('{"name": ["("]}', "invalid name filter"),
        ('{"status": ["weird"]}', "invalid filter 'status=weird'"),
    ],
)
def test_listing_with_bad_filters_is_400(daemon, filters, message):
    from urllib.parse import quote

    reply = daemon.request("GET", f"/containers/json?all=1&filters={quote(filters)}")

    assert reply.status == 400
    assert message in reply.json()["message"]


def test_ps_with_an_unknown_filter_fails_with_the_reason(daemon):
    result = daemon.cli("ps", "-a", "--filter", "colour=red")

    assert result.returncode == 1
    assert "invalid filter 'colour'" in result.stderr


def test_kill_with_a_bad_signal_is_400_and_the_container_keeps_running(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")

    reply = daemon.request("POST", f"/containers/{name}/kill?signal=SIGFOO")
    cli = daemon.cli("kill", "-s", "NOPE", name)

    assert reply.status == 400
    assert "invalid signal 'SIGFOO'" in reply.json()["message"]
    assert cli.returncode == 1 and "invalid signal 'NOPE'" in cli.stderr
    assert daemon.inspect(name)["State"]["Running"] is True


@pytest.mark.parametrize("flags, message", [
    (["-e", "=x"], "exec Env must be a list of NAME=value strings"),
    (["-w", "relative"], "is not an absolute path"),
])
def test_exec_with_a_bad_option_is_refused_and_the_daemon_lives_on(
    daemon, name, flags, message
):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")

    result = daemon.cli("exec", *flags, name, "true")

    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert daemon.cli("exec", name, "true").returncode == 0
    assert daemon.inspect(name)["State"]["Running"] is True


def test_wait_with_an_unknown_condition_is_400(daemon, name):
    daemon.cli("create", "--name", name, "busybox:test", "true", check=True)

    reply = daemon.request("POST", f"/containers/{name}/wait?condition=whenever")

    assert reply.status == 400
    assert "invalid wait condition 'whenever'" in reply.json()["message"]


@pytest.mark.parametrize(
    "query, message",
    [
        ("tail=lots", "tail='lots' must be a number or 'all'"),
        ("since=yesterday", "since='yesterday' must be a Unix time stamp"),
    ],
)
def test_logs_with_bad_parameters_are_400(daemon, name, query, message):
    daemon.cli("create", "--name", name, "busybox:test", "true", check=True)

    reply = daemon.request("GET", f"/containers/{name}/logs?stdout=1&{query}")

    assert reply.status == 400
    assert message in reply.json()["message"]


def test_stop_with_a_timeout_that_is_not_a_number_is_400(daemon, name):
    daemon.cli("create", "--name", name, "busybox:test", "true", check=True)

    reply = daemon.request("POST", f"/containers/{name}/stop?t=soon")

    assert reply.status == 400
    assert "t='soon' must be an integer" in reply.json()["message"]


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/containers/json"), ("PUT", "/_ping"), ("GET", "/v1.44/containers/create")],
)
def test_a_known_path_with_the_wrong_method_is_405_naming_both(daemon, method, path):
    reply = daemon.request(method, path)

    assert reply.status == 405
    message = reply.json()["message"]
    assert message.startswith(f"method {method} is not allowed on ")
    assert path.removeprefix("/v1.44") in message


# ---- 404: no such container or image -------------------------------------------

CONTAINER_CALLS = [
    ("GET", "/containers/{ref}/json"),
    ("POST", "/containers/{ref}/start"),
    ("POST", "/containers/{ref}/stop"),
    ("POST", "/containers/{ref}/restart"),
    ("POST", "/containers/{ref}/kill"),
    ("POST", "/containers/{ref}/wait"),
    ("GET", "/containers/{ref}/logs?stdout=1"),
    ("DELETE", "/containers/{ref}"),
]


@pytest.mark.parametrize(
    "method, path", CONTAINER_CALLS, ids=[f"{m} {p}" for m, p in CONTAINER_CALLS]
)
@pytest.mark.parametrize("kind", ["full id", "id prefix", "name"])
def test_an_unknown_container_is_404_naming_it(daemon, method, path, kind):
    ref = {
        "full id": secrets.token_hex(32),
        "id prefix": "f" * 11 + secrets.token_hex(2),
        "name": unique_name("never-created"),
    }[kind]
    before = daemon.snapshot()

    reply = daemon.request(method, path.format(ref=ref))

    assert reply.status == 404
    assert reply.json()["message"] == f"No such container: {ref}"
    assert_nothing_left(daemon, before)


@pytest.mark.parametrize(
    "command",
    [["inspect"], ["start"], ["stop"], ["kill"], ["rm", "-f"], ["restart"], ["wait"]],
)
def test_cli_commands_on_an_unknown_container_exit_1_naming_it(daemon, command):
    ref = unique_name("never-created")

    result = daemon.cli(*command, ref)

    assert result.returncode == 1
    assert ref in result.stderr
    assert "No such" in result.stderr


def test_create_from_an_unknown_image_is_404_and_creates_nothing(daemon, name):
    before = daemon.snapshot()

    reply = create(daemon, {"Image": "nosuch:latest", "Cmd": ["true"]}, name)

    assert reply.status == 404
    assert "No such image: nosuch:latest" in reply.json()["message"]
    assert_nothing_left(daemon, before)


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/images/nosuch:latest/json"),
        ("DELETE", "/images/nosuch:latest"),
    ],
)
def test_an_unknown_image_is_404(daemon, method, path):
    reply = daemon.request(method, path)

    assert reply.status == 404
    assert reply.json()["message"] == "No such image: nosuch:latest"


def test_an_unknown_path_is_404(daemon):
    reply = daemon.request("GET", "/containers/x/frobnicate")

    assert reply.status == 404
    assert "page not found" in reply.json()["message"]


# ---- 409 and 304 ---------------------------------------------------------------


def test_a_name_in_use_is_409_and_the_first_container_is_untouched(daemon, name):
    first = daemon.cli(
        "create", "--name", name, "busybox:test", "true", check=True
    ).stdout.strip()
    before = daemon.snapshot()

    reply = create(daemon, BUSYBOX, name)
    cli = daemon.cli("create", "--name", name, "busybox:test", "true")

    assert reply.status == 409
    assert (
        f'The container name "/{name}" is already in use by container "{first}"'
        in (reply.json()["message"])
    )
    assert cli.returncode == 125 and "already in use" in cli.stderr
    assert_nothing_left(daemon, before)
    assert daemon.inspect(name)["Id"] == first


def test_removing_a_running_container_without_force_is_409(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")

    reply = daemon.request("DELETE", f"/containers/{name}")
    cli = daemon.cli("rm", name)

    assert reply.status == 409
    assert "You cannot remove a running container" in reply.json()["message"]
    assert cli.returncode == 1 and "force remove" in cli.stderr
    assert daemon.inspect(name)["State"]["Running"] is True


def test_removing_an_image_in_use_is_409_until_its_container_is_gone(
    daemon, name, tmp_path
):
    tag = f"inuse-{secrets.token_hex(3)}:1"
    image = busybox_image([tag], extra_layers=[{"in-use": f"{tag}\n"}])
    write_docker_archive(tmp_path / "inuse.tar", [image])
    daemon.cli("load", "-i", str(tmp_path / "inuse.tar"), check=True)
    daemon.cli("create", "--name", name, tag, "true", check=True)

    refused = daemon.request("DELETE", f"/images/{tag}")
    cli = daemon.cli("rmi", tag)

    assert refused.status == 409
    assert "image is being used by stopped container" in refused.json()["message"]
    assert name in refused.json()["message"]
    assert cli.returncode == 1 and "being used" in cli.stderr
    assert tag in json.dumps(daemon.api("GET", "/images/json"))

    daemon.cli("rm", name, check=True)
    removed = daemon.cli("rmi", tag)

    assert removed.returncode == 0, removed.stderr
    assert f"Untagged: {tag}" in removed.stdout
    assert tag not in json.dumps(daemon.api("GET", "/images/json"))


def test_starting_a_running_container_is_304_and_leaves_it_running(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")
    pid = daemon.inspect(name)["State"]["Pid"]

    reply = daemon.request("POST", f"/containers/{name}/start")
    cli = daemon.cli("start", name)

    assert (reply.status, reply.body) == (304, b"")
    assert (cli.returncode, cli.stdout) == (0, f"{name}\n")
    assert daemon.inspect(name)["State"]["Pid"] == pid


def test_an_ambiguous_id_prefix_is_400_and_asks_for_more_characters(daemon, name):
    # 17 ids cannot all start with different hex digits.
    ids = [create(daemon, BUSYBOX, f"{name}-{n}").json()["Id"] for n in range(17)]
    first_digits = [container_id[0] for container_id in ids]
    shared = next(d for d in first_digits if first_digits.count(d) > 1)

    reply = daemon.request("GET", f"/containers/{shared}/json")

    assert reply.status == 400
    assert (
        f"multiple containers found with id prefix {shared}" in reply.json()["message"]
    )
    for container_id in ids:
        daemon.api("DELETE", f"/containers/{container_id}")
