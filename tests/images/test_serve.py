"""`POST /v1/classify` with base64 images, on serve's main app serving a trained tiny image classifier: the same
labels and probabilities as predict, bad images named by index, the request log describing each image."""

from __future__ import annotations

import base64
import json
import urllib.request
from contextlib import contextmanager

import pytest
from PIL import Image
from rich.console import Console

from tests.images.conftest import write_image_config
from tests.serve.conftest import free_port, http, server_thread
from tuneforge.config import load_config
from tuneforge.models.image_classifier import load_image_classifier
from tuneforge.train.driver import train


@pytest.fixture(scope="module")
def image_classifier(tmp_path_factory, tiny_backbone, toy_images):
    directory = tmp_path_factory.mktemp("image-serve")
    config = load_config(write_image_config(directory, tiny_backbone, toy_images, **{"train.epochs": 2}))
    return load_image_classifier(str(train(config, console=Console(quiet=True)).run_dir))


@contextmanager
def serving(classifier, **options):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.classifier import ServedClassifier
    from tuneforge.serve.options import ServeOptions

    options = ServeOptions(port=free_port(), **options)
    app = create_app(ServedClassifier(classifier, "runs/colours", "/somewhere"), options)
    with server_thread(app, options.port):
        yield f"http://127.0.0.1:{options.port}", app.state.server


def post(url: str, body: dict):
    return http(urllib.request.Request(url + "/v1/classify", data=json.dumps(body).encode(),
                                       headers={"Content-Type": "application/json"}, method="POST"), 30)


def test_classify_endpoint_labels_base64_images_and_logs_what_it_saw(image_classifier, toy_images, tmp_path, one_thread):
    files = [toy_images / "test" / colour / "000.png" for colour in ("red", "green", "blue")]
    expected = image_classifier.classify([Image.open(f) for f in files])
    encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
    encoded[1] = "data:image/png;base64," + encoded[1]  # a data URL works too
    with serving(image_classifier, log_db=tmp_path / "requests.db") as (url, state):
        reply = post(url, {"images": encoded})
        assert reply.status_code == 200
        for item, prediction in zip(reply.json()["data"], expected):
            assert item["label"] == prediction.label
            assert item["scores"] == pytest.approx(prediction.scores, abs=1e-5)
        bad = post(url, {"images": [encoded[0], base64.b64encode(b"not a picture").decode()]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "images[1]"
        assert "images[1]: not an image PIL can read" in bad.json()["error"]["message"]
        assert post(url, {"images": ["%%%"]}).json()["error"]["message"].startswith("images[0]: not base64")
        assert post(url, {"input": ["a text"]}).status_code == 400  # an image classifier takes images
        assert post(url, {"images": []}).json()["error"]["message"] == "images: give at least one image"
        assert state.request_log.flush(10)
    from tuneforge.monitor.store import connect

    conn = connect(tmp_path / "requests.db", readonly=True)
    logged = [json.loads(row["messages"]) for row in conn.execute("SELECT messages FROM requests WHERE status = 200")]
    conn.close()
    assert len(logged) == 1 and logged[0][0]["content"].startswith("image 32x32 RGB, ")
