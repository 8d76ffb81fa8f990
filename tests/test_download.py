"""Tests of fcn.download against a local HTTP server on 127.0.0.1."""

import hashlib
import http.server
import io
import os
import random
import re
import socket
import threading
import zipfile

import pytest

from fcn import download, errors
from fcn.datasets import ade20k, voc

# A few tiny files in the official layout; the bytes are arbitrary because
# these tests check transport and unpacking, not decoding.
DATASET_FILES = {
    "ADEChallengeData2016/images/training/ADE_train_00000001.jpg": b"train image 1" * 50,
    "ADEChallengeData2016/images/training/ADE_train_00000002.jpg": random.Random(1).randbytes(20_000),
    "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg": b"val image 1",
    "ADEChallengeData2016/annotations/training/ADE_train_00000001.png": b"\x00\x01\x02" * 100,
    "ADEChallengeData2016/annotations/training/ADE_train_00000002.png": random.Random(2).randbytes(5_000),
    "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png": b"val label 1",
    "ADEChallengeData2016/objectInfo150.txt": b"Idx\tRatio\tTrain\tVal\tName\n",
}


def make_zip(files: dict[str, bytes], with_dir_entries: bool = True) -> bytes:
    """Builds a zip in memory, with directory entries as the official one has."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if with_dir_entries:
            dirs = sorted({name.rsplit("/", 1)[0] + "/" for name in files if "/" in name})
            for name in dirs:
                archive.writestr(zipfile.ZipInfo(name), b"")
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def sha1_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class ZipServer(http.server.ThreadingHTTPServer):
    """Serves ``payload`` at every path and records each request's Range header.

    ``mode`` picks the behaviour: ``normal`` (honours ``Range: bytes=N-``),
    ``cut`` (announces the full length, sends half the body, hangs up),
    ``ignore_range`` (always answers 200 with the whole body) and
    ``not_found`` (404).
    """

    daemon_threads = True

    def __init__(self, payload: bytes):
        super().__init__(("127.0.0.1", 0), ZipRequestHandler)
        self.payload = payload
        self.mode = "normal"
        self.ranges: list[str | None] = []  # one entry per request
        self.statuses: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/ADEChallengeData2016.zip"


class ZipRequestHandler(http.server.BaseHTTPRequestHandler):
    server: ZipServer

    def do_GET(self):
        server = self.server
        body = server.payload
        range_header = self.headers.get("Range")
        server.ranges.append(range_header)
        if server.mode == "not_found":
            self._start(404, {"Content-Length": "0"})
            return

        start = 0
        if range_header and server.mode != "ignore_range":
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, f"unexpected Range header {range_header!r}"
            start = int(match.group(1))
            if start >= len(body):
                self._start(416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"})
                return
            self._start(206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}, len(body) - start)
        else:
            self._start(200, {}, len(body))

        data = body[start:]
        if server.mode == "cut":
            data = data[: len(data) // 2]
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True  # with "cut", the client sees EOF before Content-Length

    def _start(self, status: int, headers: dict[str, str], length: int | None = None) -> None:
        self.server.statuses.append(status)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, format, *args):  # keeps pytest output clean
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would swallow requests to 127.0.0.1.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def serve():
    """Starts a ZipServer for a payload; every server is shut down afterwards."""
    servers = []

    def start(payload: bytes) -> ZipServer:
        server = ZipServer(payload)
        # A short poll interval keeps shutdown() from waiting half a second per test.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def payload() -> bytes:
    return make_zip(DATASET_FILES)


def read_tree(root) -> dict[str, bytes]:
    """Relative path (with '/') -> bytes of every file under ``root``."""
    tree = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                tree[os.path.relpath(path, root).replace(os.sep, "/")] = f.read()
    return tree


def dataset_files_relative(files: dict[str, bytes]) -> dict[str, bytes]:
    prefix = "ADEChallengeData2016/"
    return {name[len(prefix) :]: content for name, content in files.items()}


def leftovers(data_dir) -> list[str]:
    """Partial downloads and temporary extraction folders under ``data_dir``."""
    names = []
    for directory, dirnames, filenames in os.walk(data_dir):
        for name in dirnames + filenames:
            if name.endswith(".part") or name.startswith(".extract-"):
                names.append(os.path.relpath(os.path.join(directory, name), data_dir))
    return names


def part_path(data_dir) -> str:
    return os.path.join(data_dir, ".downloads", "ADEChallengeData2016.zip.part")


def verified_zip_path(data_dir) -> str:
    return os.path.join(data_dir, ".downloads", "ADEChallengeData2016.zip")


def test_download_extracts_exact_files_and_second_call_is_offline(tmp_path, serve, payload):
    server = serve(payload)
    data_dir = tmp_path / "data"

    path = ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert path == os.path.join(str(data_dir), "ADEChallengeData2016")
    assert read_tree(path) == dataset_files_relative(DATASET_FILES)
    assert leftovers(data_dir) == []
    assert not os.path.exists(verified_zip_path(data_dir))  # keep_zip=False deletes it
    assert server.ranges == [None]

    assert ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False) == path
    assert len(server.ranges) == 1, "the second call must not touch the network"


def test_keep_zip_keeps_the_verified_zip(tmp_path, serve, payload):
    server = serve(payload)
    data_dir = tmp_path / "data"

    ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False, keep_zip=True)

    with open(verified_zip_path(data_dir), "rb") as f:
        assert f.read() == payload


def test_checksum_mismatch_deletes_the_file(tmp_path, serve, payload):
    server = serve(payload)
    data_dir = tmp_path / "data"
    wrong_sha1 = "0123456789abcdef0123456789abcdef01234567"

    with pytest.raises(errors.DownloadError) as raised:
        ade20k.fetch(str(data_dir), url=server.url, sha1=wrong_sha1, progress=False)

    message = str(raised.value)
    assert wrong_sha1 in message
    assert sha1_of(payload) in message
    assert server.url in message
    assert not (data_dir / "ADEChallengeData2016").exists()
    assert not os.path.exists(verified_zip_path(data_dir))
    assert not os.path.exists(part_path(data_dir))


def test_interrupted_transfer_keeps_part_and_resumes_with_range(tmp_path, serve, payload):
    server = serve(payload)
    server.mode = "cut"
    data_dir = tmp_path / "data"
    half = len(payload) // 2

    with pytest.raises(errors.DownloadError) as raised:
        ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    message = str(raised.value)
    assert f"{half:,}" in message and "rerun" in message
    assert not (data_dir / "ADEChallengeData2016").exists()
    assert not os.path.exists(verified_zip_path(data_dir)), "a short file must never get the final name"
    with open(part_path(data_dir), "rb") as f:
        assert f.read() == payload[:half]

    server.mode = "normal"
    path = ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert server.ranges[-1] == f"bytes={half}-"
    assert server.statuses[-1] == 206
    assert read_tree(path) == dataset_files_relative(DATASET_FILES)
    assert leftovers(data_dir) == []


def test_server_ignoring_range_starts_over(tmp_path, serve, payload):
    server = serve(payload)
    server.mode = "ignore_range"
    data_dir = tmp_path / "data"
    os.makedirs(data_dir / ".downloads")
    junk = b"junk that must not stay in front of the real bytes"
    with open(part_path(data_dir), "wb") as f:
        f.write(junk)

    path = ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert server.ranges == [f"bytes={len(junk)}-"]
    assert server.statuses == [200]
    assert read_tree(path) == dataset_files_relative(DATASET_FILES)


def test_complete_part_file_is_verified_after_416(tmp_path, serve, payload):
    # A run stopped while hashing leaves a whole .part file; the server then
    # answers 416 to "bytes=<size>-".
    server = serve(payload)
    data_dir = tmp_path / "data"
    os.makedirs(data_dir / ".downloads")
    with open(part_path(data_dir), "wb") as f:
        f.write(payload)

    path = ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert server.statuses == [416]
    assert read_tree(path) == dataset_files_relative(DATASET_FILES)


def test_corrupt_verified_zip_is_rehashed_and_downloaded_again(tmp_path, serve, payload):
    server = serve(payload)
    data_dir = tmp_path / "data"
    os.makedirs(data_dir / ".downloads")
    with open(verified_zip_path(data_dir), "wb") as f:
        f.write(payload[:-10])

    path = ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert server.ranges == [None]
    assert read_tree(path) == dataset_files_relative(DATASET_FILES)


@pytest.mark.parametrize("evil_name", ["../evil.txt", "ADEChallengeData2016/../../evil.txt", "/tmp/evil.txt"])
def test_zip_slip_member_is_rejected(tmp_path, serve, evil_name):
    files = dict(DATASET_FILES)
    files[evil_name] = b"escaped"
    payload = make_zip(files, with_dir_entries=False)
    server = serve(payload)
    data_dir = tmp_path / "root" / "data"

    with pytest.raises(errors.DownloadError, match="unsafe member"):
        ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert list(tmp_path.rglob("evil.txt")) == []
    assert os.listdir(tmp_path) == ["root"]
    assert os.listdir(tmp_path / "root") == ["data"]
    assert not (data_dir / "ADEChallengeData2016").exists()
    assert leftovers(data_dir) == []


def test_zip_without_annotations_validation_is_rejected(tmp_path, serve):
    files = {name: content for name, content in DATASET_FILES.items() if "annotations/validation" not in name}
    payload = make_zip(files)
    server = serve(payload)
    data_dir = tmp_path / "data"

    with pytest.raises(errors.DownloadError, match="ADEChallengeData2016/annotations/validation"):
        ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert not (data_dir / "ADEChallengeData2016").exists()
    assert leftovers(data_dir) == []


def test_interrupted_extraction_leaves_no_dataset_and_rerun_cleans_up(tmp_path, serve, payload, monkeypatch):
    server = serve(payload)
    data_dir = tmp_path / "data"
    real_extract = zipfile.ZipFile.extract
    calls = []

    def extract_then_interrupt(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", extract_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)
    monkeypatch.undo()

    assert len(calls) == 5
    assert not (data_dir / "ADEChallengeData2016").exists()
    assert leftovers(data_dir) == []
    # What a killed process (no chance to clean up) leaves behind.
    stale = data_dir / ".extract-killed" / "ADEChallengeData2016" / "images" / "training"
    stale.mkdir(parents=True)
    (stale / "ADE_train_00000001.jpg").write_bytes(b"half written")

    path = ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert read_tree(path) == dataset_files_relative(DATASET_FILES)
    assert leftovers(data_dir) == []
    assert len(server.ranges) == 1, "the verified zip from the first run is reused"


def test_unfinished_folder_in_the_way_is_reported_before_downloading(tmp_path, serve, payload):
    server = serve(payload)
    data_dir = tmp_path / "data"
    (data_dir / "ADEChallengeData2016" / "images").mkdir(parents=True)

    with pytest.raises(errors.DownloadError, match="move it away or delete it"):
        ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert server.ranges == []


def test_http_error_names_the_url(tmp_path, serve, payload):
    server = serve(payload)
    server.mode = "not_found"

    with pytest.raises(errors.DownloadError) as raised:
        ade20k.fetch(str(tmp_path), url=server.url, sha1=sha1_of(payload), progress=False)

    assert server.url in str(raised.value) and "404" in str(raised.value)


def test_refused_connection_is_wrapped(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ADEChallengeData2016.zip"  # nothing listens there now

    with pytest.raises(errors.DownloadError) as raised:
        ade20k.fetch(str(tmp_path), url=url, sha1="0" * 40, progress=False)

    message = str(raised.value)
    assert url in message and "Rerun" in message and "unzip it into" in message
    assert isinstance(raised.value.__cause__, OSError)


def test_member_that_is_both_file_and_folder_is_a_download_error(tmp_path, serve):
    files = dict(DATASET_FILES)
    files["ADEChallengeData2016/images/training"] = b"a file where a folder is"
    payload = make_zip(files, with_dir_entries=False)
    server = serve(payload)
    data_dir = tmp_path / "data"

    with pytest.raises(errors.DownloadError, match="'ADEChallengeData2016/images/training' both as a file and as a folder"):
        ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)

    assert not (data_dir / "ADEChallengeData2016").exists()
    assert leftovers(data_dir) == []


def test_failed_write_while_extracting_is_a_download_error(tmp_path, serve, payload, monkeypatch):
    server = serve(payload)
    data_dir = tmp_path / "data"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download.zipfile.ZipFile, "extract", disk_full)
    with pytest.raises(errors.DownloadError, match="extracting .*ADEChallengeData2016.zip failed: .*No space left on device"):
        ade20k.fetch(str(data_dir), url=server.url, sha1=sha1_of(payload), progress=False)
    assert not (data_dir / "ADEChallengeData2016").exists()
    assert leftovers(data_dir) == []


# ---------------------------------------------------------------------------
# The PASCAL VOC 2012 trainval tar.

VOC_FILES = {
    "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": random.Random(3).randbytes(30_000),
    "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png": b"\x89PNG palette" * 20,
    "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
    "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"",
    "VOCdevkit/VOC2012/Annotations/2007_000032.xml": b"<annotation/>",
}


def make_tar(files: dict[str, bytes], extra=()) -> bytes:
    """An uncompressed tar in memory, with folder entries as the official one has; ``extra``: more TarInfo members."""
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        folders = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for info in extra:
            archive.addfile(info)
    return buffer.getvalue()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_voc_download_extracts_the_tar_and_checks_its_md5(tmp_path, serve):
    payload = make_tar(VOC_FILES)
    server = serve(payload)
    data_dir = tmp_path / "data"
    path = voc.fetch(str(data_dir), url=server.url, md5=md5_of(payload), progress=False)
    assert path == os.path.join(str(data_dir), "VOCdevkit", "VOC2012")
    assert read_tree(os.path.join(str(data_dir), "VOCdevkit")) == {k[len("VOCdevkit/"):]: v for k, v in VOC_FILES.items()}
    assert leftovers(data_dir) == [] and not os.path.exists(os.path.join(str(data_dir), ".downloads"))
    assert voc.fetch(str(data_dir), url=server.url, md5=md5_of(payload), progress=False) == path
    assert len(server.ranges) == 1, "the second call must not touch the network"


def test_voc_md5_mismatch_deletes_the_file(tmp_path, serve):
    payload = make_tar(VOC_FILES)
    server = serve(payload)
    wrong = "0" * 32
    with pytest.raises(errors.DownloadError) as raised:
        voc.fetch(str(tmp_path), url=server.url, md5=wrong, progress=False)
    message = str(raised.value)
    assert f"expected MD5 {wrong}" in message and md5_of(payload) in message and "data.voc_download_md5" in message
    assert not os.path.exists(os.path.join(str(tmp_path), ".downloads", "VOCtrainval_11-May-2012.tar.part"))
    assert not (tmp_path / "VOCdevkit").exists()


def test_voc_interrupted_transfer_resumes_with_range(tmp_path, serve):
    payload = make_tar(VOC_FILES)
    server = serve(payload)
    server.mode = "cut"
    with pytest.raises(errors.DownloadError, match="rerun"):
        voc.fetch(str(tmp_path), url=server.url, md5=md5_of(payload), progress=False)
    part = os.path.join(str(tmp_path), ".downloads", "VOCtrainval_11-May-2012.tar.part")
    with open(part, "rb") as f:
        assert f.read() == payload[: len(payload) // 2]
    assert not (tmp_path / "VOCdevkit").exists()
    server.mode = "normal"
    path = voc.fetch(str(tmp_path), url=server.url, md5=md5_of(payload), progress=False)
    assert server.ranges[-1] == f"bytes={len(payload) // 2}-" and server.statuses[-1] == 206
    assert os.path.isfile(os.path.join(path, "JPEGImages", "2007_000032.jpg"))


def _link(name, target, kind):
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _file(name, content=b"x"):
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        ("symlink", "a symbolic link"),
        ("hardlink", "a hard link"),
        ("dotdot", "unsafe member path"),
        ("absolute", "unsafe member path"),
    ],
)
def test_voc_tar_members_leaving_the_folder_are_refused(tmp_path, serve, member, message):
    import tarfile

    outside = tmp_path / "outside.txt"
    if member in ("symlink", "hardlink"):
        kind = tarfile.SYMTYPE if member == "symlink" else tarfile.LNKTYPE
        extra = [_link("VOCdevkit/VOC2012/escape", str(outside) if member == "symlink" else "../../outside.txt", kind)]
        payload = make_tar(VOC_FILES, extra)
    else:
        name = "VOCdevkit/../../outside.txt" if member == "dotdot" else str(outside)
        buffer = io.BytesIO(make_tar(VOC_FILES)[:-1024])  # drop the end-of-archive blocks, then append one more member
        with tarfile.open(fileobj=buffer, mode="a") as archive:
            archive.addfile(_file(name, b"escaped"), io.BytesIO(b"escaped"))
        payload = buffer.getvalue()
    server = serve(payload)
    data_dir = tmp_path / "data"
    with pytest.raises(errors.DownloadError, match=message) as raised:
        voc.fetch(str(data_dir), url=server.url, md5=md5_of(payload), progress=False)
    assert "not the official VOC 2012 trainval tar" in str(raised.value)
    assert not outside.exists() and not (data_dir / "VOCdevkit").exists()
    assert [name for name in leftovers(data_dir) if name.startswith(".extract")] == []


def test_voc_tar_without_segmentation_is_rejected(tmp_path, serve):
    files = {k: v for k, v in VOC_FILES.items() if "SegmentationClass" not in k}
    payload = make_tar(files)
    server = serve(payload)
    with pytest.raises(errors.DownloadError, match="VOCdevkit/VOC2012/SegmentationClass"):
        voc.fetch(str(tmp_path), url=server.url, md5=md5_of(payload), progress=False)
    assert not (tmp_path / "VOCdevkit").exists()


def test_voc_layout_downloads_the_voc_tar(tmp_path, serve):
    import dataclasses

    from fcn import config as config_lib
    from fcn import datasets

    payload = make_tar(VOC_FILES)
    server = serve(payload)
    config = dataclasses.replace(
        config_lib.DataConfig(), data_dir=str(tmp_path), layout="voc", download=True, num_classes=0,
        voc_download_url=server.url, voc_download_md5=md5_of(payload),
    )  # fmt: skip
    root = datasets.prepare_dataset(config, progress=False).root
    assert root == os.path.join(str(tmp_path), "VOCdevkit", "VOC2012")
    assert datasets.find_dataset(dataclasses.replace(config, layout="auto")).layout.name == "voc"


# ---------------------------------------------------------------------------
# download_file: one file, resumable on <file>.partial, checked, atomic.


def test_download_file_resumes_a_cut_transfer_and_renames_only_after_the_check(tmp_path, serve):
    payload = random.Random(7).randbytes(30_000)
    server = serve(payload)
    target = tmp_path / "model.h5"
    partial = tmp_path / ("model.h5" + download.PARTIAL_SUFFIX)
    checked = []
    server.mode = "cut"
    with pytest.raises(errors.DownloadError, match=r"stopped after 15,000 of 30,000 bytes"):
        download.download_file(server.url, str(target), checked.append, progress=False)
    assert not target.exists() and partial.read_bytes() == payload[:15_000] and checked == []
    server.mode = "normal"
    assert download.download_file(server.url, str(target), lambda p: checked.append(open(p, "rb").read()), progress=False) == str(target)
    assert server.ranges == [None, "bytes=15000-"]
    assert target.read_bytes() == payload and not partial.exists()
    assert checked == [payload]  # the check saw the whole file under its temporary name
    # The file in place is used as it is.
    assert download.download_file(server.url, str(target), progress=False) == str(target) and len(server.ranges) == 2


def test_download_file_deletes_what_its_check_refuses(tmp_path, serve):
    server = serve(b"<html>not the file</html>")

    def refuse(path):
        raise ValueError(f"{path} is not a model")

    with pytest.raises(ValueError, match=r"model.h5.partial is not a model"):
        download.download_file(server.url, str(tmp_path / "model.h5"), refuse, progress=False)
    assert os.listdir(tmp_path) == []
