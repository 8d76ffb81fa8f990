"""``--mode=serve``: a local demo page and a TF Serving-compatible JSON API for a trained model.

    python FCN.py --mode=serve --logs_dir logs/sample            # a run (its config.yaml unless --config)
    python FCN.py --mode=serve --pretrained crfasrnn_voc         # crfasrnn_keras's released VOC model

Listens on 127.0.0.1 (``--host``; ``0.0.0.0`` shows it to the network) at
``--port`` (8501, TF Serving's REST port; 0 picks a free one, printed).

- ``GET /``: one page. Drop or choose an image; it shows the image, its
  colour overlay with an opacity slider, a legend of the classes present with
  their share of the pixels, and a link to download the label PNG (the
  format of ``--mode=predict``: the class table's annotation values).
- ``POST /segment``: what the page calls; the body is the image file's bytes.
- ``GET /v1/models/NAME`` and ``POST /v1/models/NAME:predict`` (NAME ``fcn``
  unless ``--model_name``): TensorFlow Serving's REST API for the signatures
  of ``--mode=export``, so that a client works unchanged against TF Serving
  running the export. ``{"instances": [image, ...]}`` (each a uint8 RGB image
  as nested lists (H, W, 3), or ``{"images": image}``) answers
  ``{"predictions": [labels, ...]}`` (uint8 (H, W): annotation values);
  ``{"inputs": batch}`` answers ``{"outputs": labels}``;
  ``"signature_name": "probabilities"`` answers the labels and the class
  probabilities. A batch holds images of one size, as a tensor does.
  ``/v1/models/NAME/versions/1:predict`` is the same model; ``GET
  /v1/models/NAME/metadata`` describes the signatures.

Bad input gets a 4xx answer with ``{"error": message}`` and the server goes on:
a body that is not an image (or a truncated one), an image of more than
``evaluate.max_pixels`` pixels (refused from its header, before decoding), a
body above ``MAX_BODY_BYTES``, JSON of another shape. Nothing in a request
names a file: the server reads only the model it was started with and the page.

Web library: Flask, served by waitress (``pip install -e .[serve]``). Both are
well kept and pure Python (no compiler, any OS); waitress is a production WSGI
server with a fixed pool of threads, which suits inference that blocks: a few
requests run at once, TensorFlow releasing the interpreter lock while it
computes, and the others wait in its queue instead of each holding an image's
activations in memory. Flask refuses a body above its ``MAX_CONTENT_LENGTH``
before reading it.
"""

import base64
import io
import json
import logging
import os
import sys
import threading

import numpy as np

from fcn import config as config_lib
from fcn.segmenter import InferenceError, Segmenter

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page", "index.html")
MAX_BODY_BYTES = 64 << 20  # an image file, or one 2000 x 2000 image as JSON text (about 4 bytes a value)
THREADS = 4  # requests computed at once; more wait in waitress' queue
DEFAULT_PORT = 8501  # TensorFlow Serving's REST port
SIGNATURES = ("serving_default", "probabilities")  # those of --mode=export
VERSION = "1"

logger = logging.getLogger("fcn.serve")


