"""Fetches an official dataset archive and unpacks it into place.

Each layout that can be downloaded describes its archive (``Archive``: the
ADE20K SceneParsing zip, SHA-1 checked; the PASCAL VOC 2012 trainval tar, MD5
checked) and calls ``fetch_archive``. The transfer resumes after a cut connection (HTTP
``Range``), and every step that could be interrupted is arranged so that a
rerun of the same command picks up where the last one stopped:

* bytes arrive in ``<data_dir>/.downloads/<archive>.part``;
* only a file whose checksum matches is renamed to ``<archive>``;
* the archive is unpacked into a temporary ``<data_dir>/.extract-*`` folder
  and the finished folder (``ADEChallengeData2016``, ``VOCdevkit``) is moved
  into place with one ``os.replace``, so it is either absent or complete;
* members that would land outside the extraction folder (absolute paths,
  ``..``) are refused, and so are a tar's symbolic and hard links and
  special files.

``download_file`` is the same resumable transfer for a single file (the
released model files of ``fcn/weights.py``): bytes arrive in
``<file>.partial``, a check of the caller's runs on the whole file, and only a
file it accepts is renamed to its final name.

Only the standard library talks to the network.
"""

import dataclasses
import glob
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile

import tqdm

from fcn.errors import DownloadError


@dataclasses.dataclass(frozen=True)
class Archive:
    """One official archive and what it unpacks to.

    Attributes:
      file_name: the archive's name in ``.downloads``.
      top_dir: the folder it unpacks to, moved into ``data_dir`` as a whole.
      required_dirs: folders under ``top_dir`` that a genuine archive holds.
      dataset_dir: the dataset root under ``top_dir`` ("" = ``top_dir`` itself).
      hash_name: ``sha1`` or ``md5``.
      what: the archive's name in messages.
      config_keys: the config keys of its URL and checksum, for messages.
      approximate_bytes: its size, for the progress bar when the server sends none.
      present_dirs: folders under ``top_dir`` whose presence means the
        dataset is already there (default ``required_dirs``).
    """

    file_name: str
    top_dir: str
    required_dirs: tuple[str, ...]
    dataset_dir: str
    hash_name: str
    what: str
    config_keys: str
    approximate_bytes: int
    present_dirs: tuple[str, ...] = ()


_DOWNLOADS_DIR_NAME = ".downloads"
_EXTRACT_PREFIX = ".extract-"
_CHUNK_BYTES = 1 << 20
_TIMEOUT_SECONDS = 60
# What a dropped connection, a refused one or a stalled server looks like
# from urllib; socket.timeout is an alias of TimeoutError since Python 3.10.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")

_logger = logging.getLogger(__name__)



class _CannotResume(Exception):
    """The server cannot continue the partial file, which must start over."""


def fetch_archive(archive: Archive, data_dir: str, url: str, digest: str, progress: bool = True, keep: bool = False) -> str:
    """Makes the dataset folder of ``archive`` inside ``data_dir`` from the official archive.

    Does nothing when the folder is already there. Otherwise downloads (or
    resumes) the archive, checks its digest and unpacks it into a temporary
    folder that is renamed into place only when complete, refusing members
    that would leave it (absolute paths, ``..``, links, devices). Two
    processes must not run this on the same ``data_dir`` at once: each removes
    the other's temporary folders.

    Args:
      archive: what to fetch and what it unpacks to.
      data_dir: the folder that receives ``archive.top_dir``; created if needed.
      url: where the archive is fetched from (http, https or file).
      digest: its expected hexadecimal digest (``archive.hash_name``).
      progress: show progress bars for the transfer and the unpacking.
      keep: keep ``<data_dir>/.downloads/<file>`` after a successful extraction.

    Returns:
      The dataset root (``archive.dataset_dir`` under ``archive.top_dir``).

    Raises:
      DownloadError: on a network failure, an incomplete transfer (the
        partial file is kept for resuming), a checksum mismatch, an unsafe
        member path or an archive without the expected folders.
    """
    top_dir = os.path.join(data_dir, archive.top_dir)
    dataset_dir = os.path.join(top_dir, archive.dataset_dir) if archive.dataset_dir else top_dir
    if _is_dataset(top_dir, archive):
        return dataset_dir
    _make_room_for(top_dir, archive)
    os.makedirs(data_dir, exist_ok=True)
    _remove_stale_extractions(data_dir)
    downloads_dir = os.path.join(data_dir, _DOWNLOADS_DIR_NAME)
    os.makedirs(downloads_dir, exist_ok=True)

    archive_path = _verified_zip(url, digest, downloads_dir, data_dir, progress, archive)
    _extract(archive_path, data_dir, progress, archive)
    if not keep:
        os.remove(archive_path)
        try:
            os.rmdir(downloads_dir)
        except OSError:
            pass  # it holds something else; not ours to delete
    return dataset_dir


