"""Image store: load image tarballs, keep their layers unpacked for overlayfs.

Two archive formats are read: docker-archive (`docker save`, skopeo's
`docker-archive:`; a manifest.json listing Config, RepoTags and Layers) and
the OCI image layout (oci-layout, index.json, content-addressed blobs).
When an archive has both, as newer `docker save` writes, manifest.json is
used, as `docker load` does.

Every digest is checked before anything is kept: OCI blobs against their
descriptors, the uncompressed layers against the config's rootfs.diff_ids,
and a docker-archive config against the image id in its file name.

On disk, under the store root:

    images/<hex>.json        one record per image; <hex> is the sha256 of the
                             image config, which is also the image id
    repositories.json        the tags, in Docker's shape:
                             {"Repositories": {"busybox": {"busybox:test": "sha256:.."}}}
    layers/<hex>/diff        a layer unpacked, named by its diff_id and shared
                             by every image that has it
    layers/<hex>/layer.json  {"diff_id": .., "size": ..}
    tmp/                     staging; emptied when the store opens

A load unpacks into tmp/ and moves the layers into place with rename(2) only
after every digest matched and every member unpacked, so a failed load
leaves the store as it was. A crash between those renames and the record
writes leaves only unreferenced layers, which the next open removes.

One ImageStore owns its root: it reads the records once at open and keeps
them in memory; a second store object on the same root would not see the
first one's changes. Mutations hold one lock; reads use a snapshot that is
replaced whole, so they never wait for a load.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import os
import platform
import posixpath
import re
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from runtime import _tar

_MAX_JSON_BYTES = 8 << 20
_MAX_LINK_HOPS = 16
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HEX = re.compile(r"[a-f0-9]{1,64}")
_FULL_HEX = re.compile(r"(?:sha256:)?[a-f0-9]{64}")

_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}
_CONTAINERD_NAME = "io.containerd.image.name"
_OCI_REF_NAME = "org.opencontainers.image.ref.name"

_GO_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class ImageError(Exception):
    """An image operation failed; the message is shown to users as is."""


class ImageNotFound(ImageError):
    """No image matches a reference."""


@dataclass
class Image:
    id: str  # "sha256:<hex of the config blob>"
    repo_tags: list[str]  # familiar form, "busybox:test"; may be empty
    created: str  # RFC 3339 from the config, "" if absent
    size: int  # bytes of the unpacked layers' regular files
    architecture: str
    os: str
    config: dict  # the image config's "config" object, {} if absent
    diff_ids: list[str]


# --- references -----------------------------------------------------------

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_MAX_NAME_CHARS = 255


def _split_reference(ref: str) -> tuple[str, str, str | None]:
    """Split into (domain, path, tag), with Docker's defaults for the domain."""
    if "@" in ref:
        raise ImageError(
            f"invalid reference format: {ref!r} has a digest; corral keeps "
            "tags only, so use NAME:TAG or the image ID"
        )
    name, tag = ref, None
    colon = ref.rfind(":")
    if colon > ref.rfind("/"):
        name, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ImageError(f"invalid reference format: bad tag in {ref!r}")
    domain, _, path = name.partition("/")
    if not path or (
        not any(c in domain for c in ".:")
        and domain != "localhost"
        and domain == domain.lower()
    ):
        domain, path = "docker.io", name
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    _check_name(ref, domain, path)
    return domain, path, tag


def _check_name(ref: str, domain: str, path: str) -> None:
    if not _DOMAIN.fullmatch(domain):
        raise ImageError(f"invalid reference format: bad registry in {ref!r}")
    for part in path.split("/"):
        if _PATH_COMPONENT.fullmatch(part):
            continue
        if _PATH_COMPONENT.fullmatch(part.lower()):
            raise ImageError(
                f"invalid reference format: repository name must be lowercase: {ref!r}"
            )
        raise ImageError(f"invalid reference format: {ref!r}")
    if len(domain) + 1 + len(path) > _MAX_NAME_CHARS:
        raise ImageError(f"invalid reference format: {ref!r} is too long")
    if re.fullmatch(r"library/[a-f0-9]{64}", path) and domain == "docker.io":
        raise ImageError(
            f"invalid repository name {ref!r}: a 64-character hexadecimal "
            "string is an image ID, not a name"
        )


