"""A reference reward server: any registered reward behind HTTP, speaking ``dpok-reward/1``.

::

    python -m dpok.rewards.serve --reward shapes_judge --port 8000
    python -m dpok.rewards.serve --reward pickscore --port 8000 \\
        --option model=data/06_models/reward_models/PickScore_v1 \\
        --option processor=data/06_models/reward_models/CLIP-ViT-H-14-laion2B-s32B-b79K

and in the trainer's parameters ``reward: {http: 1.0}``, ``reward_kwargs: {http: {url: http://127.0.0.1:8000/}}``.
The protocol is documented in :mod:`dpok.rewards.remote`. The server is the standard library's
``ThreadingHTTPServer``; requests are scored one at a time (a lock around the reward), ``GET`` answers
at once. It listens on 127.0.0.1 unless ``--host`` says otherwise: it has no authentication, so expose
it only on a trusted network.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from dpok.rewards.registry import RewardFn, get_reward_fn
from dpok.rewards.remote import PROTOCOL, decode_png

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 30


class BadRequest(ValueError):
    """A request that breaks the protocol (answered 400 with the reason)."""


def parse_request(body: bytes) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """``(images (N, H, W, 3) uint8, prompts, metadata)`` of a protocol request, or :class:`BadRequest`."""
    try:
        request = json.loads(body.decode("utf-8"))
    except ValueError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    if not isinstance(request, dict) or request.get("protocol") != PROTOCOL:
        got = request.get("protocol") if isinstance(request, dict) else type(request).__name__
        raise BadRequest(f"protocol {got!r}; this server speaks {PROTOCOL!r}")
    images, prompts = request.get("images"), request.get("prompts")
    metadata = request.get("metadata", {})
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise BadRequest("'images' must be a list of base64 PNG strings")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompts' must be a list of strings")
    if len(images) != len(prompts):
        raise BadRequest(f"{len(images)} images but {len(prompts)} prompts; send one prompt per image")
    if not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be a JSON object")
    try:
        decoded = [decode_png(text, index) for index, text in enumerate(images)]
    except ValueError as error:
        raise BadRequest(str(error)) from None
    if len({image.shape for image in decoded}) > 1:
        raise BadRequest(f"images must share one size, got {sorted({image.shape for image in decoded})}")
    batch = np.stack(decoded) if decoded else np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return batch, prompts, metadata


def make_server(reward_fn: RewardFn, name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) scoring with ``reward_fn``; ``port`` 0 picks a free one."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps({"protocol": PROTOCOL, **payload}, allow_nan=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
            self._answer(200, {"reward": name})

        def do_POST(self) -> None:  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, {"error": "a Content-Length header is required"})
                return
            if not 0 <= length <= MAX_REQUEST_BYTES:
                self.close_connection = True
                self._answer(413, {"error": f"request of {length} bytes; the limit is {MAX_REQUEST_BYTES}"})
                return
            body = self.rfile.read(length)
            try:
                images, prompts, _ = parse_request(body)
            except BadRequest as error:
                self._answer(400, {"error": str(error)})
                return
            try:
                with lock:
                    scores = np.asarray(reward_fn(images, prompts), dtype=np.float64) if len(prompts) else np.zeros(0)
            except Exception as error:  # noqa: BLE001  (any reward failure becomes the client's named error)
                logger.exception("reward %r failed on a batch of %d", name, len(prompts))
                self._answer(500, {"error": f"reward {name!r} failed: {type(error).__name__}: {error}"})
                return
            self._answer(200, {"scores": [float(s) for s in scores]})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (BaseHTTPRequestHandler's signature)
            logger.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, booleans, lists, objects
    except ValueError:
        return key, value  # a plain string (a path)


def main(argv: Sequence[str] | None = None) -> None:
    from dpok.rewards import available_rewards

    parser = argparse.ArgumentParser(prog="python -m dpok.rewards.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", required=True, help=f"a registered reward: {', '.join(available_rewards())}")
    parser.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="an option of the reward's factory (JSON values, else strings); repeat for more")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        reward_fn = get_reward_fn(args.reward, **dict(args.option))
    except (KeyError, TypeError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    server = make_server(reward_fn, args.reward, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving reward {args.reward!r} on http://{host}:{port}/ ({PROTOCOL})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