def _is_dataset(dataset_dir: str, archive: Archive) -> bool:
    return all(os.path.isdir(os.path.join(dataset_dir, name)) for name in archive.present_dirs or archive.required_dirs)


def _make_room_for(dataset_dir: str, archive: Archive) -> None:
    """Checks that the finished folder can be moved to ``dataset_dir``.

    Fails before a long download rather than after it when something
    unfinished is in the way; an empty folder is simply removed.
    """
    if not os.path.lexists(dataset_dir):
        return
    if os.path.isdir(dataset_dir) and not os.path.islink(dataset_dir) and not os.listdir(dataset_dir):
        os.rmdir(dataset_dir)
        return
    holds = ", ".join(f"{name}/" for name in archive.present_dirs or archive.required_dirs)
    raise DownloadError(
        f"{dataset_dir} exists but does not hold {holds}. "
        "It is not from this downloader, which never leaves a partial folder: "
        "move it away or delete it, then rerun."
    )


def _remove_stale_extractions(data_dir: str) -> None:
    """Deletes temporary folders left by runs that were killed mid-extraction."""
    for path in glob.glob(os.path.join(glob.escape(data_dir), _EXTRACT_PREFIX + "*")):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def _manual_hint(url: str, data_dir: str, archive: Archive) -> str:
    unpack = "unzip" if archive.file_name.endswith(".zip") else "untar"
    return (
        "Rerun the same command to resume, or download "
        f"{url} yourself and {unpack} it into {data_dir} (giving {os.path.join(data_dir, archive.top_dir)})."
    )


def _verified_zip(url: str, digest: str, downloads_dir: str, data_dir: str, progress: bool, archive: Archive) -> str:
    """Returns the path of an archive whose checksum is ``digest``, downloading it if needed."""
    expected = digest.strip().lower()
    hash_label = archive.hash_name.upper().replace("SHA1", "SHA-1")
    zip_path = os.path.join(downloads_dir, archive.file_name)
    part_path = zip_path + ".part"
    if os.path.exists(zip_path):
        # Checked again because the file may have been truncated or swapped
        # since it was verified, or the checksum may have changed.
        actual = file_digest(zip_path, archive.hash_name)
        if actual == expected:
            return zip_path
        _logger.warning("%s has %s %s, expected %s; deleting it and downloading again.", zip_path, hash_label, actual, expected)
        os.remove(zip_path)

    _download(url, part_path, progress, archive.file_name, archive.approximate_bytes, _manual_hint(url, data_dir, archive))
    actual = file_digest(part_path, archive.hash_name)
    if actual != expected:
        os.remove(part_path)  # resuming a corrupt file could never succeed
        raise DownloadError(
            f"Checksum mismatch for {part_path} downloaded from {url}: expected {hash_label} {expected}, "
            f"got {actual}. The file has been deleted. Check the URL and {hash_label} "
            f"({archive.config_keys}) and rerun to download again."
        )
    os.replace(part_path, zip_path)
    return zip_path


def file_digest(path: str, hash_name: str) -> str:
    """The ``hash_name`` (sha1, md5) digest of a file as lowercase hexadecimal, read in chunks."""
    digest = hashlib.new(hash_name)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


