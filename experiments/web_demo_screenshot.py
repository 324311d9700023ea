"""The README's picture of the web demo: serve a model folder, ask it in a headless Chromium, save a
screenshot of the page.

    python experiments/web_demo_screenshot.py --model models/tiny_synthetic --image data/synthetic/images/synth_000015.jpg \
        --text "the topmost small blue square" --text "the red diamond left of the purple circle" --out docs/web_demo.png
"""

import argparse
import os
import shutil
import threading

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ssrvg_ext.cli.demo import example_images
from ssrvg_ext.predictor import load_predictor
from ssrvg_ext.web.server import DemoApp, make_server


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--text", action="append", required=True)
    p.add_argument("--out", default="docs/web_demo.png")
    a = p.parse_args()
    os.environ["SSRVG_DEMO_QUIET"] = "1"
    app = DemoApp(load_predictor(a.model, device="cpu"), example_images(a.model, None),
                  name=os.path.basename(os.path.normpath(a.model)))
    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1180,860", "--hide-scrollbars"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
    try:
        drv.get(f"http://127.0.0.1:{server.server_address[1]}/")
        WebDriverWait(drv, 60).until(lambda d: d.find_element(By.ID, "go").is_enabled())
        drv.find_element(By.ID, "file").send_keys(os.path.abspath(a.image))
        drv.find_element(By.ID, "text").send_keys("\n".join(a.text))
        drv.find_element(By.ID, "go").click()
        WebDriverWait(drv, 120).until(lambda d: d.find_element(By.ID, "stage").get_attribute("data-done") == "1")
        drv.save_screenshot(a.out)
        print(f"wrote {a.out}")
    finally:
        drv.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
