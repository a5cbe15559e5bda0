"""Read one image layer: decompress it, hash it, and unpack it for overlayfs.

A layer is a tar stream, plain or compressed with gzip, zstd, xz or bzip2.
The compression is told by the stream's first bytes, never by a media type
alone: docker-archive has no media types, and labels are sometimes wrong.

Facts the unpacking relies on:

- Layers are unpacked into a private staging directory that nothing else
  writes to, so checking a path with lstat and then creating it is not a race.
- A tar member name can point anywhere, and a symlink unpacked earlier can
  redirect the members after it. Every name is checked lexically (no absolute
  path, no '..'), and every directory on the way to it is checked with lstat
  never to be a symlink, so nothing is written outside the layer directory.
  Relative symlink targets that climb above the layer root are refused too,
  so that no path on the host leads out of the layer through a link.
- Whiteouts arrive in AUFS form (`.wh.NAME`, `.wh..wh..opq`) and are written
  in overlayfs form: a 0:0 character device NAME, and the xattr
  trusted.overlay.opaque="y" on an opaque directory. trusted.* xattrs need
  CAP_SYS_ADMIN, so layers with opaque directories can be unpacked only by
  root. Any trusted.* xattr carried by the tar itself is refused, because it
  would forge overlayfs metadata.
- chown(2) clears setuid bits and file capabilities, so the owner is set
  first, then the mode, then the xattrs.
- Directory modes and mtimes are set after the whole layer is written:
  creating entries changes a directory's mtime, and a read-only directory
  would stop the members after it.
"""

import bz2
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

CHUNK_BYTES = 1 << 20
_ZSTD_INPUT_BYTES = 128 << 10

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
# AUFS kept its own bookkeeping at the layer root under these names; it has
# no meaning in an image, and Docker skips it too.
_AUFS_META_PREFIX = ".wh..wh."
_OPAQUE_XATTR = "trusted.overlay.opaque"
_PAX_XATTR_PREFIX = "SCHILY.xattr."


class LayerError(Exception):
    """A layer is corrupt, truncated or unsafe; the message names the member."""


class _StreamError(Exception):
    """Reading the (decompressed) layer stream failed."""


@dataclass
class LayerStats:
    diff_id: str  # "sha256:..." of the uncompressed tar stream
    compression: str  # "none", "gzip", "zstd", "xz" or "bzip2"
    size_bytes: int  # bytes of the regular files in the layer


class HashingReader:
    """A reader that hashes every byte read through it."""

    def __init__(self, src: BinaryIO):
        self._src = src
        self._sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._sha256.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK_BYTES):
            pass

    def digest(self) -> str:
        return "sha256:" + self._sha256.hexdigest()


class _PrefixedReader:
    """Gives back the bytes already read to sniff the format, then the rest."""

    def __init__(self, prefix: bytes, src: BinaryIO):
        self._prefix = prefix
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            return self._src.read(n)
        if n < 0:
            data, self._prefix = self._prefix + self._src.read(), b""
            return data
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        return data


class _ZstdReader:
    """Decompresses zstd frames one after another.

    zstandard's stream_reader returns a clean end of stream when its input
    stops in the middle of a frame; this reader reports that as truncation.
    """

    def __init__(self, src: BinaryIO):
        self._src = src
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None
        self._pending = b""
        self._out = bytearray()
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._out) < n):
            self._fill()
        if n < 0:
            n = len(self._out)
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def _fill(self) -> None:
        chunk = self._pending or self._src.read(_ZSTD_INPUT_BYTES)
        self._pending = b""
        if not chunk:
            if self._frame is not None:
                raise _StreamError("the zstd stream ends inside a frame")
            self._eof = True
            return
        if self._frame is None:
            self._frame = self._dctx.decompressobj()
        self._out += self._frame.decompress(chunk)
        if self._frame.eof:
            self._pending = self._frame.unused_data
            self._frame = None


def _read_up_to(src: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = src.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _is_bzip2(head: bytes) -> bool:
    # "BZh" alone could start a plain tar whose first member is named so;
    # a real bzip2 stream follows it with the block size digit.
    return head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) > 3


