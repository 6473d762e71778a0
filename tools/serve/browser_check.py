#!/usr/bin/env python3
"""End-to-end check of the web page of `sd serve` in headless Chromium, driven by Playwright.

It starts `sd serve` on a tiny fixture model (a free port), opens the page, fills the form,
watches the progress bar move during a run, interrupts a second run, and finds the finished
image and its parameters in the gallery; "reuse parameters" must put them back in the form.
A screenshot of the page is kept (--screenshot). Outside `cargo test` (it needs Python).

Setup (Debian's Chromium; Playwright from PyPI, which drives it, no browser download):

    apt-get install chromium
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    cargo build -p sd-cli
    /tmp/pw/bin/python tools/serve/browser_check.py --sd target/debug/sd

Exit status 0 when every check passed; each check prints one line.
"""

import argparse
import os
import re
import subprocess
import sys
import time

from playwright.sync_api import sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
failures = []


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(name)


def start_server(sd, model):
    """Starts `sd serve` on a free port; returns the process and its URL."""
    server = subprocess.Popen(
        [sd, "serve", "--model", model, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = server.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        server.kill()
        sys.exit(f"sd serve did not start: {line!r}")
    return server, match.group(1)


def fill(page, prompt, steps, size, seed):
    page.fill("#prompt", prompt)
    page.fill("#negative", "blurry")
    page.fill("#steps", str(steps))
    page.fill("#width", str(size))
    page.fill("#height", str(size))
    page.fill("#seed", str(seed))


def watch_progress(page, timeout):
    """The progress bar's values seen until the run ends (the Generate button is enabled)."""
    seen = []
    end = time.time() + timeout
    while time.time() < end:
        value = page.eval_on_selector("#progress", "e => e.value")
        if not seen or seen[-1] != value:
            seen.append(value)
        if page.is_enabled("#generate") and len(seen) > 1:
            break
        time.sleep(0.02)
    return seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", default=os.path.join(ROOT, "target/debug/sd"))
    parser.add_argument("--model", default=os.path.join(ROOT, "fixtures/models/tiny-sd15"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshot", default=os.path.join(ROOT, "target/browser_check.png"))
    args = parser.parse_args()

    server, url = start_server(args.sd, args.model)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=20000)
            samplers = page.eval_on_selector_all("#sampler option", "o => o.map(e => e.value)")
            check("the sampler list comes from the server", "DPM++ 2M" in samplers, str(samplers))
            schedules = page.eval_on_selector_all("#schedule option", "o => o.map(e => e.value)")
            check("the schedule list comes from the server", "karras" in schedules, str(schedules))

            # A run to the end: the progress bar moves, the gallery gets the image.
            fill(page, "a red circle", 40, 128, 1234)
            page.select_option("#sampler", "DPM++ 2M")
            page.click("#generate")
            seen = watch_progress(page, 120)
            between = [v for v in seen if 0 < v < 1]
            check(
                "the progress bar moves during the run",
                len(set(between)) >= 2 and seen[-1] == 1,
                str(seen[:20]),
            )
            page.wait_for_selector("#gallery .card img", timeout=60000)
            card = page.locator("#gallery .card").first
            card.locator("img").evaluate("img => img.decode()")
            width = card.locator("img").evaluate("img => img.naturalWidth")
            check("the finished image is in the gallery", width == 128, f"naturalWidth {width}")
            info = card.locator(".infotext").inner_text()
            check(
                "its parameters are shown with it",
                "a red circle" in info and "Seed: 1234" in info and "Steps: 40" in info
                and "Sampler: DPM++ 2M" in info,
                info,
            )
            download = card.locator("a.download").get_attribute("download") or ""
            check("it can be downloaded", download.endswith(".png"), download)

            # Reuse: change the form, then get the parameters back from the gallery.
            fill(page, "something else", 3, 64, 7)
            card.locator("button.reuse").click()
            check(
                "reuse parameters puts them back in the form",
                page.input_value("#prompt") == "a red circle"
                and page.input_value("#steps") == "40"
                and page.input_value("#seed") == "1234"
                and page.input_value("#sampler") == "DPM++ 2M",
                f"{page.input_value('#prompt')!r} steps {page.input_value('#steps')}",
            )

            # A long run, interrupted once it is sampling.
            fill(page, "a blue square", 400, 128, 99)
            page.click("#generate")
            page.wait_for_function(
                "document.getElementById('statusText').textContent === 'sampling'"
                " && document.getElementById('progress').value > 0.02",
                timeout=120000,
            )
            step = int(re.search(r"step (\d+)", page.inner_text("#jobInfo")).group(1))
            page.click("#interrupt")
            page.wait_for_selector("#generate:not([disabled])", timeout=120000)
            status = page.inner_text("#statusText")
            check("interrupt stops the run while sampling", status == "Interrupted" and step > 1, f"{status} at step {step}")
            first = page.locator("#gallery .card").first
            check(
                "the interrupted image is in the gallery, marked",
                first.locator(".tag").count() == 1 and "Seed: 99" in first.inner_text(),
                first.inner_text()[:200],
            )
            check("the page raised no script errors", not errors, "; ".join(errors))
            os.makedirs(os.path.dirname(args.screenshot), exist_ok=True)
            page.screenshot(path=args.screenshot, full_page=True)
            print(f"screenshot: {args.screenshot}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{len(failures)} failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
