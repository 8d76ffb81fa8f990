"""Fetches the official ADE20K SceneParsing zip and unpacks it into place.

The zip is about 1 GB, so the transfer resumes after a cut connection (HTTP
``Range``), and every step that could be interrupted is arranged so that a
rerun of the same command picks up where the last one stopped:

* bytes arrive in ``<data_dir>/.downloads/ADEChallengeData2016.zip.part``;
* only a file whose SHA-1 matches is renamed to ``ADEChallengeData2016.zip``;
* the archive is unpacked into a temporary ``<data_dir>/.extract-*`` folder
  and the finished ``ADEChallengeData2016`` folder is moved into place with
  one ``os.replace``, so ``<data_dir>/ADEChallengeData2016`` is either absent
  or complete.

Only the standard library talks to the network.
"""

import glob
import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile

import tqdm

from fcn import config

DATASET_DIR_NAME = "ADEChallengeData2016"
REQUIRED_DIRS = ("images/training", "images/validation", "annotations/training", "annotations/validation")

_ZIP_NAME = DATASET_DIR_NAME + ".zip"
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


class DownloadError(RuntimeError):
    """The dataset could not be downloaded, verified or unpacked."""


class _CannotResume(Exception):
    """The server cannot continue the partial file, which must start over."""


def download_ade20k(
    data_dir: str,
    url: str = config.ADE20K_URL,
    sha1: str = config.ADE20K_SHA1,
    progress: bool = True,
    keep_zip: bool = False,
) -> str:
    """Makes ``<data_dir>/ADEChallengeData2016`` from the official zip.

    Does nothing when the folder already holds ``images/`` and
    ``annotations/``. Otherwise downloads (or resumes) the zip, checks its
    SHA-1 and unpacks it atomically. Two processes must not run this on the
    same ``data_dir`` at once: each removes the other's temporary folders.

    Args:
      data_dir: the folder that receives ``ADEChallengeData2016/``; created if
        needed.
      url: where the zip is fetched from (http, https or file).
      sha1: the zip's expected SHA-1, hexadecimal.
      progress: show progress bars for the transfer and the unpacking.
      keep_zip: keep ``<data_dir>/.downloads/ADEChallengeData2016.zip`` after
        a successful extraction instead of deleting it.

    Returns:
      The path of the ``ADEChallengeData2016`` folder.

    Raises:
      DownloadError: on a network failure, an incomplete transfer (the
        partial file is kept for resuming), a checksum mismatch, an unsafe
        member path in the zip or a zip without the expected folders.
    """
    dataset_dir = os.path.join(data_dir, DATASET_DIR_NAME)
    if _is_dataset(dataset_dir):
        return dataset_dir
    _make_room_for(dataset_dir)
    os.makedirs(data_dir, exist_ok=True)
    _remove_stale_extractions(data_dir)
    downloads_dir = os.path.join(data_dir, _DOWNLOADS_DIR_NAME)
    os.makedirs(downloads_dir, exist_ok=True)

    zip_path = _verified_zip(url, sha1, downloads_dir, data_dir, progress)
    _extract(zip_path, data_dir, progress)
    if not keep_zip:
        os.remove(zip_path)
        try:
            os.rmdir(downloads_dir)
        except OSError:
            pass  # it holds something else; not ours to delete
    return dataset_dir


def _is_dataset(dataset_dir: str) -> bool:
    return all(os.path.isdir(os.path.join(dataset_dir, name)) for name in ("images", "annotations"))


def _make_room_for(dataset_dir: str) -> None:
    """Checks that the finished folder can be moved to ``dataset_dir``.

    Fails before a long download rather than after it when something
    unfinished is in the way; an empty folder is simply removed.
    """
    if not os.path.lexists(dataset_dir):
        return
    if os.path.isdir(dataset_dir) and not os.path.islink(dataset_dir) and not os.listdir(dataset_dir):
        os.rmdir(dataset_dir)
        return
    raise DownloadError(
        f"{dataset_dir} exists but does not hold both images/ and annotations/. "
        "It is not from this downloader, which never leaves a partial folder: "
        "move it away or delete it, then rerun."
    )


def _remove_stale_extractions(data_dir: str) -> None:
    """Deletes temporary folders left by runs that were killed mid-extraction."""
    for path in glob.glob(os.path.join(glob.escape(data_dir), _EXTRACT_PREFIX + "*")):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def _manual_hint(url: str, data_dir: str) -> str:
    return (
        "Rerun the same command to resume, or download "
        f"{url} yourself and unzip it into {data_dir} (giving {os.path.join(data_dir, DATASET_DIR_NAME)})."
    )


