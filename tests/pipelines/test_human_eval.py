"""Human evaluation: the blinded export (evaluate), the rater page in headless Chromium, and the import."""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.runner import SequentialRunner
from PIL import Image

from dpok.evaluation import RatingsError
from dpok.pipelines.evaluate import create_pipeline as evaluate_pipeline
from dpok.pipelines.human_eval_import import create_pipeline as import_pipeline
from helpers import XSS_PROMPT

PROMPTS = [("a red circle", "color", "train"), ("a blue square", "color", "train"),
           ("a dog on the left", "location", "train"), (XSS_PROMPT, "location", "heldout")]
N_SEEDS = 4
CHROMIUM = Path("/usr/bin/chromium")
MODEL_WORDS = ("base", "finetuned", "fine-tuned", "tuned", "lora", "pretrained", "model", "seed")


def _synthetic_samples(catalog):
    """Manifests and PNG folders for both models; base images are dark, fine-tuned ones bright, so the
    test can tell from the pixels which model an exported image came from."""
    rows = [{"prompt": p, "category": c, "split": s, "seed": 1000 + k, "file": f"p{i:04d}_s{k:02d}.png", "r": 0.0}
            for i, (p, c, s) in enumerate(PROMPTS) for k in range(N_SEEDS)]
    manifest = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    for label, low in (("pretrained", 0), ("finetuned", 128)):
        catalog.save(f"{label}_manifest", manifest)
        catalog.save(f"{label}_samples", {
            f[:-4]: Image.fromarray(rng.integers(low, low + 128, size=(16, 16, 3), dtype=np.uint8))
            for f in manifest["file"]
        })


@pytest.fixture
def exported(tmp_path, evaluation_catalog):
    catalog = evaluation_catalog(tmp_path)
    _synthetic_samples(catalog)
    SequentialRunner().run(evaluate_pipeline().only_nodes("export_human_eval_node"), catalog)
    return tmp_path / "data/08_reporting", catalog


def _model_of(image_path: Path) -> str:
    return "finetuned" if np.asarray(Image.open(image_path)).mean() >= 128 else "base"


def test_export_folder_reveals_nothing_and_the_key_is_right(exported):
    reporting, _ = exported
    folder = reporting / "human_eval"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert {f for f in files if not f.startswith("img/")} == {"index.html", "pairs.csv"}
    images = [f for f in files if f.startswith("img/")]
    assert len(images) == 2 * 4 * 2 and all(re.fullmatch(r"img/[0-9a-f]{12}\.png", f) for f in images)
    assert not (folder / "human_eval_key.csv").exists() and (reporting / "human_eval_key.csv").is_file()

    page, pairs_text = (folder / "index.html").read_text(), (folder / "pairs.csv").read_text()
    for text in (page.lower(), pairs_text.lower()):
        for word in MODEL_WORDS:
            assert word not in text, word
        assert "p0000_s00" not in text and "1000" not in text
    for image in images:  # re-encoded: no metadata chunk, nothing but pixels
        with Image.open(folder / image) as im:
            assert im.info == {} or set(im.info) <= {"dpi"}, im.info
        assert b"tEXt" not in (folder / image).read_bytes() and b"iTXt" not in (folder / image).read_bytes()

    key = pd.read_csv(reporting / "human_eval_key.csv", dtype=str, keep_default_na=False)
    pairs = pd.read_csv(folder / "pairs.csv", dtype=str, keep_default_na=False)
    assert pairs["pair_id"].tolist() == key["pair_id"].tolist()
    for row in key.to_dict("records"):
        assert _model_of(folder / row["left_image"]) == row["left_model"]
        assert _model_of(folder / row["right_image"]) == row["right_model"]
    assert set(key["left_model"]) == {"base", "finetuned"}
    # The prompt is escaped in the page, raw in the CSV (which no browser renders).
    assert XSS_PROMPT not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert XSS_PROMPT in pairs["prompt"].tolist()


