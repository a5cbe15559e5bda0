"""The image store: loading both archive formats, verifying, unpacking safely,
tags, removal and lookup. Archives are written by tests/imagebuild.py."""

import io
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import imagebuild as ib
import pytest

from runtime.images import ImageError, ImageNotFound, ImageStore, normalize_reference

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT,
    reason="needs root: chown to other users, mknod of devices, trusted.* xattrs",
)
FORMATS = ["oci", "docker-blobs", "docker-legacy"]
COMPRESSIONS = ["none", "gzip", "zstd"]
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(
    platform.machine(), platform.machine()
)


@pytest.fixture
def store_root(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def store(store_root):
    return ImageStore(store_root, keep_ownership=IS_ROOT)


class Archives:
    """Writes numbered archives under a directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.count = 0

    def write(self, images, fmt="oci", **options) -> Path:
        self.count += 1
        path = self.directory / f"archive-{self.count}.tar"
        if fmt == "oci":
            ib.write_oci_archive(path, images, **options)
        else:
            layout = fmt.removeprefix("docker-")
            ib.write_docker_archive(path, images, layout=layout, **options)
        return path


@pytest.fixture
def archives(tmp_path):
    return Archives(tmp_path)


def listing(root: Path) -> list[tuple]:
    """What a store holds on disk, for before/after comparisons."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            is_dir = stat.S_ISDIR(st.st_mode)
            entries.append(
                (
                    os.path.relpath(path, root),
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    None if is_dir else (st.st_size, st.st_mtime_ns),
                    st.st_rdev,
                    os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
                )
            )
    return sorted(entries)


def small_image(tags=("demo:1",), **fields) -> ib.ImageSpec:
    layers = [
        {"bin": ib.Dir(), "bin/hello": ib.File("#!/bin/sh\necho hi\n", mode=0o755)},
        {"etc": ib.Dir(), "etc/motd": "hello\n"},
    ]
    fields.setdefault("cmd", ["/bin/hello"])
    fields.setdefault("env", [ib.DEFAULT_PATH, "A=1"])
    return ib.ImageSpec(layers=layers, tags=list(tags), **fields)


# --- loading ------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_loads_each_format_with_each_layer_compression(
    store, archives, fmt, compression
):
    spec = small_image(config={"WorkingDir": "/srv", "Labels": {"k": "v"}})
    path = archives.write([spec], fmt, compression=compression)
    built = ib.build_image(spec, compression)

    [image] = store.load(path)

    assert image.id == built.id
    assert image.repo_tags == ["demo:1"]
    assert image.config == {
        "Cmd": ["/bin/hello"],
        "Env": [ib.DEFAULT_PATH, "A=1"],
        "WorkingDir": "/srv",
        "Labels": {"k": "v"},
    }
    assert (image.architecture, image.os) == ("amd64", "linux")
    assert image.created == "2024-01-01T00:00:00Z"
    assert image.diff_ids == [layer.diff_id for layer in built.layers]
    assert image.size == len("#!/bin/sh\necho hi\n") + len("hello\n")
    top, bottom = store.layer_dirs(image)
    assert (top / "etc/motd").read_text() == "hello\n"
    assert (bottom / "bin/hello").read_text() == "#!/bin/sh\necho hi\n"
    assert not (top / "bin").exists()
    assert store.get("demo:1") == image
    assert store.list() == [image]


def test_loads_a_whole_archive_compressed_with_gzip(store, archives, tmp_path):
    path = archives.write([small_image()], "docker-legacy")
    gz = tmp_path / "archive.tar.gz"
    gz.write_bytes(ib.compress(path.read_bytes(), "gzip"))

    [image] = store.load(gz)

    assert image.repo_tags == ["demo:1"]


def test_loads_several_images_from_one_archive(store, archives):
    first = small_image(tags=["one:1"])
    second = ib.ImageSpec(layers=[{"x": "x\n"}], tags=["two:2", "two:latest"])

    images = store.load(archives.write([first, second], "docker-blobs"))

    assert [i.repo_tags for i in images] == [["one:1"], ["two:2", "two:latest"]]
    assert store.get("two").id == images[1].id


