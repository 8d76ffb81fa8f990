"""--mode=serve: the page in a real browser, the TF Serving REST API against the export, bad input (fcn/serve.py).

Every request goes to a server this module starts on 127.0.0.1 at a free port and stops; each test sends
a bounded number of requests, each with a time limit.
"""

import base64
import concurrent.futures
import glob
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

pytest.importorskip("flask")
pytest.importorskip("waitress")
requests = pytest.importorskip("requests")

from conftest import REPO, SAMPLE_ROOT, TERMINAL_LAUNCHER, save_run  # noqa: E402

from fcn import Segmenter, export, serve  # noqa: E402
from fcn import config as config_lib  # noqa: E402

FIXTURE_IMAGES = sorted(glob.glob(os.path.join(SAMPLE_ROOT, "images", "validation", "*.jpg")))
MAX_PIXELS = 400_000  # the fixture images (683 x 512 at most) pass
MAX_BODY = 8 << 20
TIMEOUT = 120  # seconds one request may take on a loaded machine (a bound, not an assertion)
NO_PROXY = {"http": None, "https": None}  # 127.0.0.1 directly, whatever the environment says


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    logs = tmp_path_factory.mktemp("run")
    save_run(logs, tmp_path_factory.mktemp("no_data"))
    # Every image fitted into 128 x 96, labels at its own size: the protocol of a run, quick on a CPU.
    return config_lib.load_config(str(logs / "config.yaml"), [("evaluate.test_size", [128, 96]), ("evaluate.max_pixels", MAX_PIXELS)])


@pytest.fixture(scope="module")
def segmenter(config):
    return Segmenter.from_config(config)


@pytest.fixture(scope="module")
def server(segmenter):
    running = serve.Server(serve.create_app(segmenter, "fcn", max_body_bytes=MAX_BODY), "127.0.0.1", 0).start()
    yield running
    running.stop()


def post(server, path, **kwargs):
    return requests.post(server.url + path, timeout=TIMEOUT, proxies=NO_PROXY, **kwargs)


def get(server, path):
    return requests.get(server.url + path, timeout=TIMEOUT, proxies=NO_PROXY)


def random_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# The TF Serving REST API.


