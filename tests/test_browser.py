"""The page at / in a real headless Chromium: its fake microphone plays a WAV
file, the page streams it over the WebSocket, and its finals are the file's
transcript, with word confidences shown."""

import os
import shutil
import time

import numpy as np
import soundfile as sf
from prerequisites import requires
from test_recognize import heard
from test_streaming import pcm

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = requires("chromium")


def test_page_streams_the_microphone_and_shows_finals_with_confidences(running, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    wav = tmp_path / "mic.wav"
    sf.write(wav, np.frombuffer(pcm(1.0, "what_time.wav", 3.0), "<i2"), 16000, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        driver.set_window_size(240, 900)  # a phone's width and less: a final must wrap, not run off to the right
        driver.get(f"http://127.0.0.1:{running.http_port}/")
        driver.find_element(By.ID, "start").click()
        deadline, finals, interims = time.monotonic() + 30, [], set()
        while time.monotonic() < deadline and not finals:
            interims.add(driver.find_element(By.ID, "interim").text)
            finals = driver.execute_script(
                "return [...document.querySelectorAll('#finals .final')].map(p => p.dataset.transcript)")
            time.sleep(0.1)
        confidences = driver.execute_script(
            "return [...document.querySelectorAll('#finals rt')].map(r => r.textContent)")
        overflow = driver.execute_script(
            "const f = document.getElementById('finals'); return [f.scrollWidth, f.clientWidth]")
        if os.environ.get("ASR_ARTIFACTS"):  # a screenshot for a person to look at, never committed
            driver.save_screenshot(os.path.join(os.environ["ASR_ARTIFACTS"], "page.png"))
        status = driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
    assert heard(finals, "what_time.wav"), (finals, status)
    assert interims - {""}, "no interim text was shown before the final"
    assert len(confidences) == len(finals[0].split())
    assert all(0 <= float(c) <= 1 for c in confidences)
    scroll_width, width = overflow
    assert scroll_width <= width, overflow  # wrapped onto more lines, within the page