class RequestError(ValueError):
    """A request the server refuses: the message is sent back with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def create_app(segmenter: Segmenter, model_name: str = "fcn", max_body_bytes: int = MAX_BODY_BYTES):
    """The Flask application: the page, ``/segment`` and the TF Serving REST API of ``segmenter``.

    Args:
      segmenter: the model.
      model_name: NAME in ``/v1/models/NAME``.
      max_body_bytes: larger request bodies are refused (413) before they are read.
    """
    import flask
    from werkzeug.exceptions import HTTPException

    app = flask.Flask("fcn.serve")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False

    def error(message: str, status: int):
        return flask.jsonify(error=message), status

    @app.errorhandler(RequestError)
    def refused(exception):
        return error(str(exception), exception.status)

    @app.errorhandler(InferenceError)
    def unreadable(exception):
        return error(str(exception), 400)

    @app.errorhandler(HTTPException)
    def http_error(exception):
        if exception.code == 413:
            return error(f"the request body is larger than {max_body_bytes:,} bytes", 413)
        return error(f"{exception.name}: {exception.description}", exception.code)

    @app.errorhandler(Exception)
    def failed(exception):  # never a traceback to the client; the log has it
        logger.exception("request failed")
        return error(f"internal error ({type(exception).__name__}); the server log has the details", 500)

    @app.get("/")
    def page():
        return flask.send_file(PAGE, mimetype="text/html")

    @app.get("/classes")
    def classes():
        table = segmenter.classes
        return flask.jsonify(model_name=model_name, max_pixels=segmenter.max_pixels, max_body_bytes=max_body_bytes,
                             classes=[{"id": k, "value": table.ids[k], "name": table.names[k], "colour": _hex(table.colours[k])}
                                      for k in range(table.num_classes)])

    @app.post("/segment")
    def segment():
        body = flask.request.get_data(cache=False)
        if not body:
            raise RequestError("send the image file's bytes as the request body")
        image = segmenter.read(bytes(body))
        labels = segmenter(image)
        return flask.jsonify(segment_result(segmenter, labels))

    def check_model(name: str, version: str | None = None):
        if name != model_name or version not in (None, VERSION):
            raise RequestError(f"Servable not found for request: {'Latest' if version is None else 'Specific'}({name}"
                               f"{'' if version is None else ', ' + version})", 404)

    @app.get("/v1/models/<name>")
    @app.get("/v1/models/<name>/versions/<version>")
    def status(name, version=None):
        if ":" in (version or name):  # e.g. GET of NAME:predict
            raise RequestError(f"{(version or name).split(':', 1)[1]} takes POST with a JSON body", 405)
        check_model(name, version)
        return flask.jsonify(model_version_status=[
            {"version": VERSION, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ])

    @app.get("/v1/models/<name>/metadata")
    @app.get("/v1/models/<name>/versions/<version>/metadata")
    def metadata(name, version=None):
        check_model(name, version)
        return flask.jsonify(model_spec={"name": model_name, "signature_name": "", "version": VERSION},
                             metadata={"signature_def": {"signature_def": signature_defs(segmenter.classes.num_classes)}})

    @app.post("/v1/models/<name>:predict")
    @app.post("/v1/models/<name>/versions/<version>:predict")
    def tf_serving_predict(name, version=None):
        check_model(name, version)
        request = parse_json(flask.request.get_data(cache=False))
        return flask.Response(json.dumps(answer_predict(segmenter, request)), mimetype="application/json")

    return app


def signature_defs(num_classes: int) -> dict:
    """The export's signatures as TF Serving's metadata describes them."""

    def tensor(name: str, dtype: str, dims: list[int]) -> dict:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False},
                "name": name}

    images = {"images": tensor("images:0", "DT_UINT8", [-1, -1, -1, 3])}
    labels = {"labels": tensor("labels:0", "DT_UINT8", [-1, -1, -1])}
    probabilities = {"probabilities": tensor("probabilities:0", "DT_FLOAT", [-1, -1, -1, num_classes])}
    method = "tensorflow/serving/predict"
    return {"serving_default": {"inputs": images, "outputs": labels, "method_name": method},
            "probabilities": {"inputs": images, "outputs": {**labels, **probabilities}, "method_name": method}}


def _hex(colour) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def _png_data_url(write) -> str:
    buffer = io.BytesIO()
    buffer.name = "labels.png"  # PIL picks the format from the name
    write(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def segment_result(segmenter: Segmenter, labels: np.ndarray) -> dict:
    """What the page shows: the legend, the colour mask and the label PNG (as data URLs)."""
    from PIL import Image

    table = segmenter.classes
    legend = [{"id": k, "value": table.ids[k], "name": table.names[k], "colour": _hex(table.colours[k]), "share": share}
              for k, share in segmenter.class_shares(labels)]
    mask = segmenter.colourise(labels)
    return {
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "legend": legend,
        "mask": _png_data_url(lambda f: Image.fromarray(mask, "RGB").save(f)),
        "labels": _png_data_url(lambda f: table.write_label_png(f, labels)),
    }


# ---------------------------------------------------------------------------
# TensorFlow Serving's REST predict API.


def parse_json(body: bytes):
    if not body:
        raise RequestError("the request body is empty: send JSON such as {\"instances\": [image, ...]}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError(f"the request body is not JSON: {str(error)[:200]}") from None


def _images_array(value, what: str, max_pixels: int) -> np.ndarray:
    """A JSON batch of images as uint8 (B, H, W, 3), or a RequestError naming what is wrong."""
    expected = "uint8 RGB images of one size, nested lists of shape (height, width, 3)"
    try:
        array = np.asarray(value)
    except (ValueError, RecursionError):
        raise RequestError(f"{what}: {expected}; got lists of uneven lengths") from None
    if array.dtype == object or array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise RequestError(f"{what}: {expected}; got {'lists of uneven lengths' if array.dtype == object else f'shape {list(array.shape)[1:]}'}")
    if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0)):
        raise RequestError(f"{what}: {expected}; got values of type {array.dtype}")
    if array.dtype.kind == "b" or array.min() < 0 or array.max() > 255:
        raise RequestError(f"{what}: {expected}; got values outside 0..255")
    height, width = array.shape[1:3]
    if height * width > max_pixels:
        raise RequestError(f"{what}: a {width}x{height} image = {height * width:,} pixels, more than evaluate.max_pixels = {max_pixels:,}")
    return array.astype(np.uint8)


def answer_predict(segmenter: Segmenter, request) -> dict:
    """The answer of TF Serving's ``:predict`` to ``request`` (parsed JSON) for the export's signatures.

    Raises:
      RequestError: a request of another shape, named.
    """
    if not isinstance(request, dict):
        raise RequestError("the request is a JSON object: {\"instances\": [image, ...]} or {\"inputs\": batch}")
    signature = request.get("signature_name", "serving_default")
    if signature not in SIGNATURES:
        raise RequestError(f"signature_name {str(signature)[:100]!r}: this model has {', '.join(SIGNATURES)}")
    if ("instances" in request) == ("inputs" in request):
        raise RequestError("the request has either \"instances\" (a list of images) or \"inputs\" (a batch), one of them")
    row_format = "instances" in request
    value = request["instances"] if row_format else request["inputs"]
    if row_format:
        if not isinstance(value, list) or not value:
            raise RequestError("\"instances\" is a non-empty list of images")
        if all(isinstance(instance, dict) for instance in value):
            if any(set(instance) != {"images"} for instance in value):
                raise RequestError("each instance object has one key, \"images\" (the signature's input)")
            value = [instance["images"] for instance in value]
    elif isinstance(value, dict):
        if set(value) != {"images"}:
            raise RequestError("\"inputs\" as an object has one key, \"images\" (the signature's input)")
        value = value["images"]
    images = _images_array(value, "instances" if row_format else "inputs", segmenter.max_pixels)
    values = np.asarray(segmenter.classes.ids, np.uint8)
    if signature == "serving_default":
        outputs = {"labels": values[segmenter(images)]}
    else:
        probabilities = segmenter.probabilities(images)
        outputs = {"labels": values[probabilities.argmax(-1)], "probabilities": probabilities}
    if not row_format:
        return {"outputs": outputs["labels"].tolist() if len(outputs) == 1 else {k: v.tolist() for k, v in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": outputs["labels"].tolist()}
    return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(len(images))]}


# ---------------------------------------------------------------------------
# Running the server.


class Server:
    """The app served by waitress on ``host:port`` in a background thread (``port`` 0: a free one).

    ``url`` is where it listens; ``stop()`` closes it. ``run(config, args)``
    serves in the foreground instead.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, threads: int = THREADS):
        from waitress import server as waitress_server

        self._map = {}  # waitress' sockets: closing them all ends its loop
        self._server = waitress_server.create_server(app, host=host, port=port, threads=threads, map=self._map,
                                                     max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + (1 << 20))
        self.host, self.port = host, self._server.effective_port
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self._thread = None

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self._server.run, name="fcn-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.run()

    def stop(self) -> None:
        from waitress import wasyncore

        if self._thread is not None:
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))  # in the loop's own thread
            self._thread.join(timeout=30)
        else:
            wasyncore.close_all(self._map)
        self._server.task_dispatcher.shutdown()


