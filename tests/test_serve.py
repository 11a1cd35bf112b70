"""`sdce chat` and `sdce serve` on saved tiny students: every reply is `generate` on the
conversation in its documented format, the most recent turns kept, the study's models found
in the train rule's layout, and the web page, driven in a real headless Chromium, answering
with the model picked in its dropdown."""

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from sdce import config as cfg
from sdce.data.tokenizer import load, with_mask_token
from sdce.generation import generate
from sdce.model import build_model
from sdce.serve import NO_GRADIO, answer_length, chat_loop, find_models, fit_prompt, reply_text

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DIFFUSION = ["--steps", "4", "--block-length", "4"]


def save_model(tiny_data, family: str, seed: int, out: Path):
    tok = load(tiny_data / "tokenizer")
    if family == "modernbert":
        tok = with_mask_token(tok)
    spec = cfg.validate({"family": family, "n_layer": 1, "n_embd": 32, "n_head": 2}, "model")
    model = build_model(spec, tok, 64, seed=seed).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok


@pytest.fixture(scope="module")
def results(tiny_data, tmp_path_factory):
    """A study's results folder as the train rule leaves it, with decoys that are not final models."""
    root = tmp_path_factory.mktemp("results")
    runs = root / "runs"
    models = {
        "ce/main/seed0": save_model(tiny_data, "gpt2", 0, runs / "ce/main/seed0/model"),
        "ce/main/seed1": save_model(tiny_data, "gpt2", 1, runs / "ce/main/seed1/model"),
        "mdm/fold0/seed0": save_model(tiny_data, "modernbert", 0, runs / "mdm/fold0/seed0/model"),
    }
    shutil.copytree(runs / "ce/main/seed0/model", runs / "ce/main/seed0/milestones/words_100")
    (runs / "broken/main/seed0/model").mkdir(parents=True)  # a config without its tokenizer
    shutil.copy(runs / "ce/main/seed0/model/config.json", runs / "broken/main/seed0/model")
    return root, models


def expected_chat(model, tok, messages: list[str], spec: dict) -> list[str]:
    """The replies the documented plain format gives: the conversation as speaker lines."""
    replies, prompt = [], ""
    for message in messages:
        prompt += f"User: {message}\nModel:"
        (r,) = generate(model, tok, [prompt], spec)
        replies.append(reply_text(r["completion"]))
        prompt += f" {replies[-1]}\n"
    return replies


@pytest.mark.parametrize("label", ["ce/main/seed0", "mdm/fold0/seed0"])
def test_chat_replies_are_generate_on_the_conversation(results, label):
    root, models = results
    model, tok = models[label]
    flags = ["--max-new-tokens", "6", *(DIFFUSION if label.startswith("mdm") else [])]
    cmd = [shutil.which("sdce") or str(Path(sys.executable).with_name("sdce")), "chat"]
    cmd += ["--model", str(root / "runs" / label / "model"), *flags, "--threads", "1"]

    def chat(seed: int) -> str:
        stdin = "The old\nIs a letter\n/quit\nnot asked\n"
        proc = subprocess.run([*cmd, "--seed", str(seed)], input=stdin, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    first = chat(3)
    spec = cfg.validate({"max_new_tokens": 6, "seed": 3}, "properties/generation")
    if label.startswith("mdm"):
        spec["diffusion"].update(steps=4, block_length=4)
    want = expected_chat(model, tok, ["The old", "Is a letter"], spec)
    assert first == "".join(r + "\n" for r in want)
    assert chat(3) == first
    assert (
        expected_chat(model, tok, ["The old", "Is a letter"], {**spec, "seed": 4}) != want
    )  # the seed matters


def test_the_most_recent_turns_are_kept_and_a_message_too_long_is_refused(results):
    _, models = results
    model, tok = models["ce/main/seed0"]
    spec = cfg.validate({"max_new_tokens": 8, "seed": 1}, "properties/generation")
    lines = ["the small wolves see the happy dog"] * 5 + ["the dog " * 40, "The old", "/quit"]
    replies, notes = [], []
    history = chat_loop(model, tok, spec, lines, replies.append, notes.append)
    assert len(replies) == 6 and len(history) == 12  # the long message is not answered, nor kept
    assert any("earlier messages left out to fit the model's 64 positions" in n for n in notes)
    (error,) = [n for n in notes if "error" in n]
    assert error.startswith("sdce chat: error: the message is") and "64 positions" in error
    prompt, left_out = fit_prompt(model, tok, history[:-1], spec)
    assert left_out > 0 and prompt.startswith("User: ") and prompt.endswith("User: The old\nModel:")
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) <= 64 - 8
    mdm, _ = models["mdm/fold0/seed0"]
    diffusion = {**spec, "max_new_tokens": 6, "diffusion": {**spec["diffusion"], "block_length": 4}}
    assert answer_length(mdm, diffusion) == 8 and answer_length(model, diffusion) == 6  # whole blocks