def _answers_for(key: pd.DataFrame) -> dict[str, list[str]]:
    """Text: fine-tuned preferred on the first 6 pairs, base on the next, tie on the last;
    quality: fine-tuned on even pairs, base on odd ones. Returned as left/right/tie per pair."""
    answers = {}
    for i, row in enumerate(key.to_dict("records")):
        text = "finetuned" if i < 6 else ("base" if i < 7 else "tie")
        quality = "finetuned" if i % 2 == 0 else "base"
        answers[row["pair_id"]] = ["tie" if m == "tie" else ("left" if row["left_model"] == m else "right")
                                   for m in (text, quality)]
    return answers


def _check_results(results: dict) -> None:
    text, quality = results["questions"]["text"]["all"], results["questions"]["quality"]["all"]
    assert (text["finetuned_wins"], text["base_wins"], text["ties"]) == (6, 1, 1)
    assert text["finetuned_win_rate"] == pytest.approx(6 / 7)
    assert (quality["finetuned_wins"], quality["base_wins"], quality["ties"]) == (4, 4, 0)
    assert quality["finetuned_win_rate"] == pytest.approx(0.5)
    assert quality["ci_low"] < 0.5 < quality["ci_high"]
    per_category = results["questions"]["quality"]["per_category"]
    assert sum(b["n_answers"] for b in per_category.values()) == 8


def _run_import(root: Path, catalog) -> dict:
    SequentialRunner().run(import_pipeline(), catalog)
    return json.loads((root / "data/08_reporting/human_eval_results.json").read_text())


def test_synthetic_ratings_give_the_win_rates_they_were_made_with(exported, tmp_path):
    reporting, catalog = exported
    key = pd.read_csv(reporting / "human_eval_key.csv", dtype=str, keep_default_na=False)
    answers = _answers_for(key)
    ratings = tmp_path / "data/01_raw/human_eval_ratings"
    ratings.mkdir(parents=True)
    rows = [{"pair_id": p, "rater": "ann", "q_text": a[0], "q_quality": a[1]} for p, a in answers.items()]
    pd.DataFrame(rows[:5]).to_csv(ratings / "ann-part1.csv", index=False)  # one rater, two files
    pd.DataFrame(rows[5:]).to_csv(ratings / "ann-part2.csv", index=False)
    results = _run_import(tmp_path, catalog)
    _check_results(results)
    assert results["sources"] == ["ann-part1.csv", "ann-part2.csv"] and results["n_raters"] == 1
    answers_table = pd.read_csv(tmp_path / "data/08_reporting/human_eval_answers.csv")
    assert set(answers_table["winner"]) == {"finetuned", "base", "tie"} and len(answers_table) == 16


def test_bad_ratings_stop_the_import_naming_the_row(exported, tmp_path):
    _, catalog = exported
    ratings = tmp_path / "data/01_raw/human_eval_ratings"
    ratings.mkdir(parents=True)
    (ratings / "bob.csv").write_text("pair_id,rater,q_text,q_quality\n0123456789ab,bob,left,left\n")
    with pytest.raises(RatingsError, match=r"ratings file 'bob\.csv', line 2: unknown pair_id '0123456789ab'"):
        SequentialRunner().run(import_pipeline(), catalog)


