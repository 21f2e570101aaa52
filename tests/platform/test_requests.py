"""Refusals and failures: bad training lines, oversized uploads, methods tuneforge does not train, another key's things."""

from __future__ import annotations

import json

import openai
import pytest

from tests.platform.conftest import TINY_RUN, platform_server, wait_for


@pytest.fixture(scope="module")
def keyed(tiny_served, tmp_path_factory):
    """One server for the module, with two API keys and a 4 KB upload limit."""
    with platform_server(tiny_served, tmp_path_factory.mktemp("platform"), api_keys=("key-a", "key-b"),
                         max_upload_bytes=4096) as platform:
        yield platform


def test_a_malformed_line_fails_the_job_at_validation_naming_file_and_line(keyed, tiny_served, tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
             '{"messages": [{"role": "user", "content": "broken"',
             json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    client = keyed.client("key-a")
    uploaded = client.files.create(file=path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=tiny_served.default, training_file=uploaded.id,
                                         extra_body={"tuneforge": TINY_RUN})
    failed = wait_for(client, job.id, ("failed", "queued", "running", "succeeded"), timeout=60)
    assert failed.status == "failed"
    assert failed.error.code == "invalid_file" and failed.error.param == "training_file"
    assert f"training_file {uploaded.id}: bad.jsonl, line 3: invalid JSON" in failed.error.message
    assert failed.fine_tuned_model is None
    assert not list((keyed.root / "runs" / job.id).glob("checkpoints")), "nothing was trained"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert events[0].startswith("Validation failed: training_file") and "line 3" in events[0]


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(keyed, tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "x" * 6000}) + "\n")
    client = keyed.client("key-a")
    before = {f.id for f in client.files.list()}
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert refused.value.status_code == 413 and "4096 bytes" in refused.value.message
    assert {f.id for f in client.files.list()} == before
    assert not list((keyed.root / "files").glob("*.part"))


def test_bad_requests_name_their_field(keyed, tiny_served, training_jsonl):
    client = keyed.client("key-a")
    uploaded = client.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
    cases = [
        ({"model": "no/such-model-here", "training_file": uploaded.id}, "model"),
        ({"model": tiny_served.default, "training_file": "file-missing"}, "training_file"),
        ({"model": tiny_served.default, "training_file": uploaded.id, "hyperparameters": {"n_epochs": 0}},
         "method.supervised.hyperparameters.n_epochs"),
        ({"model": tiny_served.default, "training_file": uploaded.id, "hyperparameters": {"beta": 0.1}},
         "method.supervised.hyperparameters.beta"),
        ({"model": tiny_served.default, "training_file": uploaded.id, "extra_body": {"tuneforge": {"lora": {"rr": 4}}}},
         "tuneforge.lora.rr"),
        ({"model": tiny_served.default, "training_file": uploaded.id, "extra_body": {"tuneforge": {"output_dir": "/"}}},
         "tuneforge.output_dir"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(**fields)
        assert refused.value.body["param"] == param, refused.value.body


def test_each_key_sees_only_its_own_files_and_jobs(keyed, tiny_served, training_jsonl):
    mine, theirs = keyed.client("key-a"), keyed.client("key-b")
    uploaded = mine.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
    job = mine.fine_tuning.jobs.create(model=tiny_served.default, training_file=uploaded.id,
                                       extra_body={"tuneforge": TINY_RUN})
    mine.fine_tuning.jobs.cancel(job.id)
    assert uploaded.id not in {f.id for f in theirs.files.list()}
    assert job.id not in {j.id for j in theirs.fine_tuning.jobs.list()}
    for call in (lambda: theirs.files.retrieve(uploaded.id), lambda: theirs.files.content(uploaded.id),
                 lambda: theirs.files.delete(uploaded.id), lambda: theirs.fine_tuning.jobs.retrieve(job.id),
                 lambda: theirs.fine_tuning.jobs.cancel(job.id), lambda: theirs.fine_tuning.jobs.list_events(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError):
        theirs.fine_tuning.jobs.create(model=tiny_served.default, training_file=uploaded.id)
    assert mine.files.retrieve(uploaded.id).id == uploaded.id
    with pytest.raises(openai.AuthenticationError):
        keyed.client("key-c").files.list()


def test_a_chunked_upload_without_a_length_is_cut_off_at_the_limit(keyed):
    """No Content-Length to check first: the Guard counts the bytes as the route reads them."""
    import http.client
    from urllib.parse import urlparse

    boundary = "tuneforgeboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--{boundary}\r\n'
            f'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            'Content-Type: application/octet-stream\r\n\r\n').encode() + b"x" * 10000 + f"\r\n--{boundary}--\r\n".encode()
    url = urlparse(keyed.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.putrequest("POST", "/v1/files")
    connection.putheader("Authorization", "Bearer key-a")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    for start in range(0, len(body), 1000):
        chunk = body[start:start + 1000]
        connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 413 and b"4096 bytes" in response.read()
    assert not list((keyed.root / "files").glob("*.part"))


def test_delete_refuses_a_file_an_unfinished_job_trains_on(keyed, tiny_served, training_jsonl):
    client = keyed.client("key-a")
    used = client.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
    unused = client.files.create(file=training_jsonl.open("rb"), purpose="fine-tune")
    assert used.sha256 == unused.sha256  # the same bytes, two files
    job = client.fine_tuning.jobs.create(model=tiny_served.default, training_file=used.id,
                                         extra_body={"tuneforge": TINY_RUN})
    with pytest.raises(openai.ConflictError) as refused:
        client.files.delete(used.id)
    assert job.id in refused.value.message
    assert client.files.delete(unused.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(unused.id)
    client.fine_tuning.jobs.cancel(job.id)
    assert client.files.delete(used.id).deleted