def test_the_studys_final_models_are_found(results, tmp_path):
    root, _ = results
    runs = root / "runs"
    found = find_models(root)
    assert found == {
        label: runs / label / "model" for label in ("ce/main/seed0", "ce/main/seed1", "mdm/fold0/seed0")
    }
    assert find_models(runs / "ce/main/seed1/model") == {"model": runs / "ce/main/seed1/model"}
    with pytest.raises(FileNotFoundError, match=f"no trained models under {tmp_path}"):
        find_models(tmp_path)


def test_bad_input_names_the_cause(results, run_sdce, tmp_path):
    root, _ = results
    proc = run_sdce("chat", "--model", tmp_path, check=False)
    assert proc.returncode == 2 and "--model is not a saved model folder" in proc.stderr
    proc = run_sdce("serve", tmp_path, check=False)
    assert proc.returncode == 2 and f"no trained models under {tmp_path}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    no_gradio = (
        "import sys; sys.modules['gradio'] = None; from sdce.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", no_gradio, "serve", str(root)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.strip() == NO_GRADIO


# ---------------------------------------------------------------------------- the page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(results, tmp_path):
    """`sdce serve` on the results folder, in its own process; yields the page's URL."""
    root, _ = results
    port = free_port()
    exe = shutil.which("sdce") or str(Path(sys.executable).with_name("sdce"))
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [exe, "serve", str(root), "--port", str(port), "--threads", "1"], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sdce serve did not start:\n{(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and its driver: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install 'sdce[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = (
        "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-background-networking "
    )
    flags += "--disable-component-update --disable-sync --no-first-run"
    for flag in flags.split():
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def bot_replies(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        b.get_attribute("textContent").strip()
        for b in driver.find_elements(By.CSS_SELECTOR, "[data-testid=bot]")
    ]


def test_the_page_answers_with_the_picked_model(results, server, browser):
    """Pick the second model, set the seed and the reply length, send two messages: the page's
    replies are the picked model's `generate` on the conversation, which the first model and
    the default seed would not have given."""
    pytest.importorskip("gradio", reason="needs the chat extra: pip install 'sdce[chat]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, models = results
    spec = cfg.validate({"max_new_tokens": 6, "seed": 5}, "properties/generation")
    messages = ["The old", "Is a letter"]
    want = expected_chat(*models["ce/main/seed1"], messages, spec)
    assert all(want) and want != expected_chat(*models["ce/main/seed0"], messages, spec)
    assert want != expected_chat(*models["ce/main/seed1"], messages, {**spec, "seed": 0})

    wait = WebDriverWait(browser, 120)
    browser.get(server)
    picker = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[aria-label=model]")))
    picker.click()
    wait.until(
        ec.element_to_be_clickable(
            (By.CSS_SELECTOR, "[data-testid=dropdown-option][aria-label='ce/main/seed1']")
        )
    ).click()
    assert picker.get_attribute("value") == "ce/main/seed1"
    browser.find_element(
        By.XPATH, "//button[contains(@class, 'label-wrap') and contains(., 'sampling')]"
    ).click()
    seed = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[aria-label=seed]")))
    seed.clear()
    seed.send_keys("5", Keys.TAB)
    length = browser.find_element(By.CSS_SELECTOR, "input[aria-label='number input for max new tokens']")
    length.send_keys(Keys.CONTROL, "a")
    length.send_keys("6", Keys.TAB)
    for n, message in enumerate(messages, start=1):
        # the page disables its textbox until the previous reply's event has finished
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "textarea[data-testid=textbox]")))
        box.send_keys(message, Keys.ENTER)
        wait.until(lambda d, n=n: len([r for r in bot_replies(d) if r]) == n)
    assert bot_replies(browser) == want
