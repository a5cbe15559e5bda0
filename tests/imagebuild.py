"""Write small image tarballs for tests, in pure Python.

A layer is a dict from path to entry, in tar order. An entry is bytes or str
(a regular file), or one of File, Dir, Symlink, Hardlink, Device, Fifo,
Whiteout, Opaque. Paths are written into the tar exactly as given, so a test
can add unsafe members ("../x", "/abs", a path under a symlink) by name.

    image = ImageSpec(layers=[busybox_layer(), {"etc/motd": "hi\\n"}],
                      tags=["demo:1"], cmd=["sh"])
    write_oci_archive(tmp_path / "demo.tar", [image], compression="zstd")

write_docker_archive() writes `docker save` archives in the old layout
(<id>/layer.tar) or the newer one (blobs/sha256/...); write_oci_archive()
writes an OCI image layout. Tamper breaks one digest on purpose;
truncate_file() cuts a file short.
"""

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import zstandard

MTIME = 1_700_000_000
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    *("sh", "sleep", "echo", "cat", "true", "false", "ls", "id", "hostname", "ps"),
    *("mount", "printf", "yes", "head", "env", "pwd", "wget", "httpd", "touch"),
    *("kill", "grep", "wc", "seq", "dd", "tr", "od", "awk", "mkdir", "rm", "test"),
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


# --- layer entries ----------------------------------------------------------


@dataclass
class File:
    content: bytes | str = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: dict = field(default_factory=dict)


@dataclass
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME


@dataclass
class Symlink:
    target: str
    uid: int = 0
    gid: int = 0


@dataclass
class Hardlink:
    target: str  # a path earlier in the same layer, as written in the tar


@dataclass
class Device:
    major: int
    minor: int
    kind: str = "c"  # "c" character, "b" block
    mode: int = 0o666


@dataclass
class Fifo:
    mode: int = 0o644


@dataclass
class Whiteout:
    """Deletes the path from the layers below (written as dir/.wh.NAME)."""


@dataclass
class Opaque:
    """Hides what the layers below have in this directory (dir/.wh..wh..opq)."""


def _tarinfo(name: str, entry) -> tuple[tarfile.TarInfo, bytes | None]:
    if isinstance(entry, bytes | str):
        entry = File(entry)
    if isinstance(entry, Whiteout):
        head, _, base = name.rpartition("/")
        return _tarinfo(f"{head}/.wh.{base}" if head else f".wh.{base}", File())
    if isinstance(entry, Opaque):
        return _tarinfo(f"{name.rstrip('/')}/.wh..wh..opq", File())
    info = tarfile.TarInfo(name)
    info.mtime = getattr(entry, "mtime", MTIME)
    info.uid, info.gid = getattr(entry, "uid", 0), getattr(entry, "gid", 0)
    info.mode = getattr(entry, "mode", 0o777)
    data = None
    if isinstance(entry, File):
        data = (
            entry.content.encode() if isinstance(entry.content, str) else entry.content
        )
        info.size = len(data)
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
    elif isinstance(entry, Dir):
        info.type = tarfile.DIRTYPE
    elif isinstance(entry, Symlink):
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    elif isinstance(entry, Hardlink):
        info.type, info.linkname = tarfile.LNKTYPE, entry.target
    elif isinstance(entry, Device):
        info.type = tarfile.CHRTYPE if entry.kind == "c" else tarfile.BLKTYPE
        info.devmajor, info.devminor = entry.major, entry.minor
    elif isinstance(entry, Fifo):
        info.type = tarfile.FIFOTYPE
    else:
        raise TypeError(f"unknown layer entry for {name!r}: {entry!r}")
    return info, data