def open_decompressed(src: BinaryIO) -> tuple[BinaryIO, str]:
    """Wrap src in the decompressor its magic bytes call for."""
    head = _read_up_to(src, 6)
    src = _PrefixedReader(head, src)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=src, mode="rb"), "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return _ZstdReader(src), "zstd"
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(src), "xz"
    if _is_bzip2(head):
        return bz2.BZ2File(src), "bzip2"
    return src, "none"


DECOMPRESSION_ERRORS = (
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
    _StreamError,
)


def unpack_layer(
    blob: BinaryIO, dest: str | None, *, keep_ownership: bool
) -> LayerStats:
    """Read a layer blob to its end and unpack it into dest.

    dest must not exist yet; it is created. With dest None the layer is only
    hashed (it is already in the store). keep_ownership False leaves every
    file owned by the caller, for stores that are not run as root.
    Raises LayerError naming the member at fault.
    """
    stream, compression = open_decompressed(blob)
    plain = HashingReader(stream)
    unpacker = _Unpacker(dest, keep_ownership) if dest is not None else None
    try:
        size_bytes = _read_tar(plain, unpacker) if unpacker else 0
        plain.drain()
    except tarfile.TarError as err:
        where = unpacker.where() if unpacker else ""
        raise LayerError(f"the layer is not a valid tar stream{where}: {err}") from err
    except DECOMPRESSION_ERRORS as err:
        where = unpacker.where() if unpacker else ""
        raise LayerError(
            f"the layer's {compression} stream is corrupt or truncated{where}: {err}"
        ) from err
    return LayerStats(plain.digest(), compression, size_bytes)


def _read_tar(plain: HashingReader, unpacker: "_Unpacker") -> int:
    size_bytes = 0
    with tarfile.open(fileobj=plain, mode="r|", bufsize=CHUNK_BYTES) as tar:
        for member in tar:
            unpacker.add(tar, member)
            if member.isreg():
                size_bytes += member.size
        # tarfile takes a stream that stops at a member boundary for one that
        # ends properly; only a proper end has read the zero block at offset.
        if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
            raise LayerError(
                "the layer's tar stream stops without an end-of-archive marker: "
                "it is truncated"
            )
    unpacker.finish()
    return size_bytes


def _name_parts(name: str, what: str) -> list[str]:
    if name.startswith("/"):
        raise LayerError(f"{what} has an absolute path; refusing an unsafe layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{what} has a '..' component; refusing an unsafe layer")
    return parts


def _escapes_root(dir_parts: list[str], target: str) -> bool:
    depth = len(dir_parts)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        depth = depth - 1 if part == ".." else depth + 1
        if depth < 0:
            return True
    return False


def _mtime_ns(member: tarfile.TarInfo) -> int:
    return round(member.mtime * 1_000_000_000)