def _familiar_name(domain: str, path: str) -> str:
    if domain != "docker.io":
        return f"{domain}/{path}"
    return path.removeprefix("library/") if path.count("/") == 1 else path


def normalize_reference(ref: str) -> str:
    """Docker's short form of an image reference: "busybox" -> "busybox:latest".

    docker.io/library/ and docker.io/ are dropped as Docker shows them.
    Raises ImageError for a malformed reference or one with a digest.
    """
    domain, path, tag = _split_reference(ref)
    return f"{_familiar_name(domain, path)}:{tag or 'latest'}"


def _is_tagged_reference(ref: str) -> bool:
    try:
        return _split_reference(ref)[2] is not None
    except ImageError:
        return False


def _repository(tag: str) -> str:
    return tag[: tag.rfind(":")]


# --- the archive being loaded ---------------------------------------------


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _member_key(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


class _Archive:
    """The outer tarball, indexed by member name; read by member, never unpacked."""

    def __init__(self, path: Path, stage: Path):
        plain = self._uncompressed(path, stage)
        try:
            self._tar = tarfile.open(plain, "r:")  # noqa: SIM115 - see close()
        except (tarfile.TarError, EOFError) as err:
            raise ImageError(_not_a_tar_text(err)) from err
        except OSError as err:
            raise ImageError(f"cannot read it: {err.strerror or err}") from err
        try:
            self._members = self._index(plain)
        except BaseException:
            self._tar.close()
            raise

    def _index(self, plain: Path) -> dict[str, tarfile.TarInfo]:
        try:
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError) as err:
            raise ImageError(_not_a_tar_text(err)) from err
        # tarfile takes an archive cut at a member boundary for a whole one;
        # only a whole one has the end-of-archive block at offset.
        if self._tar.offset + tarfile.BLOCKSIZE > os.path.getsize(plain):
            raise ImageError(
                "it stops without an end-of-archive marker: it is truncated; "
                "save or copy the image again"
            )
        return {_member_key(m.name): m for m in members}

    def close(self) -> None:
        self._tar.close()

    @staticmethod
    def _uncompressed(path: Path, stage: Path) -> Path:
        """The archive itself, or a decompressed copy of it in stage."""
        try:
            with open(path, "rb") as src:
                stream, compression = _tar.open_decompressed(src)
                if compression == "none":
                    return path
                return _copy_decompressed(stream, compression, stage / "archive.tar")
        except FileNotFoundError as err:
            raise ImageError("the file does not exist") from err
        except OSError as err:
            raise ImageError(f"cannot read it: {err.strerror or err}") from err

    def has(self, name: str) -> bool:
        return _member_key(name) in self._members

    def member(self, name: str) -> tarfile.TarInfo:
        """The regular-file member at name, following links inside the archive."""
        key = _member_key(name)
        for _ in range(_MAX_LINK_HOPS):
            member = self._members.get(key)
            if member is None:
                raise ImageError(f"the archive has no {name!r}, which it refers to")
            if member.isreg():
                return member
            if member.issym():
                key = _member_key(
                    posixpath.join(posixpath.dirname(key), member.linkname)
                )
            elif member.islnk():
                key = _member_key(member.linkname)
            else:
                raise ImageError(f"archive member {name!r} is not a regular file")
        raise ImageError(f"archive member {name!r} is a chain of links that never ends")

    def open(self, name: str) -> tuple[BinaryIO, int]:
        member = self.member(name)
        return self._tar.extractfile(member), member.size

    def read(self, name: str) -> bytes:
        src, size = self.open(name)
        if size > _MAX_JSON_BYTES:
            raise ImageError(
                f"archive member {name!r} is {size} bytes, too large for JSON"
            )
        data = src.read()
        if len(data) != size:
            raise ImageError(f"archive member {name!r} is truncated")
        return data

    def read_json(self, name: str, data: bytes | None = None):
        data = self.read(name) if data is None else data
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise ImageError(
                f"archive member {name!r} is not valid JSON: {err}"
            ) from err