def test_model_status_as_tf_serving_reports_it(server):
    answer = get(server, "/v1/models/fcn")
    assert answer.status_code == 200
    assert answer.json() == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                      "status": {"error_code": "OK", "error_message": ""}}]}
    signatures = get(server, "/v1/models/fcn/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["probabilities", "serving_default"]
    images = signatures["serving_default"]["inputs"]["images"]
    assert images["dtype"] == "DT_UINT8" and [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert [d["size"] for d in signatures["probabilities"]["outputs"]["probabilities"]["tensor_shape"]["dim"]][-1] == "150"
    missing = get(server, "/v1/models/other")
    assert missing.status_code == 404 and missing.json() == {"error": "Servable not found for request: Latest(other)"}


def test_a_predict_request_gets_the_labels_of_the_exported_saved_model(server, config, tmp_path):
    version, _ = export.export(config, str(tmp_path / "export"))
    loaded = tf.saved_model.load(version)
    images = np.stack([random_image((40, 56, 3), 1), random_image((40, 56, 3), 2)])
    expected = loaded.signatures["serving_default"](images=tf.constant(images))["labels"].numpy()  # (2, 40, 56)
    assert len(np.unique(expected)) > 3  # varied labels: a real comparison
    # The row format, plain and with the input's name; the columnar format.
    for body, key in (({"instances": images.tolist()}, "predictions"),
                      ({"instances": [{"images": image} for image in images.tolist()]}, "predictions"),
                      ({"inputs": {"images": images.tolist()}}, "outputs"),
                      ({"inputs": images.tolist(), "signature_name": "serving_default"}, "outputs")):
        answer = post(server, "/v1/models/fcn:predict", json=body)
        assert answer.status_code == 200, answer.text[:500]
        assert list(answer.json()) == [key]
        np.testing.assert_array_equal(np.asarray(answer.json()[key]), expected)
    # The probabilities signature: a list of objects, as TF Serving answers for several outputs.
    full = loaded.signatures["probabilities"](images=tf.constant(images[:1]))
    answer = post(server, "/v1/models/fcn/versions/1:predict", json={"signature_name": "probabilities", "instances": images[:1].tolist()})
    assert answer.status_code == 200, answer.text[:500]
    (prediction,) = answer.json()["predictions"]
    assert sorted(prediction) == ["labels", "probabilities"]
    np.testing.assert_array_equal(prediction["labels"], full["labels"].numpy()[0])
    np.testing.assert_allclose(prediction["probabilities"], full["probabilities"].numpy()[0], atol=1e-5)


BAD_JSON = [
    (b"{not json", 400, "the request body is not JSON"),
    (b"", 400, "the request body is empty"),
    (b"[1, 2]", 400, "the request is a JSON object"),
    (b'{"instances": "/etc/passwd"}', 400, '"instances" is a non-empty list of images'),
    (b'{"inputs": "/etc/passwd"}', 400, "inputs: uint8 RGB images of one size, nested lists of shape (height, width, 3); got shape []"),
    (b'{"instances": []}', 400, '"instances" is a non-empty list of images'),
    (b'{"instances": [[[[1, 2, 3]]]], "inputs": 1}', 400, 'either "instances" (a list of images) or "inputs"'),
    (b'{"instances": [[[[1, 2]]]]}', 400, "got shape [1, 1, 2]"),
    (b'{"instances": [[[1, 2, 3]]]}', 400, "got shape [1, 3]"),
    (b'{"instances": [[[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]]]}', 400, "got lists of uneven lengths"),
    (b'{"instances": [[[[1, 2, 3]]], [[[1, 2, 3], [4, 5, 6]]]]}', 400, "got lists of uneven lengths"),  # two sizes in one batch
    (b'{"instances": [[[[1, 2, 300]]]]}', 400, "got values outside 0..255"),
    (b'{"instances": [[[[1, 2, 0.5]]]]}', 400, "got values of type float64"),
    (b'{"instances": [[[["a", "b", "c"]]]]}', 400, "got values of type <U1"),
    (b'{"instances": [{"image": [[[1, 2, 3]]]}]}', 400, 'each instance object has one key, "images"'),
    (b'{"instances": [[[[1, 2, 3]]]], "signature_name": "train"}', 400, "signature_name 'train': this model has serving_default, probabilities"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "the request body is not JSON"),
]


@pytest.mark.parametrize("body, status, message", BAD_JSON, ids=[f"json{k}" for k in range(len(BAD_JSON))])
def test_a_bad_json_request_gets_a_4xx_with_a_message(server, body, status, message):
    answer = post(server, "/v1/models/fcn:predict", data=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert "Traceback" not in answer.text and "root:" not in answer.text


def test_bad_uploads_get_a_4xx_with_a_message_and_the_server_goes_on(server):
    with open(FIXTURE_IMAGES[2], "rb") as f:
        jpeg = f.read()
    big = Image.new("RGB", (700, 600), (10, 20, 30))  # 420,000 pixels, a small file
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    cases = [
        (b"plain text, not an image", 400, "not an image it can read"),
        (b"/etc/passwd", 400, "not an image it can read"),
        (jpeg[: len(jpeg) // 2], 400, "not an image it can read"),  # a truncated JPEG
        (buffer.getvalue(), 400, "a 700x600 image = 420,000 pixels, more than evaluate.max_pixels = 400,000"),
        (b"", 400, "send the image file's bytes as the request body"),
        (os.urandom(MAX_BODY + 1), 413, f"the request body is larger than {MAX_BODY:,} bytes"),
    ]
    for body, status, message in cases:
        answer = post(server, "/segment", data=body, headers={"Content-Type": "application/octet-stream"})
        assert (answer.status_code, message in answer.json().get("error", "")) == (status, True), answer.text[:300]
        assert "Traceback" not in answer.text
    # The same limits through JSON: an image above max_pixels, a body above the size limit.
    wide = b'{"instances": [[[' + b",".join([b"[0,0,0]"] * (MAX_PIXELS + 1)) + b"]]]}"
    answer = post(server, "/v1/models/fcn:predict", data=wide, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "a 400001x1 image = 400,001 pixels, more than evaluate.max_pixels = 400,000" in answer.json()["error"]
    answer = post(server, "/v1/models/fcn:predict", data=b" " * (MAX_BODY + 1), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    # No request names a file: paths are routes, and there is none but the page's and the API's.
    for path in ("/../../etc/passwd", "/serve_page/index.html", "/%2e%2e/%2e%2e/etc/passwd", "/static/../serve.py"):
        answer = get(server, path)
        assert answer.status_code == 404 and "root:" not in answer.text and "import" not in answer.text
    assert get(server, "/v1/models/fcn:predict").status_code == 405
    # Still serving.
    answer = post(server, "/segment", data=jpeg)
    assert answer.status_code == 200 and answer.json()["width"] == Image.open(io.BytesIO(jpeg)).size[0]


def test_concurrent_requests_are_all_answered(server, segmenter):
    with open(FIXTURE_IMAGES[1], "rb") as f:
        jpeg = f.read()
    image = random_image((32, 48, 3), 5)
    expected_json = segmenter.classes.to_values(segmenter(image)).tolist()
    expected_page = [entry[0] for entry in segmenter.class_shares(segmenter(jpeg))]

    def page_request(_):
        answer = post(server, "/segment", data=jpeg)
        return answer.status_code, [entry["id"] for entry in answer.json()["legend"]]

    def json_request(_):
        answer = post(server, "/v1/models/fcn:predict", json={"instances": [image.tolist()]})
        return answer.status_code, answer.json()["predictions"][0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # twice the server's threads: some requests wait
        pages = list(pool.map(page_request, range(6)))
        predictions = list(pool.map(json_request, range(6)))
    assert pages == [(200, expected_page)] * 6
    assert predictions == [(200, expected_json)] * 6


# ---------------------------------------------------------------------------
# The page, in a real browser.


def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, chromedriver = chromium_paths()
    if not (chromium and chromedriver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
                     "--no-proxy-server", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()


def test_the_page_segments_an_uploaded_image_in_a_browser(server, segmenter, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = FIXTURE_IMAGES[0]
    labels = segmenter(path)
    height, width = labels.shape
    screenshot = tmp_path / "page.png"  # kept when the test fails (tmp_path_retention_policy)
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "file").send_keys(path)
        WebDriverWait(browser, TIMEOUT).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        browser.save_screenshot(str(screenshot))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
        # The overlay is the labels' colour mask at the image's size, over the image.
        size = browser.execute_script("const o = document.getElementById('overlay'), i = document.getElementById('image');"
                                      "return [o.naturalWidth, o.naturalHeight, i.naturalWidth, i.naturalHeight, o.complete];")
        assert size == [width, height, width, height, True]
        # The legend names the classes the labels hold, largest share first, with their share.
        items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
        shown = [(item.find_element(By.CLASS_NAME, "name").text, item.find_element(By.CLASS_NAME, "share").text) for item in items]
        expected = [(segmenter.classes.names[k], f"{100 * share:.1f} %") for k, share in segmenter.class_shares(labels)]
        assert len(expected) > 3 and shown == expected
        # The slider sets the overlay's opacity.
        slider = browser.find_element(By.ID, "opacity")
        browser.execute_script("arguments[0].value = 25; arguments[0].dispatchEvent(new Event('input'));", slider)
        assert browser.execute_script("return document.getElementById('overlay').style.opacity") == "0.25"
        # The download link is the label PNG of --mode=predict: the class table's values at the image's size.
        link = browser.find_element(By.ID, "download")
        assert link.get_attribute("download") == "ADE_val_00000001_labels.png"
        prefix, data = link.get_attribute("href").split(",", 1)
        assert prefix == "data:image/png;base64"
        written = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
        np.testing.assert_array_equal(written, segmenter.classes.to_values(labels))
        # A file that is not an image: the page says why.
        notes = tmp_path / "notes.jpg"
        notes.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(notes))
        WebDriverWait(browser, TIMEOUT).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error")
        assert "not an image it can read" in browser.find_element(By.ID, "error").text
    except BaseException:
        browser.save_screenshot(str(screenshot))
        print(f"screenshot of the page: {screenshot}")
        raise


# ---------------------------------------------------------------------------
# The command line.


@pytest.mark.slow  # a child process imports TensorFlow and restores the model
def test_serve_mode_listens_on_127_0_0_1_and_stops_on_ctrl_c(config, tmp_path):
    # --logs_dir alone: the run's own config.yaml is read (its fc_channels=16 is not the default's).
    # Started as from a terminal (TERMINAL_LAUNCHER): a suite run in the background passes on an ignored SIGINT.
    command = [sys.executable, "-c", TERMINAL_LAUNCHER, os.path.join(REPO, "FCN.py"), "--mode=serve", "--logs_dir", config.logs_dir,
               "--port", "0", "--model_name", "segmenter", "--set", "evaluate.max_pixels=1000"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", NO_PROXY="127.0.0.1")
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in child.stdout:  # until the server says where it listens (or the child ends)
            lines.append(line)
            if line.startswith("page: "):
                break
        assert lines and lines[-1].startswith("page: http://127.0.0.1:"), "".join(lines) + child.stderr.read() if child.poll() is not None else ""
        url = lines[-1].split(" ", 1)[1].strip().rstrip("/")
        status = requests.get(url + "/v1/models/segmenter", timeout=TIMEOUT, proxies=NO_PROXY)
        assert status.status_code == 200 and status.json()["model_version_status"][0]["state"] == "AVAILABLE"
        assert "fcn: scene parsing" in requests.get(url + "/", timeout=TIMEOUT, proxies=NO_PROXY).text
        child.send_signal(signal.SIGUSR1)  # prints every thread's stack and serves on
        answer = requests.post(url + "/v1/models/segmenter:predict", json={"instances": [random_image((20, 30, 3)).tolist()]},
                               timeout=TIMEOUT, proxies=NO_PROXY)
        assert answer.status_code == 200 and np.asarray(answer.json()["predictions"]).shape == (1, 20, 30)
        answer = requests.post(url + "/v1/models/segmenter:predict", json={"instances": [random_image((20, 51, 3)).tolist()]},
                               timeout=TIMEOUT, proxies=NO_PROXY)
        assert answer.status_code == 400 and "more than evaluate.max_pixels = 1,000" in answer.json()["error"]  # --set applies
    finally:
        child.send_signal(signal.SIGINT)
        try:
            returncode = child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGUSR1)  # FCN.py prints every thread's stack (faulthandler)
            time.sleep(2)
            child.kill()
            stdout, stderr = child.communicate()
            pytest.fail(f"FCN.py --mode=serve still running 60 s after Ctrl-C:\n{stdout[-2000:]}\n{stderr[-6000:]}")
        finally:
            if child.poll() is None:
                child.kill()
    assert returncode == 0
    stacks = child.stderr.read()
    assert "Thread 0x" in stacks and "(most recent call first)" in stacks and "serve.py" in stacks, stacks[-3000:]
