"""Checkpoint files the VM downloaded before the container started, adopted only if exact.

Why: on a replacement VM the startup script can fetch the checkpoint while the image is pulled
and the driver installs (minutes of waiting either way), and mount what it fetched into the
container (``RUNNER_PRESTAGED_DIR``, the same relative names as under ``runs/ID/checkpoints/``).
Restore then has nothing left to download. But that copy was made by a shell script outside the
agent's checks, maybe from an older generation, maybe cut short by the VM's own deadline, so a
prestaged file is used only when its size and CRC32C equal the bucket object's, checked by the
agent on the bytes that land in the checkpoint directory. Anything else is downloaded as usual.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from entrypoint.store import ObjectInfo, crc32c_of_stream, download_temp_name

log = logging.getLogger("entrypoint.prestaged")

PRESTAGED_ENV = "RUNNER_PRESTAGED_DIR"
_COPY_CHUNK = 8 << 20
# A rename that cannot work here (another mount, a read-only one): copy instead.
_CANNOT_RENAME = (errno.EXDEV, errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY)


def prestaged_path(prestaged_dir: str, rel: str) -> str:
    return os.path.join(prestaged_dir, *rel.split("/"))


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _crc32c_of_open(f: "os.PathLike[str] | int") -> str:
    with open(f, "rb", closefd=not isinstance(f, int)) as src:
        return crc32c_of_stream(src, _COPY_CHUNK)


def _copy_with_crc32c(src: str, dst: str) -> str:
    """Copy ``src`` to the new file ``dst``; the CRC32C of the bytes written, in one pass."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        crc = crc32c_of_stream(fin, _COPY_CHUNK, copy_to=fout)
        fout.flush()
        os.fsync(fout.fileno())
    return crc


def adopt(prestaged_dir: str, rel: str, info: ObjectInfo, dest: str) -> bool:
    """Put the prestaged ``rel`` at ``dest`` if it is exactly ``info``'s object; True if it did.

    Through a temp file beside ``dest`` (the name a download uses, so a sync never publishes it
    and a failure leaves nothing), renamed over ``dest`` only after its CRC32C matched. The
    prestaged file is moved when it can be (same file system: no bytes copied) and copied
    otherwise; a moved file is checked against its own inode's stat before and after the
    check, so a writer still holding it open cannot change it unseen. A wrong, short or
    unreadable prestaged file returns False (the caller downloads the object) and is never
    left at ``dest``.
    """
    src = prestaged_path(prestaged_dir, rel)
    try:
        st = os.stat(src)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_size != info.size:
        log.warning("prestaged %s has %d bytes, the checkpoint in the store %d: downloading it instead",
                    rel, st.st_size, info.size)
        return False
    tmp = download_temp_name(dest)
    try:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        try:
            os.rename(src, tmp)
            moved = True
        except OSError as e:
            if e.errno not in _CANNOT_RENAME:
                raise
            moved = False
        if moved:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                before = _signature(os.fstat(fd))
                crc = _crc32c_of_open(fd)
                after = _signature(os.fstat(fd))
            finally:
                os.close(fd)
            if before != after or before[2] != info.size:
                log.warning("prestaged %s changed while it was checked: downloading it instead", rel)
                return False
        else:
            crc = _copy_with_crc32c(src, tmp)
            if os.path.getsize(tmp) != info.size:
                log.warning("prestaged %s changed while it was copied: downloading it instead", rel)
                return False
        if crc != info.crc32c:
            log.warning("prestaged %s has CRC32C %s, the checkpoint in the store %s: downloading it instead",
                        rel, crc, info.crc32c)
            return False
        os.replace(tmp, dest)
        return True
    except OSError as e:
        # A full disk or an unreadable file: the download that follows either works or says so.
        log.warning("cannot adopt prestaged %s (%s): downloading it instead", rel, e)
        return False
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # renamed into place, or never created


def empty_prestaged(prestaged_dir: str) -> None:
    """Remove what is left in ``prestaged_dir`` (copies adopted, files refused), keeping the
    directory (a mount point on the VM). Why: a checkpoint of many GB must not stay on the boot
    disk twice for the whole job. Best effort: a file that cannot go costs disk, not the run."""
    for root, dirs, files in os.walk(prestaged_dir, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
            except OSError as e:
                log.warning("could not remove prestaged %s (%s)", name, e)
        if root != prestaged_dir:
            try:
                os.rmdir(root)
            except OSError:
                pass