@needs_root
def test_unpacks_owners_modes_times_links_and_special_files(store, archives):
    layer = {
        ".": ib.Dir(mode=0o755),
        "usr": ib.Dir(mode=0o555, mtime=1_600_000_000),
        "usr/bin": ib.Dir(),
        "usr/bin/su": ib.File("su", mode=0o4755),
        "usr/bin/ping": ib.File("ping", mode=0o755, xattrs={"user.note": "kept"}),
        "home": ib.Dir(),
        "home/app": ib.Dir(mode=0o750, uid=1000, gid=1001),
        "home/app/secret": ib.File(
            "s", mode=0o640, uid=1000, gid=1001, mtime=1_500_000_000
        ),
        "home/app/rel": ib.Symlink("secret"),
        "home/app/abs": ib.Symlink("/etc/passwd", uid=1000, gid=1001),
        "home/app/hard": ib.Hardlink("home/app/secret"),
        "dev": ib.Dir(),
        "dev/null": ib.Device(1, 3, mode=0o666),
        "dev/loop0": ib.Device(7, 0, kind="b", mode=0o660),
        "run": ib.Dir(),
        "run/fifo": ib.Fifo(mode=0o620),
    }
    [image] = store.load(archives.write([ib.ImageSpec(layers=[layer])]))
    [root] = store.layer_dirs(image)

    su = os.lstat(root / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and (su.st_uid, su.st_gid) == (0, 0)
    assert os.getxattr(root / "usr/bin/ping", "user.note") == b"kept"
    usr = os.lstat(root / "usr")
    assert stat.S_IMODE(usr.st_mode) == 0o555
    assert usr.st_mtime == 1_600_000_000
    app = os.lstat(root / "home/app")
    assert (stat.S_IMODE(app.st_mode), app.st_uid, app.st_gid) == (0o750, 1000, 1001)
    secret = os.lstat(root / "home/app/secret")
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid) == (0o640, 1000)
    assert secret.st_mtime == 1_500_000_000
    assert os.readlink(root / "home/app/rel") == "secret"
    assert os.readlink(root / "home/app/abs") == "/etc/passwd"
    assert os.lstat(root / "home/app/abs").st_uid == 1000
    hard = os.lstat(root / "home/app/hard")
    assert hard.st_ino == secret.st_ino and hard.st_nlink == 2
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0)
    fifo = os.lstat(root / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620


def whiteout_image() -> ib.ImageSpec:
    lower = {
        "a": ib.Dir(),
        "a/keep": "keep\n",
        "a/gone": "gone\n",
        "d": ib.Dir(),
        "d/old": "old\n",
        "d/sub": ib.Dir(),
        "d/sub/x": "x\n",
    }
    upper = {"a/gone": ib.Whiteout(), "d": ib.Opaque(), "d/new": "new\n"}
    return ib.ImageSpec(layers=[lower, upper], tags=["wh:1"])


@needs_root
@pytest.mark.parametrize("fmt", ["oci", "docker-legacy"])
def test_whiteouts_are_stored_in_overlay_form(store, archives, fmt):
    [image] = store.load(archives.write([whiteout_image()], fmt))
    upper, _ = store.layer_dirs(image)

    gone = os.lstat(upper / "a/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "d", "trusted.overlay.opaque") == b"y"
    assert (upper / "d/new").read_text() == "new\n"
    assert not (upper / "d/.wh..wh..opq").exists()
    assert not (upper / "a/.wh.gone").exists()


def test_a_whiteout_becomes_a_0_0_character_device_without_root(store, archives):
    # Since Linux 5.8 anyone may create the 0:0 whiteout device.
    spec = ib.ImageSpec(layers=[{"f": "f\n"}, {"f": ib.Whiteout()}])
    [image] = store.load(archives.write([spec]))

    entry = os.lstat(store.layer_dirs(image)[0] / "f")

    assert stat.S_ISCHR(entry.st_mode) and entry.st_rdev == 0


@needs_root
def test_an_overlay_of_the_layers_hides_what_the_upper_layer_deleted(
    store, archives, tmp_path
):
    [image] = store.load(archives.write([whiteout_image()]))
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = ":".join(str(p) for p in store.layer_dirs(image))

    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lowerdir}",
            str(merged),
        ],
        check=True,
    )
    try:
        assert sorted(os.listdir(merged / "a")) == ["keep"]
        assert sorted(os.listdir(merged / "d")) == ["new"]
        assert (merged / "d/new").read_text() == "new\n"
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_layers_shared_by_images_are_stored_once(store, store_root, archives):
    base = {"lib": ib.Dir(), "lib/libc": "libc\n"}
    first = ib.ImageSpec(layers=[base, {"a": "a\n"}], tags=["first:1"])
    second = ib.ImageSpec(layers=[base, {"b": "b\n"}], tags=["second:1"])

    [one] = store.load(archives.write([first], "oci", compression="gzip"))
    [two] = store.load(archives.write([second], "docker-legacy"))

    assert len(os.listdir(store_root / "layers")) == 3
    assert store.layer_dirs(one)[-1] == store.layer_dirs(two)[-1]
    assert one.diff_ids[0] == two.diff_ids[0]