def test_no_ratings_is_a_clear_error(exported, tmp_path):
    _, catalog = exported
    with pytest.raises(Exception, match=r"No partitions found in .*human_eval_ratings"):
        SequentialRunner().run(import_pipeline(), catalog)


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3 and 4, one
    JSON message per NUL-terminated chunk): no websocket library, no port."""

    def __init__(self, user_data_dir: Path, log: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = ("--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
                 "--disable-sync --no-first-run --no-default-browser-check --disable-extensions --mute-audio")
        # bash, not sh: dash only redirects single-digit descriptors.
        command = (f"exec {CHROMIUM} {flags} --user-data-dir={user_data_dir} --remote-debugging-pipe about:blank "
                   f"3<&{to_browser_r} 4>&{from_browser_w}")
        self._log = open(log, "wb")
        self.process = subprocess.Popen(["bash", "-c", command], pass_fds=(to_browser_r, from_browser_w),
                                        stdout=self._log, stderr=self._log, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, predicate, timeout: float = 20.0, after: int = 0) -> dict:
        """The first event from index ``after`` on that satisfies ``predicate`` (waiting for it)."""
        for event in self.events[after:]:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if predicate(event):
                return event

    def evaluate(self, session: str, expression: str):
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        result = self.call("Runtime.evaluate", params, session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, EOFError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this test started
            self.process.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._log.close()


@pytest.mark.browser
def test_rater_page_in_headless_chromium_downloads_a_csv_the_importer_accepts(exported, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}: install Debian's `chromium` package "
                    "(apt-get install chromium) to run the rater-page browser test")
    reporting, catalog = exported
    page = (reporting / "human_eval/index.html").resolve()
    key = pd.read_csv(reporting / "human_eval_key.csv", dtype=str, keep_default_na=False)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = DevTools(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        browser.call("Browser.setDownloadBehavior",
                     {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True})
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            browser.call(f"{domain}.enable", {}, session)
        browser.call("Page.navigate", {"url": page.as_uri()}, session)
        navigated = browser.wait_for(lambda e: e.get("method") == "Page.frameNavigated"
                                     and e["params"]["frame"]["url"] == page.as_uri())
        browser.wait_for(lambda e: e.get("method") == "Page.loadEventFired", after=browser.events.index(navigated))

        state = browser.evaluate(session, """({
            images: Array.from(document.images).map(i => i.complete && i.naturalWidth > 0),
            prompts: Array.from(document.querySelectorAll('.prompt-text')).map(e => e.textContent),
            injected: document.querySelectorAll('img[src="x"]').length,
            pairs: document.querySelectorAll('.pair').length})""")
        assert state["pairs"] == len(key) and len(state["images"]) == 2 * len(key) and all(state["images"])
        assert XSS_PROMPT in state["prompts"] and state["injected"] == 0  # shown as text, not markup

        answers = _answers_for(key)
        browser.evaluate(session, f"""(() => {{
            const answers = {json.dumps(answers)};
            const rater = document.getElementById('rater');
            rater.value = 'browser, rater "1"';  // a comma and quotes: the CSV must quote them
            rater.dispatchEvent(new Event('input'));
            for (const pair of document.querySelectorAll('.pair')) {{
                const [text, quality] = answers[pair.dataset.pairId];
                pair.querySelector(`input[name="${{pair.id}}-q_text"][value="${{text}}"]`).click();
                pair.querySelector(`input[name="${{pair.id}}-q_quality"][value="${{quality}}"]`).click();
            }}
            document.getElementById('download').click();
        }})()""")
        done = browser.wait_for(lambda e: e.get("method") == "Browser.downloadProgress"
                                and e["params"].get("state") in ("completed", "canceled"))
        assert done["params"]["state"] == "completed"
        status = browser.evaluate(session, "document.getElementById('status').textContent")
        assert status == f"{len(key)} of {len(key)} pairs answered"
        requested = [e["params"]["request"]["url"] for e in browser.events
                     if e.get("method") == "Network.requestWillBeSent"]
        assert requested and all(u.startswith((page.parent.as_uri(), "blob:", "data:")) for u in requested), requested
        assert not any(e.get("method") == "Page.javascriptDialogOpening" for e in browser.events)

        # Answers survive a reload (kept in the browser's localStorage until downloaded).
        mark = len(browser.events)
        browser.call("Page.reload", {}, session)
        browser.wait_for(lambda e: e.get("method") == "Page.loadEventFired", after=mark)
        assert browser.evaluate(session, "document.getElementById('status').textContent") == status
    finally:
        browser.close()

    downloaded = list(downloads.iterdir())
    assert [p.name for p in downloaded] == ["ratings-browser_rater_1_.csv"]
    ratings = tmp_path / "data/01_raw/human_eval_ratings"
    ratings.mkdir(parents=True)
    shutil.copy(downloaded[0], ratings / downloaded[0].name)
    results = _run_import(tmp_path, catalog)
    _check_results(results)
    table = pd.read_csv(downloaded[0], dtype=str)
    assert table["rater"].unique().tolist() == ['browser, rater "1"']