def _not_a_tar_text(err: Exception) -> str:
    return (
        f"it is not a valid tar archive ({err}): it is corrupt or truncated; "
        "save or copy the image again"
    )


def _copy_decompressed(stream: BinaryIO, compression: str, dest: Path) -> Path:
    with open(dest, "wb") as out:
        while True:
            try:
                chunk = stream.read(_tar.CHUNK_BYTES)
            except _tar.DECOMPRESSION_ERRORS as err:
                raise ImageError(
                    f"it is a {compression} stream that is corrupt or truncated "
                    f"({err}); save or copy the image again"
                ) from err
            if not chunk:
                return dest
            out.write(chunk)


def _check_digest(digest, where: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(
            f"{where} has the digest {digest!r}; only sha256:<64 hex digits> "
            "digests are supported"
        )
    return digest


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _mismatch_text(what: str, expected: str, actual: str) -> str:
    return (
        f"{what} should have digest {expected} but has {actual}: the archive "
        "is corrupt or was altered; save or copy the image again"
    )


@dataclass
class _Blob:
    member: str  # path inside the archive
    diff_id: str  # the config's rootfs.diff_ids entry for it
    digest: str | None = None  # expected sha256 of the blob as stored
    size: int | None = None  # expected size of the blob as stored


@dataclass
class _Pending:
    id: str
    config: dict
    layers: list[_Blob]
    tags: list[str] = field(default_factory=list)


def _parse_config(archive: _Archive, name: str, raw: bytes) -> dict:
    config = archive.read_json(name, raw)
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError(f"image config {name!r} has no rootfs of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageError(f"image config {name!r} has no rootfs.diff_ids list")
    for diff_id in diff_ids:
        _check_digest(diff_id, f"image config {name!r}")
    return config


def _blobs_for(config: dict, where: str, layers: list) -> list[str]:
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"{where} lists {len(layers)} layers but its config lists "
            f"{len(diff_ids)} diff_ids"
        )
    return diff_ids


def _read_docker_archive(archive: _Archive) -> list[_Pending]:
    manifest = archive.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError("manifest.json lists no images")
    return [_docker_image(archive, entry) for entry in manifest]


def _docker_image(archive: _Archive, entry) -> _Pending:
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise ImageError("manifest.json has an entry without a Config")
    name = entry["Config"]
    raw = archive.read(name)
    image_id = _sha256(raw)
    named = re.search(r"([a-f0-9]{64})(?:\.json)?$", name)
    if named and image_id != "sha256:" + named.group(1):
        expected = "sha256:" + named.group(1)
        raise ImageError(_mismatch_text(f"image config {name!r}", expected, image_id))
    config = _parse_config(archive, name, raw)
    layers = entry.get("Layers") or []
    if not all(isinstance(m, str) for m in layers):
        raise ImageError(f"manifest.json entry for {name!r} has a bad Layers list")
    diff_ids = _blobs_for(config, f"manifest.json entry for {name!r}", layers)
    blobs = [
        _Blob(member, diff_id, _digest_in_blob_path(member))
        for member, diff_id in zip(layers, diff_ids)
    ]
    return _Pending(image_id, config, blobs, _repo_tags(entry, name))


def _repo_tags(entry: dict, config_name: str) -> list[str]:
    try:
        return [normalize_reference(tag) for tag in entry.get("RepoTags") or []]
    except (ImageError, TypeError) as err:
        raise ImageError(
            f"manifest.json entry for {config_name!r} has bad RepoTags: {err}"
        ) from err


def _digest_in_blob_path(member: str) -> str | None:
    found = re.fullmatch(r"(?:\./)?blobs/sha256/([a-f0-9]{64})", member)
    return "sha256:" + found.group(1) if found else None


def _read_oci_layout(archive: _Archive) -> list[_Pending]:
    layout = archive.read_json("oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(
            f"oci-layout has imageLayoutVersion {version!r}; 1.x is supported"
        )
    index = archive.read_json("index.json")
    descriptors = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(descriptors, list) or not descriptors:
        raise ImageError("index.json lists no manifests")
    return [_oci_image(archive, desc) for desc in descriptors]


def _descriptor_digest(desc) -> str:
    if not isinstance(desc, dict):
        raise ImageError(f"a descriptor in the archive is not an object: {desc!r}")
    return _check_digest(desc.get("digest"), "a descriptor")


def _read_blob(archive: _Archive, desc) -> bytes:
    digest = _descriptor_digest(desc)
    member = _blob_path(digest)
    data = archive.read(member)
    if isinstance(desc.get("size"), int) and desc["size"] != len(data):
        raise ImageError(
            f"blob {digest} is {len(data)} bytes but its descriptor says "
            f"{desc['size']}: the archive is corrupt or truncated"
        )
    if _sha256(data) != digest:
        raise ImageError(_mismatch_text(f"blob {member!r}", digest, _sha256(data)))
    return data


def _oci_image(archive: _Archive, desc) -> _Pending:
    _descriptor_digest(desc)
    manifest = _image_manifest(archive, desc, depth=0)
    config_desc = manifest.get("config")
    if (
        not isinstance(config_desc, dict)
        or config_desc.get("mediaType") not in _CONFIG_TYPES
    ):
        kind = config_desc.get("mediaType") if isinstance(config_desc, dict) else None
        raise ImageError(
            f"manifest {desc.get('digest')} is not a container image "
            f"(its config has media type {kind!r})"
        )
    raw = _read_blob(archive, config_desc)
    config = _parse_config(archive, _blob_path(config_desc["digest"]), raw)
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"manifest {desc.get('digest')} has no layers list")
    diff_ids = _blobs_for(config, f"manifest {desc.get('digest')}", layers)
    blobs = [_oci_layer(layer, diff_id) for layer, diff_id in zip(layers, diff_ids)]
    return _Pending(_sha256(raw), config, blobs, _oci_names(desc))