def run(config, args) -> int:
    """``--mode=serve``: serves the run of ``config`` (or ``args.pretrained``) until interrupted.

    Returns:
      the exit status: 0 after a Ctrl-C, 1 when the model or the server cannot start.
    """
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError as error:
        print(f"FCN.py: --mode=serve needs Flask and waitress ({error.name} is missing): pip install -e .[serve]", file=sys.stderr)
        return 1
    from fcn import errors

    try:
        if args.pretrained:
            segmenter = Segmenter.from_pretrained(args.pretrained, config.model.model_dir, config.evaluate.max_pixels,
                                                  progress=not args.no_progress)
        elif not args.config and os.path.isfile(os.path.join(config.logs_dir, "config.yaml")):
            # --logs_dir RUN alone: the run's own config, as Segmenter.from_run reads it (and --set over it).
            overrides = [config_lib.parse_override(text) for text in args.overrides]
            segmenter = Segmenter.from_run(config.logs_dir, args.checkpoint or "latest", overrides)
        else:
            segmenter = Segmenter.from_config(config, args.checkpoint)
    except (InferenceError, errors.WeightsError, config_lib.ConfigError) as error:
        print(f"FCN.py: {error}", file=sys.stderr)
        return 1
    app = create_app(segmenter, args.model_name)
    try:
        server = Server(app, args.host, args.port)
    except OSError as error:
        print(f"FCN.py: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" under load is expected
    print(f"model: {segmenter.source}\npage: {server.url}/\n"
          f"TF Serving REST API: {server.url}/v1/models/{args.model_name}:predict\n(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0

