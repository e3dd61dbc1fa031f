"""The web page in a real headless browser (Debian's chromium, driven by selenium): chat, guard
marks, and the studio from a CSV to a trained assistant. Screenshots go to tests/screenshots/.

Skipped, with a message saying how to enable them, where chromium or its driver is missing.
"""

import shutil
import threading
import time
from pathlib import Path

import pytest
from test_serve import free_port
from test_train import tiny_recipe

from afinar.assistant.engine import Engine
from afinar.serving.api import create_app
from afinar.serving.studio import Studio
from afinar.training import train

SHOTS = Path(__file__).parent / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no headless browser: install Debian's chromium and its driver (apt-get install chromium chromium-driver)")

FAQ = "pregunta;respuesta\n" + "".join(
    f"¿Cuánto cuesta el curso {i}?;El curso {i} cuesta {100 + i} soles y dura {i + 2} semanas.\n" for i in range(14))


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    import uvicorn

    root = tmp_path_factory.mktemp("web")
    run = train(tiny_recipe(root, tiny_model_dir, "train.max_steps=2", f"train.output_dir={root / 'runs'}",
                            "generation.max_new_tokens=8", 'interview.questions=["¿Qué función?", "¿Cuál es tu rol?"]'),
                progress=False).run_dir
    studio = Studio(root / "studio", str(tiny_model_dir),
                    ["train.max_steps=2", "train.precision=fp32", "eval.max_new_tokens=4", "generation.max_new_tokens=8"])
    app = create_app(Engine([run]), studio=studio)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root
    server.should_exit = True


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    SHOTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def wait_for(driver, condition, seconds=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)


def send(driver, text):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def last_answer(driver):
    from selenium.webdriver.common.by import By

    bubbles = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    return bubbles[-1] if bubbles else None


def test_chat_streams_an_answer_and_marks_a_refusal(site, browser):
    from selenium.webdriver.common.by import By

    url, _ = site
    browser.get(url)
    wait_for(browser, lambda d: d.find_element(By.ID, "model").get_attribute("value") == "tiny")
    assert "guard: refuse" in browser.find_element(By.ID, "mode").text
    send(browser, "¿Qué es la pila 3?")
    wait_for(browser, lambda d: last_answer(d) is not None and not d.find_element(By.ID, "send").get_property("disabled"))
    answer = last_answer(browser)
    assert answer.text.strip() and answer.text != "…" and "refused" not in answer.get_attribute("class")
    cited = answer.find_elements(By.CSS_SELECTOR, ".sources .source")  # the records the answer was grounded on
    assert cited and cited[0].text == "[1] ¿Qué es la pila 3?"
    send(browser, "¿Quién ganó el mundial de fútbol de 2010?")
    wait_for(browser, lambda d: "refused" in last_answer(d).get_attribute("class"))
    assert "Solo pilas." in last_answer(browser).text and "Refused by the domain guard" in last_answer(browser).text
    browser.save_screenshot(str(SHOTS / "chat.png"))


def test_guided_interview_asks_each_question_then_answers(site, browser):
    from selenium.webdriver.common.by import By

    url, _ = site
    browser.get(url)
    wait_for(browser, lambda d: d.find_element(By.ID, "interview-start").is_displayed())
    browser.find_element(By.ID, "interview-start").click()
    wait_for(browser, lambda d: last_answer(d) is not None and last_answer(d).text == "¿Qué función?")
    send(browser, "exportar notas")
    wait_for(browser, lambda d: last_answer(d).text == "¿Cuál es tu rol?")
    send(browser, "docente")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 3
             and not d.find_element(By.ID, "send").get_property("disabled"))
    assert last_answer(browser).text.strip() not in ("", "…")
    browser.save_screenshot(str(SHOTS / "interview.png"))


def test_studio_uploads_checks_trains_and_chats(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, root = site
    bad = tmp_path / "roto.csv"
    bad.write_text("pregunta;respuesta\n¿Hola?;\n", encoding="utf-8")
    good = tmp_path / "cursos.csv"
    good.write_text(FAQ, encoding="utf-8")
    browser.get(url)
    browser.find_element(By.ID, "tab-studio").click()
    # a broken file: the check report lists its problems, training stays off
    browser.find_element(By.ID, "dataset").send_keys(str(bad))
    browser.find_element(By.ID, "upload").click()
    wait_for(browser, lambda d: "fix the errors" in d.find_element(By.ID, "check-report").text)
    assert "roto.csv:2" in browser.find_element(By.ID, "check-report").text
    assert not browser.find_element(By.ID, "train").is_enabled()
    # a good one: usable, then train, watch the job, evaluate, chat with the result
    browser.find_element(By.ID, "dataset").send_keys(str(good))
    browser.find_element(By.ID, "upload").click()
    wait_for(browser, lambda d: "the data is usable" in d.find_element(By.ID, "check-report").text)
    browser.save_screenshot(str(SHOTS / "studio-check.png"))
    browser.find_element(By.ID, "train").click()
    wait_for(browser, lambda d: "done" in d.find_element(By.ID, "job").text or "failed" in d.find_element(By.ID, "job").text, 240)
    assert "done" in browser.find_element(By.ID, "job").text, browser.find_element(By.ID, "job").text
    assert browser.find_element(By.ID, "loss-chart").is_displayed()
    assert "Eval loss: base" in browser.find_element(By.ID, "result").text
    assert (root / "studio" / "runs" / "cursos" / "eval" / "report.html").exists()
    browser.save_screenshot(str(SHOTS / "studio-trained.png"))
    browser.find_element(By.ID, "chat-result").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "model").get_attribute("value") == "cursos")
    send(browser, "¿Cuánto cuesta el curso 3?")
    wait_for(browser, lambda d: last_answer(d) is not None and not d.find_element(By.ID, "send").get_property("disabled"))
    assert last_answer(browser).text.strip()
    browser.save_screenshot(str(SHOTS / "studio-chat.png"))
