"""`corral load`, `corral images` and `corral rmi` against a real corrald:
docker-archive and OCI tarballs, compressed layers, whiteouts, corrupt
archives and removal."""

import json
import secrets

import pytest
from imagebuild import (
    Tamper,
    Whiteout,
    busybox_image,
    truncate_file,
    write_docker_archive,
    write_oci_archive,
)


def new_tag(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}:v1"


def image_tags(daemon) -> list[str]:
    return [
        tag
        for image in daemon.api("GET", "/images/json")
        for tag in image["RepoTags"] or []
    ]


def marked_image(tag: str):
    """busybox plus a layer with /marker holding the tag."""
    return busybox_image([tag], extra_layers=[{"marker": f"{tag}\n"}])


WRITERS = {
    "docker-archive": lambda path, image, c: write_docker_archive(
        path, [image], compression=c
    ),
    "docker-archive legacy": lambda path, image, c: write_docker_archive(
        path, [image], layout="legacy", compression=c
    ),
    "oci": lambda path, image, c: write_oci_archive(path, [image], compression=c),
}


# Legacy docker-archive layers are always plain tar.
FORMATS = [
    (fmt, c)
    for fmt in WRITERS
    for c in ("none", "gzip", "zstd")
    if fmt != "docker-archive legacy" or c == "none"
]


@pytest.mark.parametrize(
    "fmt, compression", FORMATS, ids=[f"{fmt} {c}" for fmt, c in FORMATS]
)
def test_a_loaded_image_is_listed_and_runs_with_its_layers(
    daemon, tmp_path, fmt, compression
):
    tag = new_tag(f"load-{compression}")
    archive = tmp_path / "image.tar"
    built = WRITERS[fmt](archive, marked_image(tag), compression)

    loaded = daemon.cli("load", "-i", str(archive))

    assert (loaded.returncode, loaded.stdout) == (0, f"Loaded image: {tag}\n"), (
        loaded.stderr
    )
    assert tag in image_tags(daemon)
    assert daemon.api("GET", f"/images/{tag}/json")["Id"] == built[0].id
    ran = daemon.cli("run", "--rm", tag, "cat", "/marker", check=True)
    assert ran.stdout == f"{tag}\n"
    daemon.cli("rmi", tag, check=True)


def test_a_whiteout_in_an_upper_layer_hides_the_lower_file(daemon, tmp_path):
    tag = new_tag("whiteout")
    image = busybox_image(
        [tag],
        extra_layers=[
            {"etc/motd": "old\n", "etc/issue": "stays\n"},
            {"etc/motd": Whiteout()},
        ],
    )
    write_oci_archive(tmp_path / "whiteout.tar", [image], compression="gzip")
    daemon.cli("load", "-i", str(tmp_path / "whiteout.tar"), check=True)

    result = daemon.cli(
        "run",
        "--rm",
        tag,
        "sh",
        "-c",
        "test -e /etc/motd; echo motd=$?; cat /etc/issue",
    )

    assert result.stdout == "motd=1\nstays\n"
    daemon.cli("rmi", tag, check=True)


def corrupt_truncated(path):
    truncate_file(path, path.stat().st_size // 2)


def corrupt_garbage(path):
    path.write_bytes(b"this is not a tar archive at all\n" * 64)


@pytest.mark.parametrize(
    "damage, message",
    [
        (corrupt_truncated, "truncated"),
        (corrupt_garbage, "not a valid tar archive"),
        (None, "should have digest"),
    ],
)
def test_a_corrupt_archive_is_refused_and_the_image_list_is_unchanged(
    daemon, tmp_path, damage, message
):
    tag = new_tag("corrupt")
    archive = tmp_path / "corrupt.tar"
    tamper = Tamper(layer_blob=1) if damage is None else None
    write_docker_archive(archive, [marked_image(tag)], tamper=tamper)
    if damage is not None:
        damage(archive)
    before = daemon.api("GET", "/images/json")

    result = daemon.cli("load", "-i", str(archive))

    assert result.returncode != 0
    assert "Error response from daemon: cannot load" in result.stderr
    assert message in result.stderr
    assert "nothing was loaded" in result.stderr
    assert daemon.api("GET", "/images/json") == before


def test_images_lists_the_busybox_image_with_its_tag(daemon):
    result = daemon.cli("images", check=True)

    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["REPOSITORY", "TAG", "IMAGE"]
    assert ["busybox", "test"] in [row[:2] for row in rows[1:]]


def test_rmi_untags_and_deletes_an_unused_image(daemon, tmp_path):
    tag = new_tag("rmi")
    write_docker_archive(tmp_path / "rmi.tar", [marked_image(tag)])
    daemon.cli("load", "-i", str(tmp_path / "rmi.tar"), check=True)
    image_id = daemon.api("GET", f"/images/{tag}/json")["Id"]

    result = daemon.cli("rmi", tag)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"Untagged: {tag}", f"Deleted: {image_id}"]
    assert all(line.startswith("Deleted: sha256:") for line in lines[1:])
    assert tag not in image_tags(daemon)
    assert image_id not in json.dumps(daemon.api("GET", "/images/json"))


def test_rmi_of_an_unknown_image_exits_1_naming_it(daemon):
    result = daemon.cli("rmi", "nosuch:tag")

    assert result.returncode == 1
    assert "No such image: nosuch:tag" in result.stderr


def test_rmi_of_one_of_two_tags_of_an_image_in_use_only_untags_it(
    daemon, name, tmp_path
):
    first, second = new_tag("shared"), new_tag("shared")
    write_docker_archive(tmp_path / "shared.tar", [marked_image(first)])
    daemon.cli("load", "-i", str(tmp_path / "shared.tar"), check=True)
    image_id = daemon.api("GET", f"/images/{first}/json")["Id"]
    write_docker_archive(
        tmp_path / "second.tar",
        [busybox_image([second], extra_layers=[{"marker": f"{first}\n"}])],
    )
    daemon.cli("load", "-i", str(tmp_path / "second.tar"), check=True)
    assert daemon.api("GET", f"/images/{second}/json")["Id"] == image_id
    daemon.cli("create", "--name", name, first, "true", check=True)

    untag = daemon.cli("rmi", second)
    last_tag = daemon.request("DELETE", f"/images/{first}")

    assert (untag.returncode, untag.stdout) == (0, f"Untagged: {second}\n"), (
        untag.stderr
    )
    assert last_tag.status == 409
    assert daemon.api("GET", f"/images/{first}/json")["RepoTags"] == [first]
    daemon.cli("rm", name, check=True)
    daemon.cli("rmi", first, check=True)