def test_a_layer_repeated_in_one_image_is_given_once_at_its_top_most_place(
    store, archives
):
    x, y = {"x": "x\n"}, {"y": "y\n"}
    [image] = store.load(archives.write([ib.ImageSpec(layers=[x, y, x])]))

    dirs = store.layer_dirs(image)

    assert len(image.diff_ids) == 3
    assert [sorted(os.listdir(d)) for d in dirs] == [["x"], ["y"]]


# --- verification -----------------------------------------------------------


@pytest.fixture
def loaded(store, archives):
    """A store that already holds an image, and its listing on disk."""
    store.load(archives.write([small_image(tags=["before:1"])]))
    return store


def assert_rejected(store, store_root, path, *fragments) -> str:
    before = listing(store_root)
    with pytest.raises(ImageError) as caught:
        store.load(path)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert "nothing was loaded" in message
    assert listing(store_root) == before
    assert os.listdir(store_root / "tmp") == []
    assert [i.repo_tags for i in store.list()] == [["before:1"]]
    return message


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_an_oci_layer_blob_with_a_wrong_digest_is_rejected(
    loaded, store_root, archives, compression
):
    spec = small_image(tags=["bad:1"])
    expected = ib.build_image(spec, compression).layers[1].digest
    path = archives.write(
        [spec], compression=compression, tamper=ib.Tamper(layer_blob=1)
    )

    message = assert_rejected(loaded, store_root, path, "blobs/sha256/" + expected[7:])

    assert f"should have digest {expected}" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_layer_that_does_not_match_its_diff_id_is_rejected(
    loaded, store_root, archives, fmt
):
    path = archives.write(
        [small_image(tags=["bad:1"])], fmt, tamper=ib.Tamper(diff_id=1)
    )

    message = assert_rejected(loaded, store_root, path, "diff_id")

    assert "corrupt or truncated" in message


@pytest.mark.parametrize("fmt", ["docker-blobs", "docker-legacy"])
def test_a_docker_archive_config_that_does_not_match_the_image_id_is_rejected(
    loaded, store_root, archives, fmt
):
    built = ib.build_image(small_image(tags=["bad:1"]), tamper=ib.Tamper(config=True))
    path = archives.write([built], fmt)

    message = assert_rejected(loaded, store_root, path, "image config", built.id[7:])

    assert f"should have digest {built.id}" in message


def test_an_oci_config_with_a_wrong_digest_is_rejected(loaded, store_root, archives):
    built = ib.build_image(small_image(tags=["bad:1"]), tamper=ib.Tamper(config=True))
    path = archives.write([built], "oci")

    assert_rejected(loaded, store_root, path, "blobs/sha256/" + built.id[7:])