PARTIAL_SUFFIX = ".partial"


def download_file(url: str, path: str, check=None, progress: bool = True, approximate_bytes: int = 0, hint: str = "") -> str:
    """Fetches ``url`` into ``path``: resumable, checked, atomic.

    Bytes arrive in ``path + ".partial"``; a call after an interrupted one
    continues that file with an HTTP ``Range`` request (and starts over when
    the server cannot). ``check(partial_path)`` then runs on the whole file:
    a file it refuses (by raising) is deleted, since resuming it could never
    succeed, and its exception propagates; only a file it accepts is renamed
    to ``path`` (one ``os.replace``), so ``path`` is either absent or checked.
    An existing ``path`` is returned as it is.

    Args:
      url: http, https or file URL.
      path: the final file; its folder must exist.
      check: None, or a callable that raises when the downloaded file is not
        the expected one.
      progress: show a progress bar.
      approximate_bytes: the bar's total when the server sends no length.
      hint: what the user can do, appended to network errors.

    Returns:
      ``path``.

    Raises:
      DownloadError: a network failure or a cut transfer (the partial file is
        kept for the next call).
    """
    if os.path.isfile(path):
        return path
    partial = path + PARTIAL_SUFFIX
    _download(url, partial, progress, os.path.basename(path), approximate_bytes, hint)
    if check is not None:
        try:
            check(partial)
        except Exception:  # (a Ctrl-C during the check keeps the file for the next call)
            os.remove(partial)
            raise
    os.replace(partial, path)
    return path


def _download(url: str, part_path: str, progress: bool, label: str, approximate_bytes: int, hint: str) -> None:
    """Completes ``part_path`` from ``url``, resuming what is already there."""
    offset = os.path.getsize(part_path) if os.path.exists(part_path) else 0
    try:
        _transfer(url, part_path, offset, progress, label, approximate_bytes, hint)
    except _CannotResume:
        os.remove(part_path)
        _transfer(url, part_path, 0, progress, label, approximate_bytes, hint)


