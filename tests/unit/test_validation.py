import pytest

from supervisor.errors import BadParameter
from supervisor.validation import build_spec, check_restart_policy, parse_signal

IMAGE = {"Cmd": ["sh"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv", "User": "nobody"}


def spec(body, image=IMAGE, cpus=2):
    return build_spec({"Image": "busybox:test", **body}, "c", image, cpus)


def refused(body, *words):
    with pytest.raises(BadParameter) as info:
        spec(body)
    for word in words:
        assert word in info.value.message
    return info.value.message


def test_image_config_fills_what_the_request_leaves_out():
    s = spec({})
    assert (s.path, s.args) == ("sh", [])
    assert s.config["WorkingDir"] == "/srv" and s.config["User"] == "nobody"
    assert s.config["Env"] == ["PATH=/bin", "A=1"]


def test_request_env_overrides_image_env_by_name():
    assert spec({"Env": ["A=2", "B=3"]}).config["Env"] == ["PATH=/bin", "A=2", "B=3"]


def test_entrypoint_given_by_the_user_drops_the_image_command():
    s = spec({"Entrypoint": ["echo"]}, image={"Cmd": ["sh"], "Entrypoint": ["x"]})
    assert (s.path, s.args) == ("echo", [])


def test_command_appends_to_image_entrypoint():
    s = spec({"Cmd": ["-c", "true"]}, image={"Entrypoint": ["sh"], "Cmd": ["x"]})
    assert (s.path, s.args) == ("sh", ["-c", "true"])


def test_no_command_anywhere_is_refused():
    with pytest.raises(BadParameter, match="no command"):
        spec({}, image={})


def test_memory_below_six_mebibytes_is_refused():
    refused({"HostConfig": {"Memory": 4 * 1024 * 1024}}, "6 MiB")


def test_negative_memory_is_refused():
    refused({"HostConfig": {"Memory": -5}}, "negative")


def test_cpus_above_host_count_names_the_range():
    refused({"HostConfig": {"NanoCpus": 3_000_000_000}}, "0.01 to 2.00", "2 CPUs")


def test_swap_below_memory_is_refused():
    refused({"HostConfig": {"Memory": 64 << 20, "MemorySwap": 32 << 20}}, "--memory-swap")


def test_swap_without_memory_is_refused():
    refused({"HostConfig": {"MemorySwap": 64 << 20}}, "--memory")


def test_unsupported_options_are_refused_not_ignored():
    refused({"Tty": True}, "TTY", "Tty")
    refused({"HostConfig": {"Binds": ["/a:/b"]}}, "Binds")


def test_bridge_network_is_refused_with_the_modes_that_work():
    refused({"HostConfig": {"NetworkMode": "bridge"}}, "none", "host")


def test_default_network_means_own_namespace():
    assert spec({"HostConfig": {"NetworkMode": "default"}}).host_config["NetworkMode"] == "none"


def test_log_options_are_checked_and_defaulted():
    s = spec({})
    assert s.host_config["LogConfig"]["Config"] == {"max-size": "20m", "max-file": "5"}
    refused({"HostConfig": {"LogConfig": {"Config": {"max-size": "lots"}}}}, "max-size")
    refused({"HostConfig": {"LogConfig": {"Config": {"max-file": "0"}}}}, "max-file")
    refused({"HostConfig": {"LogConfig": {"Type": "syslog"}}}, "syslog")


@pytest.mark.parametrize(
    "policy, words",
    [
        ({"Name": "always", "MaximumRetryCount": 3}, ["maximum retry count", "on-failure"]),
        ({"Name": "on-failure", "MaximumRetryCount": -1}, ["negative"]),
        ({"Name": "bogus"}, ["bogus", "no", "always", "on-failure", "unless-stopped"]),
    ],
)
def test_invalid_restart_policies_say_what_is_wrong(policy, words):
    with pytest.raises(BadParameter) as info:
        check_restart_policy(policy, auto_remove=False)
    for word in words:
        assert word in info.value.message


def test_auto_remove_with_a_restart_policy_is_refused():
    with pytest.raises(BadParameter, match="AutoRemove"):
        check_restart_policy({"Name": "unless-stopped"}, auto_remove=True)


def test_empty_policy_is_stored_as_no():
    assert check_restart_policy({"Name": ""}, False) == {"Name": "no", "MaximumRetryCount": 0}
    assert check_restart_policy({"Name": "on-failure"}, False)["MaximumRetryCount"] == 0


@pytest.mark.parametrize("value, number", [("9", 9), ("KILL", 9), ("SIGTERM", 15), ("usr1", 10)])
def test_signals_parse_by_name_or_number(value, number):
    assert parse_signal(value) == number


@pytest.mark.parametrize("value", ["SIGBOGUS", "0", "999", "", "a b"])
def test_bad_signals_are_refused(value):
    with pytest.raises(BadParameter, match="invalid signal"):
        parse_signal(value)