def layer_tar(entries: dict) -> bytes:
    """The uncompressed tar of one layer; names are written as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, entry in entries.items():
            info, data = _tarinfo(name, entry)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- images -----------------------------------------------------------------


@dataclass
class ImageSpec:
    layers: list  # layer entry dicts, bottom-most first
    tags: list[str] = field(default_factory=list)  # "busybox:test"
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] | None = None
    config: dict = field(default_factory=dict)  # more keys for config["config"]
    architecture: str = "amd64"
    os: str = "linux"
    created: str = "2024-01-01T00:00:00Z"


@dataclass
class Tamper:
    """Break one digest on purpose; indexes count layers from the bottom."""

    layer_blob: int | None = None  # flip the last byte of this layer's blob
    diff_id: int | None = None  # put a wrong diff_id for this layer in the config
    config: bool = False  # change the config after its digest is taken


@dataclass
class Layer:
    tar: bytes
    blob: bytes
    diff_id: str
    digest: str
    media_type: str


@dataclass
class BuiltImage:
    spec: ImageSpec
    layers: list[Layer]
    config: bytes  # the config as written into the archive
    id: str  # "sha256:" + the digest the archive claims for the config


def build_layer(entries: dict, compression: str = "none") -> Layer:
    tar = layer_tar(entries)
    blob = compress(tar, compression)
    return Layer(tar, blob, sha256(tar), sha256(blob), LAYER_MEDIA_TYPES[compression])


def build_image(spec: ImageSpec, compression: str = "none", tamper=None) -> BuiltImage:
    tamper = tamper or Tamper()
    layers = [build_layer(entries, compression) for entries in spec.layers]
    diff_ids = [layer.diff_id for layer in layers]
    if tamper.diff_id is not None:
        diff_ids[tamper.diff_id] = sha256(b"not this layer")
    if tamper.layer_blob is not None:
        layer = layers[tamper.layer_blob]
        layer.blob = layer.blob[:-1] + bytes([layer.blob[-1] ^ 0xFF])
    config = json.dumps(_config(spec, diff_ids), sort_keys=True).encode()
    image_id = sha256(config)
    if tamper.config:
        config = config.replace(b'"os": "', b'"os":  "', 1)
    return BuiltImage(spec, layers, config, image_id)


def _config(spec: ImageSpec, diff_ids: list[str]) -> dict:
    inner = dict(spec.config)
    for key, value in (
        ("Cmd", spec.cmd),
        ("Entrypoint", spec.entrypoint),
        ("Env", spec.env),
    ):
        if value is not None:
            inner[key] = value
    return {
        "architecture": spec.architecture,
        "os": spec.os,
        "created": spec.created,
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": spec.created} for _ in diff_ids],
    }


def _as_built(images, compression: str, tamper) -> list[BuiltImage]:
    return [
        image
        if isinstance(image, BuiltImage)
        else build_image(image, compression, tamper)
        for image in images
    ]


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


# --- archives ---------------------------------------------------------------


class _ArchiveWriter:
    """Writes archive members once each, with parent directories first."""

    def __init__(self, path: Path):
        self._tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._names: set[str] = set()

    def add(self, name: str, data: bytes) -> None:
        if name in self._names:
            return
        self._add_parents(name)
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), MTIME, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        self._names.add(name)

    def add_json(self, name: str, value) -> bytes:
        data = json.dumps(value).encode()
        self.add(name, data)
        return data

    def _add_parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._names:
                info = tarfile.TarInfo(parent)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
                self._tar.addfile(info)
                self._names.add(parent)

    def close(self) -> None:
        self._tar.close()


def write_docker_archive(
    path: Path, images, *, layout: str = "blobs", compression: str = "none", tamper=None
) -> list[BuiltImage]:
    """Write a `docker save` archive; layout "blobs" (Docker 25+) or "legacy".

    images are ImageSpec or BuiltImage; returns the BuiltImages written.
    """
    built = _as_built(images, compression, tamper)
    out = _ArchiveWriter(path)
    manifest = []
    for image in built:
        if layout == "legacy":
            entry = _add_legacy_image(out, image)
        else:
            entry = _add_blobs_image(out, image)
        manifest.append({**entry, "RepoTags": image.spec.tags or None})
    out.add_json("manifest.json", manifest)
    out.close()
    return built


def _add_legacy_image(out: _ArchiveWriter, image: BuiltImage) -> dict:
    config_name = _hex(image.id) + ".json"
    out.add(config_name, image.config)
    names, parent = [], ""
    for layer in image.layers:
        v1_id = hashlib.sha256(f"{parent} {layer.diff_id}".encode()).hexdigest()
        out.add(f"{v1_id}/VERSION", b"1.0")
        out.add(f"{v1_id}/json", json.dumps({"id": v1_id, "parent": parent}).encode())
        out.add(f"{v1_id}/layer.tar", layer.blob)
        names.append(f"{v1_id}/layer.tar")
        parent = v1_id
    return {"Config": config_name, "Layers": names}


def _add_blobs_image(out: _ArchiveWriter, image: BuiltImage) -> dict:
    config_name = "blobs/sha256/" + _hex(image.id)
    out.add(config_name, image.config)
    names = []
    for layer in image.layers:
        names.append("blobs/sha256/" + _hex(layer.digest))
        out.add(names[-1], layer.blob)
    return {"Config": config_name, "Layers": names}


def write_oci_archive(
    path: Path,
    images,
    *,
    compression: str = "none",
    tamper=None,
    names: str = "containerd",
    platform_index: bool = False,
) -> list[BuiltImage]:
    """Write an OCI image layout as a tar.

    names says how index.json names each tag: "containerd" (the
    io.containerd.image.name annotation, plus ref.name = the tag), "ref"
    (ref.name holds the whole reference) or "short" (ref.name holds the tag
    alone, which names no repository). platform_index puts each image in a
    nested index next to an arm64 decoy image.
    """
    built = _as_built(images, compression, tamper)
    out = _ArchiveWriter(path)
    out.add_json("oci-layout", {"imageLayoutVersion": "1.0.0"})
    descriptors = []
    for image in built:
        desc = _add_oci_manifest(out, image)
        if platform_index:
            desc = _add_platform_index(out, desc, image.spec, compression)
        tags = image.spec.tags or [None]
        descriptors += [_named(desc, tag, names) for tag in tags]
    out.add_json("index.json", {"schemaVersion": 2, "manifests": descriptors})
    out.close()
    return built


def _add_oci_manifest(out: _ArchiveWriter, image: BuiltImage) -> dict:
    out.add("blobs/sha256/" + _hex(image.id), image.config)
    layers = []
    for layer in image.layers:
        out.add("blobs/sha256/" + _hex(layer.digest), layer.blob)
        layers.append(
            {
                "mediaType": layer.media_type,
                "digest": layer.digest,
                "size": len(layer.blob),
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": image.id,
            "size": len(image.config),
        },
        "layers": layers,
    }
    return _add_blob_descriptor(out, manifest, OCI_MANIFEST)


def _add_blob_descriptor(out: _ArchiveWriter, value: dict, media_type: str) -> dict:
    data = json.dumps(value).encode()
    out.add("blobs/sha256/" + _hex(sha256(data)), data)
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def _add_platform_index(out, desc: dict, spec: ImageSpec, compression: str) -> dict:
    decoy_spec = ImageSpec(
        layers=[{"decoy": "arm64\n"}], architecture="arm64", created=spec.created
    )
    decoy = _add_oci_manifest(out, build_image(decoy_spec, compression))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**decoy, "platform": {"os": "linux", "architecture": "arm64"}},
            {**desc, "platform": {"os": spec.os, "architecture": spec.architecture}},
        ],
    }
    return _add_blob_descriptor(out, index, OCI_INDEX)


def _named(desc: dict, tag: str | None, names: str) -> dict:
    if tag is None:
        return dict(desc)
    repo, _, short = tag.rpartition(":")
    if names == "containerd":
        full = repo if "/" in repo else f"docker.io/library/{repo}"
        annotations = {
            "io.containerd.image.name": f"{full}:{short}",
            "org.opencontainers.image.ref.name": short,
        }
    elif names == "ref":
        annotations = {"org.opencontainers.image.ref.name": tag}
    else:
        annotations = {"org.opencontainers.image.ref.name": short}
    return {**desc, "annotations": annotations}


def truncate_file(path: Path, keep_bytes: int) -> None:
    os.truncate(path, keep_bytes)


# --- busybox ----------------------------------------------------------------


@cache
def _busybox_bytes() -> bytes:
    return BUSYBOX.read_bytes()


def busybox_layer() -> dict:
    """A layer with a static /bin/busybox, its applet links, and users."""
    layer = {"bin": Dir(), "bin/busybox": File(_busybox_bytes(), mode=0o755)}
    layer.update({f"bin/{name}": Symlink("busybox") for name in BUSYBOX_APPLETS})
    layer.update(
        {
            "etc": Dir(),
            "etc/passwd": File(PASSWD),
            "etc/group": File(GROUP),
            "root": Dir(mode=0o700),
            "tmp": Dir(mode=0o1777),
        }
    )
    return layer


def busybox_image(tags=("busybox:test",), *, extra_layers=(), **fields) -> ImageSpec:
    """The busybox image: Cmd ["sh"], the usual PATH, extra layers on top."""
    fields.setdefault("cmd", ["sh"])
    fields.setdefault("env", [DEFAULT_PATH])
    return ImageSpec(layers=[busybox_layer(), *extra_layers], tags=list(tags), **fields)


def write_busybox_archive(
    path: Path, tags=("busybox:test",), fmt: str = "docker"
) -> Path:
    """Write a loadable busybox image archive ("docker" or "oci") to path."""
    image = busybox_image(tags)
    if fmt == "oci":
        write_oci_archive(path, [image])
    else:
        write_docker_archive(path, [image])
    return path
