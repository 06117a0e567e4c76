"""The `http` reward and the reference server, on loopback: scores equal in-process ones, and every bad
answer (wrong count, NaN, non-numeric, non-JSON, HTTP error, silence) is a named error."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from dpok.rewards import get_reward_fn, weighted_reward
from dpok.rewards.remote import (
    PROTOCOL,
    RewardResponseError,
    RewardServerHTTPError,
    RewardServerUnavailable,
    RewardURLError,
    decode_png,
    encode_png,
)
from dpok.rewards.serve import make_server
from dpok.world import render, sample_scene

PROMPTS = ["a red circle", "two blue squares", "a green triangle on the left", "a yellow circle and a red square"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([render(sample_scene(prompt, rng)) for prompt in PROMPTS])


def _serve(server: ThreadingHTTPServer) -> tuple[str, threading.Thread]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/score", thread


@pytest.fixture()
def judge_server() -> Iterator[str]:
    server = make_server(get_reward_fn("shapes_judge"), "shapes_judge")
    url, _ = _serve(server)
    yield url
    server.shutdown()
    server.server_close()


class Scripted:
    """A misbehaving server: answers each POST with the next ``(status, body)`` of ``answers``."""

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        self.answers, self.posts = list(answers), []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._send(200, json.dumps({"protocol": PROTOCOL, "reward": "scripted"}).encode())

            def do_POST(self):  # noqa: N802
                scripted.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self._send(*scripted.answers.pop(0))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url, _ = _serve(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def scripted() -> Iterator[type[Scripted]]:
    made: list[Scripted] = []

    def make(answers):
        made.append(Scripted(answers))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _scores(values) -> bytes:
    return json.dumps({"protocol": PROTOCOL, "scores": values}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scores_through_the_server_equal_the_in_process_ones(judge_server, images):
    remote = get_reward_fn("http", url=judge_server, metadata={"run": "test"})
    local = get_reward_fn("shapes_judge")
    np.testing.assert_array_equal(remote(images, PROMPTS), local(images, PROMPTS))  # PNG and JSON floats: exact
    assert remote(images[:0], []).shape == (0,)
    # in a mixture too
    mixture = weighted_reward({"http": 1.0, "shapes_quality": 0.5}, http={"url": judge_server})
    np.testing.assert_allclose(mixture(images, PROMPTS), local(images, PROMPTS) + 0.5 * get_reward_fn("shapes_quality")(images, PROMPTS))


def test_the_request_is_the_documented_protocol(scripted, images):
    server = scripted([(200, _scores([0.5] * 4))])
    get_reward_fn("http", url=server.url, metadata={"run": "r1", "step": 3})(images, PROMPTS)
    (request,) = server.posts
    assert set(request) == {"protocol", "images", "prompts", "metadata"} and request["protocol"] == "dpok-reward/1"
    assert request["prompts"] == PROMPTS and request["metadata"] == {"run": "r1", "step": 3}
    for index, text in enumerate(request["images"]):
        np.testing.assert_array_equal(decode_png(text, index), images[index])


@pytest.mark.parametrize(
    "answer, error, message",
    [
        ((200, _scores([0.1] * 3)), RewardResponseError, "returned 3 scores for 4 images"),
        ((200, b'{"protocol": "dpok-reward/1", "scores": [0.1, NaN, 0.2, 0.3]}'), RewardResponseError, "not protocol JSON"),
        ((200, _scores([0.1, "0.2", 0.3, 0.4])), RewardResponseError, r"non-numeric scores at indices \[1\]"),
        ((200, _scores([0.1, True, 0.3, None])), RewardResponseError, r"non-numeric scores at indices \[1, 3\]"),
        ((200, b'{"protocol": "dpok-reward/1", "scores": [0.1, 1e999, 0.3, 0.4]}'), RewardResponseError, r"non-finite scores at indices \[1\]"),
        ((200, b"<html>502 Bad Gateway</html>"), RewardResponseError, "not protocol JSON"),
        ((200, json.dumps({"protocol": "other/2", "scores": [1, 2, 3, 4]}).encode()), RewardResponseError,
         "answered in protocol 'other/2'"),
        ((500, json.dumps({"protocol": PROTOCOL, "error": "CUDA out of memory"}).encode()), RewardServerHTTPError,
         "answered HTTP 500: CUDA out of memory"),
        ((400, b"bad"), RewardServerHTTPError, "answered HTTP 400: bad"),
    ],
    ids=["count", "nan", "string", "bool-null", "infinity", "html", "protocol", "http-500", "http-400"],
)
def test_every_bad_answer_is_a_named_error(scripted, images, answer, error, message):
    server = scripted([answer])
    reward = get_reward_fn("http", url=server.url, retries=2, backoff_s=0)
    with pytest.raises(error, match=message):
        reward(images, PROMPTS)
    assert len(server.posts) == 1  # a bad answer is not retried: it would come back the same


def test_fifteen_scores_for_sixteen_images_is_an_error_before_any_use(scripted):
    server = scripted([(200, _scores([0.5] * 15))])
    batch = np.zeros((16, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(RewardResponseError, match="returned 15 scores for 16 images; it must return one per image"):
        get_reward_fn("http", url=server.url)(batch, ["a red circle"] * 16)


def test_a_busy_server_is_retried_with_backoff(scripted, images, monkeypatch):
    server = scripted([(503, b"{}"), (502, b"{}"), (200, _scores([1.0, 2.0, 3.0, 4.0]))])
    delays = []
    monkeypatch.setattr("dpok.rewards.remote.time.sleep", delays.append)
    reward = get_reward_fn("http", url=server.url, retries=3, backoff_s=0.5)
    np.testing.assert_array_equal(reward(images, PROMPTS), [1.0, 2.0, 3.0, 4.0])
    assert delays == [0.5, 1.0] and len(server.posts) == 3
    server.answers = [(503, b"{}")] * 3
    with pytest.raises(RewardServerHTTPError, match=r"HTTP 503.*after 3 attempt\(s\)"):
        get_reward_fn("http", url=server.url, retries=2, backoff_s=0)(images, PROMPTS)


def test_a_url_that_does_not_answer_fails_when_the_reward_is_built(monkeypatch):
    monkeypatch.setattr("dpok.rewards.remote.time.sleep", lambda s: None)
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    with pytest.raises(RewardServerUnavailable, match=r"did not answer.*after 3 attempt\(s\).*rerun"):
        get_reward_fn("http", url=url, retries=2)
    get_reward_fn("http", url=url, check_server=False)  # building without asking is possible (then it fails on use)


def test_a_server_that_hangs_times_out(images):
    release = threading.Event()

    class Hang(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            release.wait(5)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    url, _ = _serve(server)
    try:
        reward = get_reward_fn("http", url=url, timeout_s=0.2, retries=0, check_server=False)
        with pytest.raises(RewardServerUnavailable, match="timed out"):
            reward(images, PROMPTS)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_url_that_is_not_http_is_refused_before_anything(tmp_path):
    for url in ("ftp://127.0.0.1/score", "file:///etc/passwd", "127.0.0.1:8000", "", None, "http://"):
        with pytest.raises(RewardURLError, match="must be an http:// or https:// URL"):
            get_reward_fn("http", url=url)
    with pytest.raises(RewardURLError, match="got 'ftp://host/score'"):  # as the trainer's config builds it
        weighted_reward({"shapes_judge": 1.0, "http": 0.5}, http={"url": "ftp://host/score"})
    with pytest.raises(ValueError, match="metadata must be a mapping of JSON values"):
        get_reward_fn("http", url="http://127.0.0.1:1/", metadata={"x": float("nan")}, check_server=False)
    with pytest.raises(ValueError, match="retries must be an integer"):
        get_reward_fn("http", url="http://127.0.0.1:1/", retries=-1, check_server=False)


def test_something_else_at_the_url_is_named(scripted):
    class NotAServer(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAServer)
    url, _ = _serve(server)
    try:
        with pytest.raises(RewardResponseError, match="does not speak dpok-reward/1"):
            get_reward_fn("http", url=url)
    finally:
        server.shutdown()
        server.server_close()


def test_the_server_refuses_bad_requests_with_the_reason(judge_server, images):
    import urllib.error
    import urllib.request

    def post(payload) -> tuple[int, dict]:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(judge_server, data=data, method="POST"), timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    png = encode_png(images[0])
    assert post(b"not json") [0] == 400
    status, answer = post({"protocol": "dpok-reward/0", "images": [png], "prompts": ["a red circle"]})
    assert status == 400 and "this server speaks 'dpok-reward/1'" in answer["error"]
    status, answer = post({"protocol": PROTOCOL, "images": [png, "AAAA"], "prompts": ["a red circle", "a cat"]})
    assert status == 400 and "images[1] is not a base64 RGB 8-bit PNG" in answer["error"]
    status, answer = post({"protocol": PROTOCOL, "images": [png], "prompts": []})
    assert status == 400 and "1 images but 0 prompts" in answer["error"]
    status, answer = post({"protocol": PROTOCOL, "images": [png], "prompts": ["a purple elephant"]})
    assert status == 500 and "reward 'shapes_judge' failed" in answer["error"]  # outside the grammar
    status, answer = post({"protocol": PROTOCOL, "images": [png], "prompts": [PROMPTS[0]], "metadata": {"a": 1}})
    assert status == 200 and answer == {"protocol": PROTOCOL, "scores": [float(get_reward_fn("shapes_judge")(images[:1], PROMPTS[:1])[0])]}