def _oci_layer(desc, diff_id: str) -> _Blob:
    if not isinstance(desc, dict):
        raise ImageError(f"a layer descriptor is not an object: {desc!r}")
    digest = _check_digest(desc.get("digest"), "a layer descriptor")
    media_type = desc.get("mediaType", "")
    if isinstance(media_type, str) and media_type.endswith("+encrypted"):
        raise ImageError(
            f"layer {digest} is encrypted ({media_type}); corral cannot decrypt"
        )
    size = desc.get("size") if isinstance(desc.get("size"), int) else None
    return _Blob(_blob_path(digest), diff_id, digest, size)


def _image_manifest(archive: _Archive, desc, depth: int) -> dict:
    """The image manifest desc leads to, choosing this host's platform in an index."""
    digest = _descriptor_digest(desc)
    data = archive.read_json(_blob_path(digest), _read_blob(archive, desc))
    if not isinstance(data, dict):
        raise ImageError(f"blob {desc['digest']} is not a JSON object")
    media_type = desc.get("mediaType") or data.get("mediaType")
    if media_type in _MANIFEST_TYPES or (media_type is None and "config" in data):
        return data
    if media_type not in _INDEX_TYPES and not (
        media_type is None and "manifests" in data
    ):
        raise ImageError(
            f"blob {desc['digest']} has media type {media_type!r}, "
            "not an image manifest or index"
        )
    if depth >= 4:
        raise ImageError(f"image index {desc['digest']} nests too deep")
    return _image_manifest(archive, _host_manifest(data, desc["digest"]), depth + 1)


def _host_manifest(index: dict, digest: str) -> dict:
    arch = _GO_ARCH.get(platform.machine(), platform.machine())
    manifests = index.get("manifests") or []
    for desc in manifests:
        plat = desc.get("platform") if isinstance(desc, dict) else None
        if (
            isinstance(plat, dict)
            and plat.get("os") == "linux"
            and plat.get("architecture") == arch
        ):
            return desc
    have = sorted(
        f"{d['platform'].get('os')}/{d['platform'].get('architecture')}"
        for d in manifests
        if isinstance(d, dict) and isinstance(d.get("platform"), dict)
    )
    raise ImageError(
        f"image index {digest} has no manifest for linux/{arch} "
        f"(it has: {', '.join(have) or 'none'})"
    )


