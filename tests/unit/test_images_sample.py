"""The sample image busybox:test, as tests/images/build-sample.sh writes it
with umoci and skopeo, loads from both of its archives."""

import os
import shutil
import stat
import subprocess
from glob import glob
from pathlib import Path

import pytest

from runtime.images import ImageStore

SCRIPT = Path(__file__).resolve().parents[1] / "images" / "build-sample.sh"
MISSING_TOOLS = [
    t for t in ("umoci", "skopeo", "jq", "dpkg-deb") if not shutil.which(t)
]
HAS_BUSYBOX = bool(glob("/var/cache/apt/archives/busybox-static_*.deb")) or (
    subprocess.run(
        ["dpkg", "-L", "busybox-static"], capture_output=True, check=False
    ).returncode
    == 0
)

pytestmark = [
    pytest.mark.skipif(
        bool(MISSING_TOOLS),
        reason=f"build-sample.sh needs {', '.join(MISSING_TOOLS)} (apt-get install them)",
    ),
    pytest.mark.skipif(
        not HAS_BUSYBOX,
        reason="build-sample.sh needs Debian's busybox-static (apt-get install busybox-static)",
    ),
]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    built = subprocess.run(
        [str(SCRIPT), str(out)], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        pytest.fail(f"build-sample.sh failed:\n{built.stderr}")
    return out


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "store", keep_ownership=os.geteuid() == 0)


@pytest.mark.parametrize("archive", ["busybox-oci.tar", "busybox-docker.tar"])
def test_the_sample_archive_loads_as_busybox_test(store, sample_dir, archive):
    [image] = store.load(sample_dir / archive)

    assert image.repo_tags == ["busybox:test"]
    assert image.config["Cmd"] == ["sh"]
    assert image.config["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ]
    assert "ExposedPorts" not in image.config
    assert (image.os, len(image.diff_ids)) == ("linux", 1)
    assert store.get("docker.io/library/busybox:test") == image


def test_both_sample_archives_hold_the_same_image(store, sample_dir):
    [oci] = store.load(sample_dir / "busybox-oci.tar")
    [docker] = store.load(sample_dir / "busybox-docker.tar")

    assert oci.id == docker.id
    assert len(store.list()) == 1


def test_the_sample_rootfs_has_busybox_its_applets_and_users(store, sample_dir):
    [image] = store.load(sample_dir / "busybox-oci.tar")
    [root] = store.layer_dirs(image)

    for applet in ("sh", "sleep", "httpd", "wget", "awk", "seq", "ps"):
        assert os.readlink(root / "bin" / applet) == "busybox"
    assert "nobody:x:65534:65534:" in (root / "etc/passwd").read_text()
    assert "nobody:x:65534:" in (root / "etc/group").read_text()
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(root / "root").st_mode) == 0o700
    assert (root / "home").is_dir()
    echoed = subprocess.run(
        [str(root / "bin/busybox"), "echo", "ok"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert echoed.stdout == "ok\n"


def test_building_the_sample_again_gives_the_same_image(store, sample_dir):
    [before] = store.load(sample_dir / "busybox-docker.tar")
    inode = (sample_dir / "busybox-docker.tar").stat().st_ino

    subprocess.run([str(SCRIPT), str(sample_dir)], check=True, capture_output=True)

    assert (sample_dir / "busybox-docker.tar").stat().st_ino != inode
    assert sorted(os.listdir(sample_dir)) == ["busybox-docker.tar", "busybox-oci.tar"]
    [after] = store.load(sample_dir / "busybox-oci.tar")
    assert after.id == before.id


def test_the_sample_script_fails_loudly_without_an_output_dir():
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, check=False)

    assert result.returncode != 0
    assert "usage:" in result.stderr