class _Unpacker:
    """Writes the members of one layer under root, in overlayfs form."""

    def __init__(self, root: str, keep_ownership: bool):
        self._root = root
        self._keep_ownership = keep_ownership
        self._dirs: dict[str, tarfile.TarInfo] = {}
        self._current = ""
        os.mkdir(root, 0o700)
        os.chmod(root, 0o755)

    def where(self) -> str:
        return f" (at member {self._current!r})" if self._current else ""

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self._current = member.name
        try:
            self._add(tar, member)
        except OSError as err:
            raise LayerError(self._os_error_text(member, err)) from err

    def finish(self) -> None:
        """Set the deferred directory attributes, deepest directory first."""
        self._current = ""
        for path in sorted(self._dirs, key=lambda p: p.count("/"), reverse=True):
            member = self._dirs[path]
            try:
                self._set_attrs(path, member)
            except OSError as err:
                raise LayerError(self._os_error_text(member, err)) from err

    def _os_error_text(self, member: tarfile.TarInfo, err: OSError) -> str:
        text = f"cannot unpack member {member.name!r}: {err.strerror or err}"
        if err.errno == errno.EPERM:
            text += " (unpacking image layers needs root)"
        return text

    def _add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _name_parts(member.name, f"member {member.name!r}")
        if (
            parts
            and parts[0].startswith(_AUFS_META_PREFIX)
            and parts != [_OPAQUE_MARKER]
        ):
            return
        base = parts[-1] if parts else ""
        if base == _OPAQUE_MARKER:
            self._mark_opaque(parts[:-1], member)
        elif base.startswith(_WHITEOUT_PREFIX):
            self._add_whiteout(parts[:-1], base[len(_WHITEOUT_PREFIX) :], member)
        elif not parts:
            self._add_root(member)
        elif member.isdir():
            self._add_dir(parts, member)
        else:
            self._add_leaf(tar, parts, member)

    def _parent_dir(
        self, parts: list[str], member: tarfile.TarInfo, create: bool
    ) -> str:
        """The directory that holds parts[-1], never reached through a symlink."""
        path = self._root
        for i, part in enumerate(parts[:-1]):
            path = os.path.join(path, part)
            prefix = "/".join(parts[: i + 1])
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not create:
                    raise LayerError(self._missing_text(member)) from None
                os.mkdir(path, 0o700)
                os.chmod(path, 0o755)
                continue
            if stat.S_ISLNK(mode):
                raise LayerError(self._through_symlink_text(member, prefix, create))
            if not stat.S_ISDIR(mode):
                raise LayerError(
                    f"member {member.name!r} needs {prefix!r} to be a directory, "
                    "but the layer made it something else"
                )
        return path

    def _through_symlink_text(self, member, prefix: str, writing: bool) -> str:
        if writing:
            what = f"member {member.name!r} would be written through"
        else:
            what = f"hardlink {member.name!r} -> {member.linkname!r} goes through"
        return (
            f"{what} the symlink {prefix!r} unpacked earlier in this layer; "
            "refusing an unsafe layer"
        )

    def _missing_text(self, member: tarfile.TarInfo) -> str:
        return (
            f"hardlink {member.name!r} points to {member.linkname!r}, which is "
            "not in this layer; refusing an unsafe layer"
        )

    def _path(self, parts: list[str], member: tarfile.TarInfo) -> str:
        return os.path.join(self._parent_dir(parts, member, create=True), parts[-1])

    def _clear(self, path: str, keep_dir: bool) -> bool:
        """Remove what is at path, unless keep_dir and it is a directory."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if keep_dir:
                return True
            remove_tree(path)
        else:
            os.unlink(path)
        return False

    def _add_root(self, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            raise LayerError(
                f"member {member.name!r} names the layer root but is not a directory"
            )
        self._set_xattrs(self._root, member)
        self._dirs[self._root] = member

    def _add_dir(self, parts: list[str], member: tarfile.TarInfo) -> None:
        path = self._path(parts, member)
        if not self._clear(path, keep_dir=True):
            os.mkdir(path, 0o700)
        self._set_xattrs(path, member)
        self._dirs[path] = member

    def _add_leaf(self, tar, parts: list[str], member: tarfile.TarInfo) -> None:
        path = self._path(parts, member)
        if member.islnk():
            target = self._link_target(parts, member)
            self._clear(path, keep_dir=False)
            os.link(target, path, follow_symlinks=False)
            return
        if member.issym():
            self._check_symlink(parts, member)
        self._clear(path, keep_dir=False)
        if member.isreg():
            self._write_file(tar, path, member)
        elif member.issym():
            os.symlink(member.linkname, path)
            self._set_attrs(path, member)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(path, kind | 0o600, device)
            self._set_attrs(path, member)
        elif member.isfifo():
            os.mkfifo(path, 0o600)
            self._set_attrs(path, member)
        else:
            raise LayerError(
                f"member {member.name!r} has tar type {member.type!r}, "
                "which image layers do not use"
            )

    def _write_file(self, tar, path: str, member: tarfile.TarInfo) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            _copy_member(tar.extractfile(member), fd, member)
            self._chown(fd, member)
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(fd, member)
            os.utime(fd, ns=(_mtime_ns(member), _mtime_ns(member)))
        finally:
            os.close(fd)

    def _link_target(self, parts: list[str], member: tarfile.TarInfo) -> str:
        what = f"hardlink {member.name!r} -> {member.linkname!r}"
        if member.linkname.startswith("/"):
            raise LayerError(f"{what} has an absolute target; refusing an unsafe layer")
        target_parts = _name_parts(member.linkname, what)
        if not target_parts or target_parts == parts:
            raise LayerError(f"{what} does not point to another file in the layer")
        parent = self._parent_dir(target_parts, member, create=False)
        target = os.path.join(parent, target_parts[-1])
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            raise LayerError(self._missing_text(member)) from None
        if stat.S_ISDIR(mode):
            raise LayerError(f"{what} points to a directory")
        return target

    def _check_symlink(self, parts: list[str], member: tarfile.TarInfo) -> None:
        target = member.linkname
        if not target.startswith("/") and _escapes_root(parts[:-1], target):
            raise LayerError(
                f"symlink {member.name!r} -> {target!r} climbs out of the layer "
                "root; refusing an unsafe layer"
            )

    def _add_whiteout(self, dir_parts, name: str, member: tarfile.TarInfo) -> None:
        if not name:
            raise LayerError(f"whiteout {member.name!r} names no file")
        path = self._path(dir_parts + [name], member)
        self._clear(path, keep_dir=False)
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        self._chown(path, member)

    def _mark_opaque(self, dir_parts: list[str], member: tarfile.TarInfo) -> None:
        path = self._root
        if dir_parts:
            path = self._path(dir_parts, member)
            if not self._clear(path, keep_dir=True):
                os.mkdir(path, 0o700)
                os.chmod(path, 0o755)
        try:
            os.setxattr(path, _OPAQUE_XATTR, b"y", follow_symlinks=False)
        except PermissionError as err:
            raise LayerError(
                f"cannot mark the directory of {member.name!r} opaque: setting "
                f"{_OPAQUE_XATTR} needs CAP_SYS_ADMIN; load images as root"
            ) from err

    def _chown(self, target, member: tarfile.TarInfo) -> None:
        if not self._keep_ownership:
            return
        try:
            if isinstance(target, int):
                os.fchown(target, member.uid, member.gid)
            else:
                os.chown(target, member.uid, member.gid, follow_symlinks=False)
        except OSError as err:
            # EINVAL: the owner has no mapping in this user namespace.
            if err.errno not in (errno.EPERM, errno.EINVAL):
                raise
            raise LayerError(
                f"cannot give member {member.name!r} its owner "
                f"{member.uid}:{member.gid} ({err.strerror}); unpacking image "
                "layers with their owners needs root"
            ) from err

    def _set_attrs(self, path: str, member: tarfile.TarInfo) -> None:
        self._chown(path, member)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        if not member.isdir():
            self._set_xattrs(path, member)
        mtime_ns = _mtime_ns(member)
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def _set_xattrs(self, target, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(_PAX_XATTR_PREFIX):
                continue
            name = key[len(_PAX_XATTR_PREFIX) :]
            if name.startswith("trusted."):
                raise LayerError(
                    f"member {member.name!r} carries the xattr {name!r}, which "
                    "would forge overlayfs metadata; refusing an unsafe layer"
                )
            raw = value.encode("utf-8", "surrogateescape")
            if isinstance(target, int):
                os.setxattr(target, name, raw)
            else:
                os.setxattr(target, name, raw, follow_symlinks=False)


def _copy_member(src: BinaryIO, fd: int, member: tarfile.TarInfo) -> None:
    remaining = member.size
    while remaining > 0:
        try:
            chunk = src.read(min(CHUNK_BYTES, remaining))
        except DECOMPRESSION_ERRORS as err:
            # Not a filesystem error of this member: the stream itself broke.
            raise _StreamError(str(err)) from err
        if not chunk:
            raise LayerError(
                f"member {member.name!r} ends after {member.size - remaining} of "
                f"{member.size} bytes: the layer is truncated"
            )
        _write_all(fd, chunk)
        remaining -= len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_tree(path: str) -> None:
    """Remove a directory tree, also when it holds read-only directories."""
    shutil.rmtree(path, onerror=_make_writable_and_retry)


def _make_writable_and_retry(func, failed_path: str, _exc_info) -> None:
    # Only a caller without CAP_DAC_OVERRIDE gets here. chmod follows
    # symlinks, so only directories seen by lstat are touched.
    for path in (os.path.dirname(failed_path), failed_path):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.chmod(path, 0o700)
    func(failed_path)