def _oci_names(desc: dict) -> list[str]:
    annotations = desc.get("annotations")
    if not isinstance(annotations, dict):
        return []
    name = annotations.get(_CONTAINERD_NAME)
    if isinstance(name, str) and name:
        try:
            return [normalize_reference(name)]
        except ImageError as err:
            raise ImageError(
                f"index.json annotation {_CONTAINERD_NAME}: {err}"
            ) from err
    ref = annotations.get(_OCI_REF_NAME)
    # ref.name is often a bare tag ("latest"), which names no repository.
    if isinstance(ref, str) and _is_tagged_reference(ref):
        return [normalize_reference(ref)]
    return []


def _merge_pending(pendings: list[_Pending]) -> list[_Pending]:
    merged: dict[str, _Pending] = {}
    for pending in pendings:
        if pending.id in merged:
            merged[pending.id].tags += pending.tags
        else:
            merged[pending.id] = pending
    return list(merged.values())


# --- durable writes -------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value) -> None:
    """Replace path with value as JSON; readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


# --- the store ------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    images: dict  # image id -> record (the Image fields except repo_tags)
    tags: dict  # "busybox:test" -> image id


class ImageStore:
    """Images and their unpacked layers under one root directory."""

    def __init__(self, root: Path, *, keep_ownership: bool = True):
        """Open the store at root, creating it if needed.

        keep_ownership False leaves unpacked files owned by the caller
        instead of the owners in the layers: such a store is good for tests
        that do not run as root, not for running containers.
        """
        self._root = Path(root)
        self._images_dir = self._root / "images"
        self._layers_dir = self._root / "layers"
        self._tmp_dir = self._root / "tmp"
        self._tags_file = self._root / "repositories.json"
        self._keep_ownership = keep_ownership
        self._lock = threading.Lock()
        try:
            self._open()
        except OSError as err:
            raise ImageError(
                f"cannot open the image store at {self._root}: {err.strerror or err} "
                f"({err.filename or self._root})"
            ) from err

    def _open(self) -> None:
        # Unpacked layers hold setuid binaries; only root may reach them.
        self._root.mkdir(parents=True, exist_ok=True)
        for path in (self._images_dir, self._layers_dir, self._tmp_dir):
            _mkdir_private(path)
        for leftover in self._tmp_dir.iterdir():
            _remove(leftover)
        for leftover in self._images_dir.glob(".*.tmp"):
            leftover.unlink()
        images = self._read_records()
        self._state = _State(images, self._read_tags(images))
        self._remove_orphan_layers()

    def _read_records(self) -> dict:
        images = {}
        for path in sorted(self._images_dir.glob("*.json")):
            if not re.fullmatch(r"[a-f0-9]{64}\.json", path.name):
                continue
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                Image(repo_tags=[], **record)
                if record["id"] != "sha256:" + path.stem:
                    raise ValueError(f"it holds the record of {record['id']}")
                images[record["id"]] = record
            except (ValueError, KeyError, TypeError) as err:
                raise ImageError(
                    f"image record {path} is unreadable ({err}); remove it and "
                    "load that image again"
                ) from err
        return images

    def _read_tags(self, images: dict) -> dict:
        """The tags on disk, less any that name an image no longer stored."""
        try:
            data = json.loads(self._tags_file.read_text(encoding="utf-8"))
            repositories = data["Repositories"].values()
            return {
                tag: image_id
                for repo_tags in repositories
                for tag, image_id in repo_tags.items()
                if image_id in images
            }
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ImageError(
                f"{self._tags_file} is unreadable ({err}); remove it and tag "
                "the images again"
            ) from err

    def _remove_orphan_layers(self) -> None:
        used = {d for record in self._state.images.values() for d in record["diff_ids"]}
        for path in self._layers_dir.iterdir():
            if "sha256:" + path.name not in used:
                _remove(path)

    # --- reads ---

    def list(self) -> list[Image]:
        """Every image, newest first."""
        state = self._state
        images = [_image(state, image_id) for image_id in state.images]
        return sorted(images, key=lambda i: (i.created, i.id), reverse=True)

    def get(self, ref: str) -> Image:
        """The image a reference names.

        ref is a tag ("busybox:test", "busybox" meaning busybox:latest,
        "docker.io/library/busybox:test"), a full id ("sha256:<hex>" or
        "<hex>"), or a unique prefix of an id. Tags win over id prefixes, as
        in Docker. Raises ImageNotFound, or ImageError for an ambiguous prefix.
        """
        state = self._state
        return _image(state, _resolve(state, ref)[0])

    def layer_dirs(self, image: Image) -> list[Path]:
        """The image's unpacked layer directories for lowerdir, top-most first.

        A layer that appears twice in an image is given once, at its top-most
        place: overlayfs refuses a lowerdir that repeats a directory, and the
        upper copy already re-applies every entry and whiteout of the lower.
        """
        dirs: list[Path] = []
        for diff_id in reversed(image.diff_ids):
            path = self._layer_path(diff_id) / "diff"
            if path in dirs:
                continue
            if not path.is_dir():
                raise ImageError(
                    f"layer {diff_id} of image {image.id} is missing from "
                    f"{self._layers_dir}; remove the image and load it again"
                )
            dirs.append(path)
        return dirs

    def _layer_path(self, diff_id: str) -> Path:
        return self._layers_dir / diff_id.removeprefix("sha256:")

    # --- load ---

    def load(self, path: Path, source: str | None = None) -> list[Image]:
        """Load every image in a docker-archive or OCI image-layout tarball.

        source names the tarball in error messages (default: its path), for
        callers that copied the user's upload to a file of their own.

        Returns the images in the archive, with their tags after the load.
        A tag that names another image moves to the loaded one. On any error
        the store is left exactly as it was, and the ImageError says what was
        wrong and where.
        """
        with self._lock:
            stage = None
            try:
                stage = Path(tempfile.mkdtemp(prefix="load-", dir=self._tmp_dir))
                return self._load(Path(path), stage)
            except ImageError as err:
                raise ImageError(
                    f"cannot load {source or path}: {err}; nothing was loaded"
                ) from err
            except OSError as err:
                raise ImageError(
                    f"cannot load {source or path}: {err.strerror or err} "
                    f"({err.filename}); nothing was loaded"
                ) from err
            finally:
                if stage is not None:
                    _remove(stage)

    def _load(self, path: Path, stage: Path) -> list[Image]:
        archive = _Archive(path, stage)
        try:
            if archive.has("manifest.json"):
                pendings = _read_docker_archive(archive)
            elif archive.has("oci-layout"):
                pendings = _read_oci_layout(archive)
            else:
                raise ImageError(
                    "it is neither a docker-archive (no manifest.json) nor an OCI "
                    "image layout (no oci-layout)"
                )
            pendings = _merge_pending(pendings)
            staged, sizes = self._stage_layers(archive, pendings, stage)
        finally:
            archive.close()
        return self._commit(pendings, staged, sizes, stage)

    def _stage_layers(self, archive, pendings, stage: Path) -> tuple[dict, dict]:
        """Verify every layer blob; unpack those the store lacks into stage."""
        staged: dict[str, Path] = {}
        sizes: dict[str, int] = {}
        seen: set[str] = set()
        for blob in (b for p in pendings for b in p.layers):
            if blob.member in seen:
                continue
            seen.add(blob.member)
            stored_size = self._stored_layer_size(blob.diff_id)
            fresh = stored_size is None and blob.diff_id not in staged
            dest = stage / "layers" / blob.diff_id[len("sha256:") :] if fresh else None
            size = _verify_and_unpack(archive, blob, dest, self._keep_ownership)
            if fresh:
                staged[blob.diff_id] = dest
                sizes[blob.diff_id] = size
            elif stored_size is not None:
                sizes[blob.diff_id] = stored_size
        return staged, sizes

    def _stored_layer_size(self, diff_id: str) -> int | None:
        try:
            meta = self._layer_path(diff_id) / "layer.json"
            return json.loads(meta.read_text(encoding="utf-8"))["size"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            raise ImageError(
                f"the stored layer {diff_id} has an unreadable layer.json ({err}); "
                "remove the images that use it and load them again"
            ) from err

    def _commit(self, pendings, staged: dict, sizes: dict, stage: Path) -> list[Image]:
        state = self._state
        records = {
            p.id: _record(p, sizes) for p in pendings if p.id not in state.images
        }
        tags = dict(state.tags)
        for pending in pendings:
            tags.update((tag, pending.id) for tag in pending.tags)
        moved: list[tuple[Path, Path]] = []
        written: list[Path] = []
        try:
            # The unpacked files must be on disk before a record names them.
            if staged:
                _syncfs(stage)
            for diff_id, src in staged.items():
                os.rename(src, self._layer_path(diff_id))
                moved.append((self._layer_path(diff_id), src))
            for image_id, record in records.items():
                written.append(self._record_path(image_id))
                _write_json(written[-1], record)
            if tags != state.tags:
                self._write_tags(tags)
        except OSError as err:
            self._undo_commit(moved, written)
            raise ImageError(f"cannot store the images: {err.strerror or err}") from err
        self._state = _State({**state.images, **records}, tags)
        return [_image(self._state, p.id) for p in pendings]

    def _undo_commit(self, moved, written) -> None:
        for path in written:
            path.unlink(missing_ok=True)
        for dst, src in moved:
            os.rename(dst, src)

    def _record_path(self, image_id: str) -> Path:
        return self._images_dir / (image_id.removeprefix("sha256:") + ".json")

    def _write_tags(self, tags: dict) -> None:
        repositories: dict[str, dict] = {}
        for tag, image_id in sorted(tags.items()):
            repositories.setdefault(_repository(tag), {})[tag] = image_id
        _write_json(self._tags_file, {"Repositories": repositories})

    # --- remove ---

    def remove(self, ref: str) -> list[dict]:
        """Untag or delete an image, answering as Docker's DELETE /images does.

        Removing by tag untags; the image goes when no tag is left. Removing
        by id drops every tag and the image. Layers no other image uses are
        deleted. Returns [{"Untagged": tag}, ..., {"Deleted": id}, ...].
        """
        with self._lock:
            state = self._state
            image_id, by_tag = _resolve(state, ref)
            tags = dict(state.tags)
            if by_tag is not None:
                untagged = [by_tag]
            else:
                untagged = sorted(t for t, i in tags.items() if i == image_id)
            for tag in untagged:
                del tags[tag]
            result = [{"Untagged": tag} for tag in untagged]
            if image_id in tags.values():
                self._store_tags(state, tags)
                return result
            return result + self._delete(state, image_id, tags)

    def _store_tags(self, state: _State, tags: dict) -> None:
        try:
            self._write_tags(tags)
        except OSError as err:
            raise ImageError(f"cannot untag: {err.strerror or err}") from err
        self._state = _State(state.images, tags)

    def _delete(self, state: _State, image_id: str, tags: dict) -> list[dict]:
        images = dict(state.images)
        record = images.pop(image_id)
        in_use = {d for r in images.values() for d in r["diff_ids"]}
        unused = [d for d in dict.fromkeys(record["diff_ids"]) if d not in in_use]
        if tags != state.tags:
            self._store_tags(state, tags)
        try:
            self._record_path(image_id).unlink()
            _fsync_dir(self._images_dir)
        except OSError as err:
            raise ImageError(
                f"cannot delete image {image_id}: {err.strerror or err}; "
                "its tags are already removed"
            ) from err
        self._state = _State(images, tags)
        self._delete_layers(unused)
        return [{"Deleted": image_id}] + [{"Deleted": d} for d in unused]

    def _delete_layers(self, diff_ids: list[str]) -> None:
        trash = Path(tempfile.mkdtemp(prefix="remove-", dir=self._tmp_dir))
        try:
            for diff_id in diff_ids:
                os.rename(
                    self._layer_path(diff_id), trash / diff_id.removeprefix("sha256:")
                )
            _remove(trash)
        except OSError as err:
            raise ImageError(
                f"the image is deleted, but its unused layers could not be: "
                f"{err.strerror or err} ({err.filename}); they are removed when "
                "the store is next opened"
            ) from err


def _verify_and_unpack(
    archive: _Archive, blob: _Blob, dest: Path | None, keep_ownership: bool
) -> int:
    """Check a layer blob's digests, unpacking it into dest; its size in bytes."""
    where = f"layer {blob.diff_id} ({blob.member})"
    if blob.digest is not None:
        _verify_blob(archive, blob)
    src, size = archive.open(blob.member)
    if blob.size is not None and size != blob.size:
        raise ImageError(
            f"{where} is {size} bytes but its descriptor says {blob.size}: "
            "the archive is corrupt or truncated"
        )
    try:
        if dest is None:
            stats = _tar.unpack_layer(src, None, keep_ownership=keep_ownership)
        else:
            stats = _unpack_new(src, dest, keep_ownership)
    except _tar.LayerError as err:
        raise ImageError(f"{where}: {err}") from err
    if stats.diff_id != blob.diff_id:
        raise ImageError(
            f"{where}: the uncompressed layer has digest {stats.diff_id}, not the "
            "diff_id in the image config: the layer is corrupt or truncated, or "
            "the archive was altered; save or copy the image again"
        )
    return stats.size_bytes


