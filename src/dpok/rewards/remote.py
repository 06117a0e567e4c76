"""The ``http`` reward: any reward model behind an HTTP endpoint, in a small versioned JSON protocol.

The trainer posts each batch to ``url`` and takes one score per image back; a reference server for any
registered reward is ``python -m dpok.rewards.serve --reward NAME`` (:mod:`dpok.rewards.serve`).

**Protocol ``dpok-reward/1``** (JSON, UTF-8; never pickle):

- ``GET <url>`` → ``200 {"protocol": "dpok-reward/1", "reward": "<what it serves>"}``. The reward checks
  this once when it is built, so a wrong or silent URL fails before any model loads.
- ``POST <url>`` with ``Content-Type: application/json`` and the body
  ``{"protocol": "dpok-reward/1", "images": ["<base64 PNG>", ...], "prompts": ["...", ...], "metadata": {...}}``:
  N RGB 8-bit PNG images of one size, N prompts (image i goes with prompt i), and the ``metadata`` mapping
  configured for the reward (JSON values, passed through; e.g. a run name).
- Answer: ``200 {"protocol": "dpok-reward/1", "scores": [s_0, ..., s_{N-1}]}``, N finite JSON numbers in
  the order of the images. A server that cannot score answers 4xx (a bad request) or 5xx with
  ``{"protocol": "dpok-reward/1", "error": "<message>"}``.

**Failures**, each a named error raised before any update uses the batch (the round stops; its last
checkpoint is kept, so a rerun resumes once the server is back):

- :class:`RewardServerUnavailable`: no answer (refused connection, timeout) after ``retries`` retries
  spaced ``backoff_s · 2^k`` seconds apart (also for 429, 502, 503 and 504, the answers of a busy or
  restarting server);
- :class:`RewardServerHTTPError`: any other status but 200 (its ``error`` message is shown);
- :class:`RewardResponseError`: an answer that is not JSON, another protocol, a wrong number of scores,
  or a score that is not a finite number (NaN, ``Infinity``, a string, a boolean, null);
- :class:`RewardURLError` (a ValueError, at build time): a URL that is not ``http://`` or ``https://``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dpok.images import to_image_batch
from dpok.rewards.registry import RewardFn, register_reward

logger = logging.getLogger(__name__)

PROTOCOL = "dpok-reward/1"
RETRY_STATUSES = (429, 502, 503, 504)


class RewardServerError(RuntimeError):
    """A reward server's failure (the base of the errors below)."""


class RewardServerUnavailable(RewardServerError):
    """The reward server did not answer (connection refused, timed out), after the retries."""


class RewardServerHTTPError(RewardServerError):
    """The reward server answered with an HTTP error status (``status``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RewardResponseError(RewardServerError):
    """The reward server's answer breaks the protocol (not JSON, wrong count, a non-finite or non-numeric score)."""


class RewardURLError(ValueError):
    """An ``http`` reward configured with a URL that is not http(s)."""


# --- the wire format (shared with dpok.rewards.serve) ----------------------------------------------