def _verified_zip(url: str, sha1: str, downloads_dir: str, data_dir: str, progress: bool) -> str:
    """Returns the path of a zip whose SHA-1 is ``sha1``, downloading it if needed."""
    expected = sha1.strip().lower()
    zip_path = os.path.join(downloads_dir, _ZIP_NAME)
    part_path = zip_path + ".part"
    if os.path.exists(zip_path):
        # Checked again because the file may have been truncated or swapped
        # since it was verified, or ``sha1`` may have changed.
        actual = file_sha1(zip_path)
        if actual == expected:
            return zip_path
        _logger.warning("%s has SHA-1 %s, expected %s; deleting it and downloading again.", zip_path, actual, expected)
        os.remove(zip_path)

    _download(url, part_path, data_dir, progress)
    actual = file_sha1(part_path)
    if actual != expected:
        os.remove(part_path)  # resuming a corrupt file could never succeed
        raise DownloadError(
            f"Checksum mismatch for {part_path} downloaded from {url}: expected SHA-1 {expected}, "
            f"got {actual}. The file has been deleted. Check the URL and SHA-1 "
            "(data.download_url, data.download_sha1) and rerun to download again."
        )
    os.replace(part_path, zip_path)
    return zip_path


def file_sha1(path: str) -> str:
    """The SHA-1 of a file as lowercase hexadecimal, read in chunks.

    Args:
      path: the file to hash.

    Returns:
      The hexadecimal digest.
    """
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, part_path: str, data_dir: str, progress: bool) -> None:
    """Completes ``part_path`` from ``url``, resuming what is already there."""
    offset = os.path.getsize(part_path) if os.path.exists(part_path) else 0
    try:
        _transfer(url, part_path, offset, data_dir, progress)
    except _CannotResume:
        os.remove(part_path)
        _transfer(url, part_path, 0, data_dir, progress)


def _transfer(url: str, part_path: str, offset: int, data_dir: str, progress: bool) -> None:
    """One HTTP request that appends to ``part_path`` from byte ``offset``.

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
                    total=expected_total or config.ADE20K_ZIP_BYTES,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"Downloading {_ZIP_NAME}",
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
        raise DownloadError(f"Downloading {url} failed: {error}. {_manual_hint(url, data_dir)}") from error
    except _NETWORK_ERRORS as error:
        kept = f" {offset + received:,} bytes are kept in {part_path}." if offset + received else ""
        raise DownloadError(
            f"Downloading {url} failed: {error}.{kept} {_manual_hint(url, data_dir)}"
        ) from error

    # http.client returns an empty read, not an error, when the peer closes
    # early, so the announced length is the only sign of a cut transfer.
    if expected_total is not None and offset + received < expected_total:
        raise DownloadError(
            f"The download of {url} stopped after {offset + received:,} of {expected_total:,} bytes "
            f"(the connection was cut). The partial file {part_path} is kept for resuming: "
            "rerun the same command to continue."
        )


def _check_member_names(archive: zipfile.ZipFile, zip_path: str) -> None:
    """Rejects members that would land outside the extraction folder (zip-slip),
    and a name that is both a file and a folder (``a/b`` and ``a/b/c``), which
    cannot be extracted."""
    folders, files = set(), {}
    for name in archive.namelist():
        normalized = name.replace("\\", "/")
        parts = normalized.split("/")
        if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized) or ".." in parts:
            raise DownloadError(
                f"{zip_path} contains the unsafe member path {name!r} (absolute or with '..'); "
                "refusing to extract it. The file is not the official ADE20K zip."
            )
        parts = [part for part in parts if part not in ("", ".")]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if parts and not normalized.endswith("/"):
            files["/".join(parts)] = name
    clashes = sorted(folders & files.keys())
    if clashes:
        raise DownloadError(
            f"{zip_path} holds {files[clashes[0]]!r} both as a file and as a folder of other members; "
            "it cannot be extracted. The file is not the official ADE20K zip."
        )


def _extract(zip_path: str, data_dir: str, progress: bool) -> None:
    """Unpacks the zip so that ``<data_dir>/ADEChallengeData2016`` appears whole or not at all."""
    dataset_dir = os.path.join(data_dir, DATASET_DIR_NAME)
    staging_dir = tempfile.mkdtemp(prefix=_EXTRACT_PREFIX, dir=data_dir)
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                _check_member_names(archive, zip_path)
                members = archive.infolist()
                for member in tqdm.tqdm(
                    members, desc=f"Extracting {_ZIP_NAME}", unit="file", disable=not progress
                ):
                    archive.extract(member, staging_dir)
        except zipfile.BadZipFile as error:
            raise DownloadError(f"{zip_path} is not a readable zip file: {error}") from error
        except OSError as error:  # e.g. a full disk, or a member that cannot be written here
            raise DownloadError(
                f"extracting {zip_path} failed: {error}. Nothing extracted was kept; rerun once it is fixed."
            ) from error

        extracted_dir = os.path.join(staging_dir, DATASET_DIR_NAME)
        missing = [name for name in REQUIRED_DIRS if not os.path.isdir(os.path.join(extracted_dir, name))]
        if missing:
            raise DownloadError(
                f"{zip_path} does not contain the expected folders: "
                + ", ".join(f"{DATASET_DIR_NAME}/{name}" for name in missing)
                + ". It is not the official ADE20K SceneParsing zip."
            )
        os.replace(extracted_dir, dataset_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