def _unpack_new(src: BinaryIO, dest: Path, keep_ownership: bool) -> _tar.LayerStats:
    dest.mkdir(parents=True, mode=0o700)
    stats = _tar.unpack_layer(src, str(dest / "diff"), keep_ownership=keep_ownership)
    meta = {"diff_id": stats.diff_id, "size": stats.size_bytes}
    (dest / "layer.json").write_text(json.dumps(meta), encoding="utf-8")
    return stats


def _verify_blob(archive: _Archive, blob: _Blob) -> None:
    # The stored bytes are checked before any of them is parsed.
    src, _ = archive.open(blob.member)
    reader = _tar.HashingReader(src)
    reader.drain()
    if reader.digest() != blob.digest:
        raise ImageError(
            _mismatch_text(f"layer blob {blob.member!r}", blob.digest, reader.digest())
        )


def _record(pending: _Pending, sizes: dict) -> dict:
    config = pending.config
    diff_ids = config["rootfs"]["diff_ids"]
    return {
        "id": pending.id,
        "created": config.get("created") or "",
        "size": sum(sizes[d] for d in dict.fromkeys(diff_ids)),
        "architecture": config.get("architecture") or "",
        "os": config.get("os") or "",
        "config": config.get("config") or {},
        "diff_ids": list(diff_ids),
    }


def _image(state: _State, image_id: str) -> Image:
    record = copy.deepcopy(state.images[image_id])
    tags = sorted(t for t, i in state.tags.items() if i == image_id)
    return Image(repo_tags=tags, **record)


def _resolve(state: _State, ref: str) -> tuple[str, str | None]:
    """(image id, the tag it was found by, or None when found by id)."""
    if _FULL_HEX.fullmatch(ref):
        image_id = "sha256:" + ref.removeprefix("sha256:")
        if image_id in state.images:
            return image_id, None
        raise ImageNotFound(f"No such image: {ref}")
    try:
        tag = normalize_reference(ref)
    except ImageError:
        tag = None
    if tag in state.tags:
        return state.tags[tag], tag
    prefix = ref.removeprefix("sha256:")
    if _HEX.fullmatch(prefix):
        matches = [i for i in state.images if i[len("sha256:") :].startswith(prefix)]
        if len(matches) > 1:
            raise ImageError(
                f"image ID prefix {ref!r} is ambiguous: it matches {len(matches)} "
                "images; give more characters of the ID"
            )
        if matches:
            return matches[0], None
    raise ImageNotFound(f"No such image: {ref}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _tar.remove_tree(str(path))
    else:
        path.unlink(missing_ok=True)