def _transfer(url: str, part_path: str, offset: int, progress: bool, label: str, approximate_bytes: int, hint: str) -> None:
    """One HTTP request that appends to ``part_path`` from byte ``offset``.

    ``label`` names the file on the progress bar, ``approximate_bytes`` is
    the bar's total when the server sends no length, ``hint`` ends the
    messages of network errors.

    Raises:
      _CannotResume: the server refuses the range or answers another one.
      DownloadError: on network errors and on a body shorter than announced.
    """
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response:
            if offset and getattr(response, "status", None) == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
                if not match or int(match.group(1)) != offset:
                    raise _CannotResume()
                mode = "ab"
            else:
                offset, mode = 0, "wb"  # the server ignored the range: the body is the whole file
            length = response.headers.get("Content-Length")
            expected_total = offset + int(length) if length and length.isdigit() else None
            with (
                open(part_path, mode) as f,
                tqdm.tqdm(
                    total=expected_total or approximate_bytes or None,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"Downloading {label}",
                    disable=not progress,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            match = _UNSATISFIED_RANGE.fullmatch(error.headers.get("Content-Range", "").strip())
            if match and int(match.group(1)) == offset:
                return  # the partial file is already whole (stopped before it was verified)
            raise _CannotResume() from None
        raise DownloadError(f"Downloading {url} failed: {error}. {hint}".rstrip()) from error
    except _NETWORK_ERRORS as error:
        kept = f" {offset + received:,} bytes are kept in {part_path}." if offset + received else ""
        raise DownloadError(f"Downloading {url} failed: {error}.{kept} {hint}".rstrip()) from error

    # http.client returns an empty read, not an error, when the peer closes
    # early, so the announced length is the only sign of a cut transfer.
    if expected_total is not None and offset + received < expected_total:
        raise DownloadError(
            f"The download of {url} stopped after {offset + received:,} of {expected_total:,} bytes "
            f"(the connection was cut). The partial file {part_path} is kept for resuming: "
            "rerun the same command to continue."
        )


def _check_member_names(archive, zip_path: str, spec: Archive) -> None:
    """Rejects members that would land outside the extraction folder (zip-slip),
    and a name that is both a file and a folder (``a/b`` and ``a/b/c``), which
    cannot be extracted."""
    names = archive.namelist() if isinstance(archive, zipfile.ZipFile) else [m.name + ("/" if m.isdir() else "") for m in archive]
    _check_names(names, zip_path, spec)


def _check_names(names: list[str], archive_path: str, spec: Archive) -> None:
    folders, files = set(), {}
    for name in names:
        normalized = name.replace("\\", "/")
        parts = normalized.split("/")
        if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized) or ".." in parts:
            raise DownloadError(
                f"{archive_path} contains the unsafe member path {name!r} (absolute or with '..'); "
                f"refusing to extract it. The file is not {spec.what}."
            )
        parts = [part for part in parts if part not in ("", ".")]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if parts and not normalized.endswith("/"):
            files["/".join(parts)] = name
    clashes = sorted(folders & files.keys())
    if clashes:
        raise DownloadError(
            f"{archive_path} holds {files[clashes[0]]!r} both as a file and as a folder of other members; "
            f"it cannot be extracted. The file is not {spec.what}."
        )


def _check_tar_members(members: list[tarfile.TarInfo], tar_path: str, spec: Archive) -> None:
    """Only regular files and folders: a link (symbolic or hard) could make later members write outside the folder."""
    for member in members:
        if not (member.isfile() or member.isdir()):
            kind = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "a special file"
            raise DownloadError(
                f"{tar_path} contains {member.name!r}, {kind}; refusing to extract it. The file is not {spec.what}."
            )
    _check_names([m.name + ("/" if m.isdir() else "") for m in members], tar_path, spec)


def _extract(zip_path: str, data_dir: str, progress: bool, spec: Archive) -> None:
    """Unpacks the archive so that ``<data_dir>/<top_dir>`` appears whole or not at all."""
    dataset_dir = os.path.join(data_dir, spec.top_dir)
    staging_dir = tempfile.mkdtemp(prefix=_EXTRACT_PREFIX, dir=data_dir)
    try:
        try:
            if spec.file_name.endswith(".zip"):
                with zipfile.ZipFile(zip_path) as archive:
                    _check_member_names(archive, zip_path, spec)
                    members = archive.infolist()
                    for member in tqdm.tqdm(
                        members, desc=f"Extracting {spec.file_name}", unit="file", disable=not progress
                    ):
                        archive.extract(member, staging_dir)
            else:
                with tarfile.open(zip_path) as archive:
                    members = archive.getmembers()
                    _check_tar_members(members, zip_path, spec)
                    for member in tqdm.tqdm(members, desc=f"Extracting {spec.file_name}", unit="file", disable=not progress):
                        # "data" filter (Python 3.12, 3.11.4): a second guard against paths leaving the folder.
                        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                        archive.extract(member, staging_dir, set_attrs=False, **extra)
        except zipfile.BadZipFile as error:
            raise DownloadError(f"{zip_path} is not a readable zip file: {error}") from error
        except tarfile.TarError as error:
            raise DownloadError(f"{zip_path} is not a readable tar file: {error}") from error
        except OSError as error:  # e.g. a full disk, or a member that cannot be written here
            raise DownloadError(
                f"extracting {zip_path} failed: {error}. Nothing extracted was kept; rerun once it is fixed."
            ) from error

        extracted_dir = os.path.join(staging_dir, spec.top_dir)
        missing = [name for name in spec.required_dirs if not os.path.isdir(os.path.join(extracted_dir, name))]
        if missing:
            raise DownloadError(
                f"{zip_path} does not contain the expected folders: "
                + ", ".join(f"{spec.top_dir}/{name}" for name in missing)
                + f". It is not {spec.what}."
            )
        os.replace(extracted_dir, dataset_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