def archive_cut_points(path: Path) -> dict[str, int]:
    """Offsets to cut an archive at: inside data, and at a member boundary."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    biggest = max(members, key=lambda m: m.size)
    return {
        "inside-the-biggest-member": biggest.offset_data + biggest.size // 2,
        "inside-the-last-member": members[-1].offset_data + members[-1].size - 1,
        "at-the-last-member-header": members[-1].offset,
        "before-the-end-marker": members[-1].offset_data + members[-1].size,
    }


@pytest.mark.parametrize(
    "cut",
    [
        "inside-the-biggest-member",
        "inside-the-last-member",
        "at-the-last-member-header",
        "before-the-end-marker",
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_archive_is_rejected(loaded, store_root, archives, fmt, cut):
    spec = ib.ImageSpec(layers=[{"big": os.urandom(64 << 10)}, {"x": "x\n"}])
    path = archives.write([spec], fmt)
    ib.truncate_file(path, archive_cut_points(path)[cut])

    assert_rejected(loaded, store_root, path, "truncated")


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_truncated_compressed_layer_is_rejected(
    loaded, store_root, archives, compression
):
    built = ib.build_image(
        ib.ImageSpec(layers=[{"big": os.urandom(64 << 10)}]), compression
    )
    built.layers[0].blob = built.layers[0].blob[: len(built.layers[0].blob) // 2]
    path = archives.write([built], "docker-legacy")

    assert_rejected(
        loaded, store_root, path, f"{compression} stream is corrupt or truncated"
    )


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_corrupt_compressed_layer_is_rejected(
    loaded, store_root, archives, compression
):
    # docker-archive has no blob digests, so the decompressor meets the damage.
    spec = ib.ImageSpec(layers=[{"big": os.urandom(64 << 10)}])
    path = archives.write(
        [spec], "docker-legacy", compression=compression, tamper=ib.Tamper(layer_blob=0)
    )

    assert_rejected(loaded, store_root, path, f"{compression} stream is corrupt")


def test_a_layer_tar_cut_at_a_member_boundary_is_rejected(loaded, store_root, archives):
    built = ib.build_image(ib.ImageSpec(layers=[{"a": "a\n", "b": "b\n"}]))
    tar = built.layers[0].tar
    with tarfile.open(fileobj=io.BytesIO(tar)) as parsed:
        cut = parsed.getmember("b").offset
    built.layers[0].blob = built.layers[0].tar = tar[:cut]
    path = archives.write([built], "docker-legacy")

    assert_rejected(loaded, store_root, path, "end-of-archive marker")


def test_a_file_that_is_not_a_tar_is_rejected(loaded, store_root, tmp_path):
    path = tmp_path / "junk.tar"
    path.write_bytes(os.urandom(4096))

    assert_rejected(loaded, store_root, path, "not a valid tar archive")


def test_a_tar_that_is_no_image_archive_is_rejected(loaded, store_root, tmp_path):
    path = tmp_path / "other.tar"
    path.write_bytes(ib.layer_tar({"README": "hi\n"}))

    assert_rejected(loaded, store_root, path, "neither a docker-archive")


# --- unsafe layers ------------------------------------------------------------

# A directory outside every store that unsafe layers aim at; it must stay empty.
OUTSIDE = f"/tmp/corral-images-test-outside-{os.getpid()}"

UNSAFE_LAYERS = {
    "absolute-path": (
        {"/etc/corral-evil": "x"},
        "'/etc/corral-evil' has an absolute path",
    ),
    "dotdot": ({"../evil": "x"}, "'../evil' has a '..' component"),
    "dotdot-inside": ({"a/../../evil": "x"}, "'a/../../evil' has a '..' component"),
    "hardlink-absolute": (
        {"h": ib.Hardlink("/etc/passwd")},
        "hardlink 'h' -> '/etc/passwd' has an absolute target",
    ),
    "hardlink-outside": (
        {"h": ib.Hardlink("../../etc/passwd")},
        "hardlink 'h' -> '../../etc/passwd' has a '..' component",
    ),
    "hardlink-missing": (
        {"h": ib.Hardlink("etc/shadow")},
        "hardlink 'h' points to 'etc/shadow', which is not in this layer",
    ),
    "hardlink-through-symlink": (
        {"l": ib.Symlink("/etc"), "h": ib.Hardlink("l/passwd")},
        "hardlink 'h' -> 'l/passwd' goes through the symlink 'l'",
    ),
    "file-through-symlink": (
        {"l": ib.Symlink(OUTSIDE), "l/evil": "x"},
        "member 'l/evil' would be written through the symlink 'l'",
    ),
    "dir-through-symlink": (
        {"a": ib.Dir(), "a/l": ib.Symlink(OUTSIDE), "a/l/sub": ib.Dir()},
        "member 'a/l/sub' would be written through the symlink 'a/l'",
    ),
    "whiteout-through-symlink": (
        {"l": ib.Symlink(OUTSIDE), "l/victim": ib.Whiteout()},
        "member 'l/.wh.victim' would be written through the symlink 'l'",
    ),
    "symlink-escape": (
        {"a": ib.Dir(), "a/s": ib.Symlink("../../etc")},
        "symlink 'a/s' -> '../../etc' climbs out of the layer root",
    ),
    "trusted-xattr": (
        {"f": ib.File("x", xattrs={"trusted.overlay.redirect": "/x"})},
        "member 'f' carries the xattr 'trusted.overlay.redirect'",
    ),
}


@pytest.fixture
def outside():
    path = Path(OUTSIDE)
    path.mkdir(exist_ok=True)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("fmt", ["oci", "docker-legacy"])
@pytest.mark.parametrize("case", UNSAFE_LAYERS, ids=list(UNSAFE_LAYERS))
def test_an_unsafe_layer_is_rejected_naming_the_member(
    loaded, store_root, archives, outside, fmt, case
):
    layer, fragment = UNSAFE_LAYERS[case]
    good = {"ok": ib.Dir(), "ok/file": "fine\n"}
    spec = ib.ImageSpec(layers=[good, layer], tags=["evil:1"])
    diff_id = ib.build_layer(layer).diff_id

    message = assert_rejected(loaded, store_root, archives.write([spec], fmt), fragment)

    assert f"layer {diff_id}" in message
    assert not Path("/etc/corral-evil").exists()
    assert os.listdir(outside) == []


def test_a_symlink_that_stays_inside_the_layer_is_kept(store, archives):
    layer = {"a": ib.Dir(), "a/b": ib.Dir(), "a/b/s": ib.Symlink("../../etc/x")}
    [image] = store.load(archives.write([ib.ImageSpec(layers=[layer])]))

    assert os.readlink(store.layer_dirs(image)[0] / "a/b/s") == "../../etc/x"


def test_a_later_member_replaces_an_earlier_symlink_instead_of_following_it(
    store, archives, outside
):
    layer = {"l": ib.Symlink(OUTSIDE), "l/": ib.Dir()}
    [image] = store.load(archives.write([ib.ImageSpec(layers=[layer])]))

    assert os.path.isdir(store.layer_dirs(image)[0] / "l")
    assert not os.path.islink(store.layer_dirs(image)[0] / "l")
    assert os.listdir(outside) == []


# --- tags, removal, lookup ------------------------------------------------


def test_loading_a_tag_another_image_holds_moves_the_tag(store, store_root, archives):
    [old] = store.load(archives.write([small_image(tags=["app:1", "app:old"])]))
    newer = ib.ImageSpec(layers=[{"v2": "2\n"}], tags=["app:1"])

    [new] = store.load(archives.write([newer], "docker-blobs"))

    assert store.get("app:1").id == new.id
    assert store.get(old.id).repo_tags == ["app:old"]
    saved = json.loads((store_root / "repositories.json").read_text())
    assert saved["Repositories"]["app"] == {"app:1": new.id, "app:old": old.id}


def test_an_image_that_loses_its_last_tag_stays_as_dangling(store, archives):
    [old] = store.load(archives.write([small_image(tags=["app:1"])]))
    store.load(archives.write([ib.ImageSpec(layers=[{"v2": "2\n"}], tags=["app:1"])]))

    assert store.get(old.id).repo_tags == []
    assert len(store.list()) == 2


def test_loading_the_same_image_again_only_adds_tags(store, store_root, archives):
    store.load(archives.write([small_image(tags=["a:1"])]))
    before = listing(store_root / "layers")

    [image] = store.load(archives.write([small_image(tags=["b:1"])], "docker-legacy"))

    assert image.repo_tags == ["a:1", "b:1"]
    assert listing(store_root / "layers") == before


def test_removing_one_of_several_tags_only_untags(store, archives):
    [image] = store.load(archives.write([small_image(tags=["a:1", "b:1"])]))

    assert store.remove("a:1") == [{"Untagged": "a:1"}]
    assert store.get(image.id).repo_tags == ["b:1"]


def test_removing_the_last_tag_deletes_the_image_and_its_layers(
    store, store_root, archives
):
    [image] = store.load(archives.write([small_image(tags=["a:1"])]))

    result = store.remove("docker.io/library/a:1")

    assert result == [
        {"Untagged": "a:1"},
        {"Deleted": image.id},
        *({"Deleted": d} for d in image.diff_ids),
    ]
    assert store.list() == []
    assert os.listdir(store_root / "layers") == []
    assert os.listdir(store_root / "images") == []
    assert os.listdir(store_root / "tmp") == []


def test_removing_by_id_drops_every_tag(store, archives):
    [image] = store.load(archives.write([small_image(tags=["b:1", "a:1"])]))

    result = store.remove(image.id[7:19])

    assert result[:3] == [
        {"Untagged": "a:1"},
        {"Untagged": "b:1"},
        {"Deleted": image.id},
    ]
    with pytest.raises(ImageNotFound):
        store.get("a:1")


def test_removing_an_image_keeps_the_layers_another_image_uses(store, archives):
    base = {"base": "base\n"}
    [one] = store.load(
        archives.write([ib.ImageSpec(layers=[base, {"1": "1"}], tags=["one:1"])])
    )
    [two] = store.load(
        archives.write([ib.ImageSpec(layers=[base, {"2": "2"}], tags=["two:1"])])
    )

    result = store.remove("one:1")

    assert {"Deleted": one.diff_ids[1]} in result
    assert {"Deleted": one.diff_ids[0]} not in result
    assert [p.is_dir() for p in store.layer_dirs(two)] == [True, True]


def test_removing_an_unknown_image_says_no_such_image(store):
    with pytest.raises(ImageNotFound, match="^No such image: nope:1$"):
        store.remove("nope:1")


def test_get_finds_an_image_by_name_id_and_id_prefix(store, archives):
    [image] = store.load(archives.write([small_image(tags=["demo:latest"])]))
    hex_id = image.id[7:]

    for ref in (
        "demo",
        "demo:latest",
        "docker.io/library/demo",
        image.id,
        hex_id,
        hex_id[:12],
        "sha256:" + hex_id[:5],
    ):
        assert store.get(ref).id == image.id, ref


def test_get_of_an_unknown_reference_says_no_such_image(store, archives):
    store.load(archives.write([small_image(tags=["demo:1"])]))

    for ref in (
        "demo",
        "demo:2",
        "sha256:" + "0" * 64,
        "BadName",
        "x@sha256:" + "0" * 64,
    ):
        with pytest.raises(ImageNotFound, match=f"^No such image: {ref}$"):
            store.get(ref)


def two_images_with_a_common_id_prefix() -> tuple[ib.BuiltImage, ib.BuiltImage]:
    seen: dict[str, ib.BuiltImage] = {}
    for n in range(64):
        built = ib.build_image(
            ib.ImageSpec(layers=[{"f": "f"}], config={"Labels": {"n": str(n)}})
        )
        first = built.id[7]
        if first in seen:
            return seen[first], built
        seen[first] = built
    raise AssertionError("no two of 64 image ids share a first hex digit")


def test_an_ambiguous_id_prefix_is_an_error_not_a_miss(store, archives):
    one, two = two_images_with_a_common_id_prefix()
    store.load(archives.write([one, two]))

    with pytest.raises(ImageError, match="ambiguous") as caught:
        store.get(one.id[7])

    assert not isinstance(caught.value, ImageNotFound)


def test_a_tag_wins_over_an_id_prefix_that_reads_the_same(store, archives):
    [other] = store.load(archives.write([ib.ImageSpec(layers=[{"o": "o"}])]))
    prefix = other.id[7:13]
    [tagged] = store.load(archives.write([small_image(tags=[f"{prefix}:latest"])]))

    assert store.get(prefix).id == tagged.id


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:test", "busybox:test"),
        ("docker.io/library/busybox:test", "busybox:test"),
        ("index.docker.io/library/busybox", "busybox:latest"),
        ("docker.io/foo/bar:1.2", "foo/bar:1.2"),
        ("foo/bar", "foo/bar:latest"),
        ("localhost/x", "localhost/x:latest"),
        ("localhost:5000/x/y:z", "localhost:5000/x/y:z"),
        ("quay.io/org/app:v1-rc.2", "quay.io/org/app:v1-rc.2"),
        ("registry:5000/app", "registry:5000/app:latest"),
    ],
)
def test_references_normalise_the_way_docker_shows_them(ref, expected):
    assert normalize_reference(ref) == expected


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("BusyBox", "must be lowercase"),
        ("busybox@sha256:" + "0" * 64, "has a digest"),
        ("busybox:", "bad tag"),
        ("", "invalid reference format"),
        ("-x", "invalid reference format"),
        ("a" * 64, "image ID, not a name"),
    ],
)
def test_malformed_references_are_refused(ref, fragment):
    with pytest.raises(ImageError, match=fragment):
        normalize_reference(ref)


# --- OCI names and indexes ------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [("containerd", ["busybox:test"]), ("ref", ["busybox:test"]), ("short", [])],
)
def test_oci_index_annotations_name_the_image(store, archives, names, expected):
    spec = ib.ImageSpec(layers=[{"x": "x"}], tags=["busybox:test"])

    [image] = store.load(archives.write([spec], names=names))

    assert image.repo_tags == expected


def test_an_oci_image_index_gives_the_manifest_for_this_host(
    store, store_root, archives
):
    spec = ib.ImageSpec(
        layers=[{"host": "yes\n"}], tags=["multi:1"], architecture=HOST_ARCH
    )

    [image] = store.load(archives.write([spec], platform_index=True))

    assert image.architecture == HOST_ARCH
    assert len(os.listdir(store_root / "layers")) == 1


def test_an_oci_index_without_this_hosts_platform_is_rejected(
    loaded, store_root, archives
):
    spec = ib.ImageSpec(layers=[{"x": "x"}], tags=["multi:1"], architecture="s390x")
    path = archives.write([spec], platform_index=True)

    assert_rejected(loaded, store_root, path, f"no manifest for linux/{HOST_ARCH}")


# --- the store on disk --------------------------------------------------------


def test_a_reopened_store_has_the_same_images_and_tags(store, store_root, archives):
    [image] = store.load(archives.write([small_image(tags=["a:1", "b:2"])]))

    reopened = ImageStore(store_root, keep_ownership=IS_ROOT)

    assert reopened.list() == [image]
    assert reopened.layer_dirs(image) == store.layer_dirs(image)


def test_opening_a_store_clears_staging_left_by_a_crash(store_root):
    ImageStore(store_root, keep_ownership=IS_ROOT)
    leftover = store_root / "tmp" / "load-crashed" / "layers" / "x" / "diff" / "ro"
    leftover.mkdir(parents=True)
    (leftover / "f").write_text("x")
    leftover.chmod(0o555)

    ImageStore(store_root, keep_ownership=IS_ROOT)

    assert os.listdir(store_root / "tmp") == []


def test_opening_a_store_removes_layers_no_image_uses(store, store_root, archives):
    [image] = store.load(archives.write([small_image()]))
    orphan = store_root / "layers" / ("f" * 64) / "diff"
    orphan.mkdir(parents=True)

    reopened = ImageStore(store_root, keep_ownership=IS_ROOT)

    assert sorted(os.listdir(store_root / "layers")) == sorted(
        d[7:] for d in image.diff_ids
    )
    assert reopened.get("demo:1").id == image.id


def test_layer_directories_are_private_to_root(store, store_root):
    for name in ("layers", "images", "tmp"):
        assert stat.S_IMODE(os.stat(store_root / name).st_mode) == 0o700


def test_concurrent_loads_both_succeed_and_share_layers(store, store_root, archives):
    base = {"base": os.urandom(256 << 10)}
    paths = [
        archives.write([ib.ImageSpec(layers=[base, {f"n{n}": "x"}], tags=[f"c:{n}"])])
        for n in range(4)
    ]
    errors = []

    def load(path):
        try:
            store.load(path)
        except ImageError as err:
            errors.append(err)

    threads = [threading.Thread(target=load, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(t for i in store.list() for t in i.repo_tags) == [
        f"c:{n}" for n in range(4)
    ]
    assert len(os.listdir(store_root / "layers")) == 5


def test_a_docker_archive_may_point_at_a_layer_through_a_symlink(store, tmp_path):
    # Older `docker save` writes a repeated layer once and links to it.
    built = ib.build_image(ib.ImageSpec(layers=[{"x": "x\n"}, {"x": "x\n"}]))
    path = tmp_path / "linked.tar"
    manifest = [
        {
            "Config": "c.json",
            "RepoTags": ["linked:1"],
            "Layers": ["a/layer.tar", "b/layer.tar"],
        }
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("c.json", built.config),
            ("a/layer.tar", built.layers[0].blob),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../a/layer.tar"
        tar.addfile(link)

    [image] = store.load(path)

    assert image.repo_tags == ["linked:1"]
    assert len(store.layer_dirs(image)) == 1


def test_a_docker_archive_with_a_malformed_tag_is_rejected(
    loaded, store_root, archives
):
    path = archives.write([small_image(tags=["Not/Valid:1"])], "docker-blobs")

    assert_rejected(loaded, store_root, path, "bad RepoTags", "must be lowercase")


@pytest.mark.skipif(IS_ROOT, reason="checks the error seen without root")
def test_without_root_an_opaque_directory_is_refused_clearly(
    store, store_root, archives
):
    path = archives.write([whiteout_image()])

    with pytest.raises(ImageError, match="needs CAP_SYS_ADMIN; load images as root"):
        store.load(path)
    assert os.listdir(store_root / "tmp") == []


@pytest.mark.skipif(IS_ROOT, reason="checks the error seen without root")
def test_without_root_keeping_owners_is_refused_clearly(store_root, archives):
    store = ImageStore(store_root)
    path = archives.write([ib.ImageSpec(layers=[{"f": ib.File("x", uid=1000)}])])

    with pytest.raises(ImageError, match="member 'f' its owner 1000:0 .*needs root"):
        store.load(path)


def test_opening_a_store_with_a_damaged_record_says_which_file(
    store, store_root, archives
):
    [image] = store.load(archives.write([small_image()]))
    record = store_root / "images" / (image.id[7:] + ".json")
    record.write_text('{"id": "' + image.id + '"}')

    with pytest.raises(ImageError, match=f"image record {record} is unreadable"):
        ImageStore(store_root, keep_ownership=IS_ROOT)