def encode_png(image: np.ndarray) -> str:
    """A ``(H, W, 3)`` uint8 image as base64 PNG text (lossless: the server sees the very pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str, index: int) -> np.ndarray:
    """The inverse of :func:`encode_png`; ValueError naming the image for anything but an RGB 8-bit PNG."""
    from PIL import Image

    try:
        data = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format != "PNG" or picture.mode != "RGB":
                raise ValueError(f"format {picture.format}, mode {picture.mode}")
            return np.asarray(picture.convert("RGB")).copy()
    except Exception as error:  # noqa: BLE001  (binascii, PIL and our own: one message naming the image)
        raise ValueError(f"images[{index}] is not a base64 RGB 8-bit PNG ({error})") from None


def request_body(images: np.ndarray, prompts: Sequence[str], metadata: Mapping[str, Any]) -> bytes:
    return json.dumps({"protocol": PROTOCOL, "images": [encode_png(image) for image in images],
                       "prompts": list(prompts), "metadata": dict(metadata)}).encode("utf-8")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_scores(body: bytes, count: int, url: str) -> np.ndarray:
    """The ``scores`` of an answer to a batch of ``count`` images, or :class:`RewardResponseError`."""
    try:
        answer = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity literals
        raise RewardResponseError(
            f"reward server {url} answered with something that is not protocol JSON ({error}): {body[:120]!r}"
        ) from None
    if not isinstance(answer, dict) or answer.get("protocol") != PROTOCOL:
        got = answer.get("protocol") if isinstance(answer, dict) else type(answer).__name__
        raise RewardResponseError(f"reward server {url} answered in protocol {got!r}, expected {PROTOCOL!r}")
    scores = answer.get("scores")
    if not isinstance(scores, list):
        raise RewardResponseError(f"reward server {url} answered without a 'scores' list: keys {sorted(answer)}")
    if len(scores) != count:
        raise RewardResponseError(
            f"reward server {url} returned {len(scores)} scores for {count} images; it must return one per image"
        )
    bad = [i for i, s in enumerate(scores) if isinstance(s, bool) or not isinstance(s, (int, float))]
    if bad:
        raise RewardResponseError(
            f"reward server {url} returned non-numeric scores at indices {bad[:10]} (e.g. {scores[bad[0]]!r})"
        )
    array = np.asarray(scores, dtype=np.float64)
    non_finite = np.flatnonzero(~np.isfinite(array))
    if non_finite.size:
        raise RewardResponseError(f"reward server {url} returned non-finite scores at indices {non_finite[:10].tolist()}")
    return array


# --- the client ------------------------------------------------------------------------------------


def check_url(url: Any) -> str:
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).netloc:
        raise RewardURLError(
            f"http: `url` must be an http:// or https:// URL with a host, got {url!r}; e.g. http://127.0.0.1:8000/ "
            "(start a server with `python -m dpok.rewards.serve --reward NAME`)"
        )
    return url


class RewardClient:
    """Posts batches to a reward server with a timeout and bounded retries (module docstring)."""

    def __init__(self, url: str, timeout_s: float, retries: int, backoff_s: float) -> None:
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s

    def _once(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                message = json.loads(body).get("error", "")
            except (ValueError, AttributeError):
                message = body[:200].decode("utf-8", "replace")
            raise RewardServerHTTPError(f"reward server {self.url} answered HTTP {error.code}: {message}", error.code) from None
        except (urllib.error.URLError, OSError) as error:  # refused, reset, DNS, timeout
            reason = getattr(error, "reason", error)
            raise RewardServerUnavailable(f"reward server {self.url} did not answer: {reason}") from None

    def call(self, data: bytes | None) -> bytes:
        """The body of a 200 answer to ``GET`` (``data`` None) or ``POST data``, after the retries."""
        last: RewardServerError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                logger.warning("%s; retry %d of %d in %.3g s", last, attempt, self.retries, delay)
                time.sleep(delay)
            request = urllib.request.Request(
                self.url, data=data, method="GET" if data is None else "POST",
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            try:
                return self._once(request)
            except RewardServerHTTPError as error:
                if error.status not in RETRY_STATUSES:
                    raise
                last = error
            except RewardServerUnavailable as error:
                last = error
        raise type(last)(f"{last} (after {self.retries + 1} attempt(s), timeout {self.timeout_s:g} s); "
                         "start or fix the server, then rerun: training resumes from its last checkpoint")

    def info(self) -> dict[str, Any]:
        body = self.call(None)
        try:
            answer = json.loads(body.decode("utf-8"))
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("protocol") != PROTOCOL:
            raise RewardResponseError(
                f"{self.url} does not speak {PROTOCOL}: GET answered {body[:120]!r}; point `url` at a reward server "
                "(python -m dpok.rewards.serve)"
            )
        return answer


@register_reward("http")
def http(
    url: str, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0,
    metadata: Mapping[str, Any] | None = None, check_server: bool = True,
) -> RewardFn:
    """A reward computed by a server speaking ``dpok-reward/1`` (module docstring).

    Args:
        url: ``http://host:port/path`` of the server.
        timeout_s: Seconds to wait for each answer (a reward model scoring a batch on a busy GPU needs some).
        retries: Further attempts after a failed one (no answer, 429/502/503/504); 0 = none.
        backoff_s: Wait before the first retry, doubled before each next one.
        metadata: A JSON mapping sent with every batch (e.g. ``{run: sd15-pickscore}``).
        check_server: Ask the server (``GET url``) when the reward is built, so that a wrong URL fails before
            the diffusion model loads.
    """
    check_url(url)
    for name, value in (("timeout_s", timeout_s), ("backoff_s", backoff_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"http: {name} must be a non-negative number of seconds, got {value!r}")
    if timeout_s == 0:
        raise ValueError("http: timeout_s must be positive")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
        raise ValueError(f"http: retries must be an integer in [0, 20], got {retries!r}")
    metadata = {} if metadata is None else metadata
    try:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"a mapping, got {type(metadata).__name__}")
        json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"http: metadata must be a mapping of JSON values: {error}") from None
    client = RewardClient(url, float(timeout_s), retries, float(backoff_s))
    if check_server:
        served = client.info().get("reward")
        logger.info("http reward: %s serves %r (%s)", url, served, PROTOCOL)

    def reward(images: Any, prompts: Sequence[str]) -> np.ndarray:
        batch = to_image_batch(images)
        if len(prompts) != len(batch):
            raise ValueError(f"got {len(batch)} images but {len(prompts)} prompts; pass exactly one prompt per image")
        if not len(batch):
            return np.zeros(0)
        return parse_scores(client.call(request_body(batch, prompts, metadata)), len(batch), url)

    return reward


__all__ = [
    "PROTOCOL",
    "RewardClient",
    "RewardResponseError",
    "RewardServerError",
    "RewardServerHTTPError",
    "RewardServerUnavailable",
    "RewardURLError",
    "check_url",
    "decode_png",
    "encode_png",
    "parse_scores",
    "request_body",
]
