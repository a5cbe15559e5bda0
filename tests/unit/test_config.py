from pathlib import Path

import pytest

from supervisor.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "corrald.toml"
    path.write_text(text)
    return str(path)


def test_flags_beat_environment_which_beats_the_file(tmp_path):
    path = write(tmp_path, 'socket = "/file.sock"\nroot = "/file-root"\nlog_level = "debug"\n')
    env = {"CORRAL_SOCKET": "/env.sock", "CORRAL_ROOT": "/env-root"}
    config = load_config({"config": path, "socket": "/flag.sock"}, env)
    assert config.socket == Path("/flag.sock")
    assert config.root == Path("/env-root")
    assert config.log_level == "debug"


def test_defaults_apply_when_nothing_is_set(tmp_path):
    config = load_config({"config": write(tmp_path, "")}, {})
    assert config.socket == Path("/run/corral/corral.sock")
    assert config.root == Path("/var/lib/corral")
    assert config.cgroup_parent == "corral"


def test_a_named_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({"config": str(tmp_path / "missing.toml")}, {})


def test_unknown_settings_and_bad_levels_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config({"config": write(tmp_path, "sockit = 1\n")}, {})
    with pytest.raises(ConfigError, match="log level"):
        load_config({"config": write(tmp_path, ""), "log_level": "loud"}, {})


def test_broken_toml_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({"config": write(tmp_path, "socket = \n")}, {})
