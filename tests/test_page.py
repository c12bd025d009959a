"""The page at GET /, driven in a real Chromium (Debian's /usr/bin/chromium, through Playwright)
against a real gunicorn: what it shows is what the API answers for the same inputs, and what the
NumPy forward propagation computes.

Besides the committed models, some tests serve a repository made in tmp_path that also holds a
model imported from a plain ONNX file (tests/onnx_models.py, no TensorFlow): the page lists it
with its signature and tries it with a request made from its metadata, whose answer must be what
onnxruntime computes from the same inputs when run directly here.

Chromium is required: without /usr/bin/chromium these tests fail (CI installs it), they do not skip.
A screenshot of the page served from that repository is saved to test-artifacts/page.png.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from modelcard import forward
from tests import onnx_models
from tests.conftest import MODELS, PARITY, ROOT, gunicorn, latest_version, read_card

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections are refused on a closed
# machine, and the page's requests with them.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOT = ROOT / "test-artifacts" / "page.png"
SIZE = 8
ONE = [(row, 4) for row in range(1, 8)]  # a "1": a vertical stroke in column 5, rows 2 to 8
HIDDEN_UNITS = {"affordability": "shipping_cost", "awareness": "marketing", "perceived quality": "material"}
PANEL_MODELS = ("demand", "digits", "digits-binary")  # the models the page has panels for
IMPORTED = "imported"  # a model without a panel, imported from a plain ONNX file
IMPORTED_RANGES = {"tokens": [0, 9]}
IMPORTED_LABELS = {"score": ["no", "yes"]}
SOURCES = {"trained": "trained here", "keras": "imported from a Keras file",
           "onnx": "imported from an ONNX file"}

expect.set_options(timeout=15_000)


# What the page shows, computed the way the page computes it (JavaScript's toFixed rounds the
# exact binary value half up; Decimal(float) is that exact value).


def fixed(value: float, digits: int) -> str:
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def shown_percent(p: float) -> str:
    return f"{fixed(p * 100, 1)}%"


def post(url: str, path: str, body: dict | str, headers: dict | None = None) -> tuple[int, dict]:
    """POSTs a JSON body (or JSON text as it stands); the status and the JSON answer."""
    text = body if isinstance(body, str) else json.dumps(body)
    request = urllib.request.Request(url + path, data=text.encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as response:
        return json.loads(response.read())


def infer(url: str, model: str, pixels: np.ndarray) -> np.ndarray:
    status, answer = post(url, f"/v2/models/{model}/infer", {"inputs": [
        {"name": "pixels", "shape": [1, pixels.size], "datatype": "FP32", "data": pixels.tolist()}]})
    assert status == 200, answer
    return np.array(answer["outputs"][0]["data"], dtype=np.float64)


def explain(url: str, model: str, row: list[float]) -> dict:
    status, answer = post(url, f"/v1/models/{model}:explain", {"instances": [row]})
    assert status == 200, answer
    return answer["explanations"][0]


def one_pixels() -> np.ndarray:
    pixels = np.zeros(SIZE * SIZE)
    for row, col in ONE:
        pixels[row * SIZE + col] = 16
    return pixels


def cell(page: Page, row: int, col: int):
    return page.get_by_role("button", name=f"Row {row + 1}, column {col + 1}", exact=True)


# The browser


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the page tests need Debian's Chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def problems():
    """Uncaught script errors and console errors of the page (a blocked resource, a 404, ...)."""
    return []


@pytest.fixture()
def page(browser, problems):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and problems.append(
        f"console: {message.text}"))
    yield page
    context.close()


# The page


def test_page_is_served_with_its_files(server):
    for path, kinds in [("/", ("text/html",)), ("/static/page.css", ("text/css",)),
                        ("/static/page.js", ("text/javascript", "application/javascript"))]:
        with urllib.request.urlopen(server + path, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith(kinds), (path, response.headers)
    with urllib.request.urlopen(server + "/", timeout=10) as response:
        html = response.read().decode()
    # nothing from elsewhere: every src and href is on this server
    assert not re.search(r"""(?:src|href)=["'](?:https?:)?//""", html)


def test_controls_are_labelled_and_results_are_announced(page, server, problems):
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("onnx-serving")
    for name in ["Draw a digit", "Will this T-shirt be a top seller?", "Models"]:
        expect(page.get_by_role("heading", level=2, name=name)).to_be_visible()
    expect(page.get_by_role("group", name="Drawing grid, 8 by 8 pixels")).to_be_visible()
    expect(page.locator("#grid button")).to_have_count(SIZE * SIZE)
    expect(page.get_by_role("radio", name=re.compile("^digits:"))).to_be_checked()
    expect(page.get_by_role("radio", name=re.compile("^digits-binary:"))).not_to_be_checked()
    expect(page.get_by_role("combobox", name="Pen intensity")).to_be_visible()
    expect(page.get_by_role("button", name="Clear")).to_be_visible()
    card = read_card(latest_version("demand"))
    for feature in card["inputs"][0]["features"]:  # one slider per feature, its range from the card
        slider = page.get_by_role("slider", name=re.compile(
            "^" + feature["name"].replace("_", " ") + rf" \({feature['unit']}", re.IGNORECASE))
        expect(slider).to_have_attribute("min", f"{feature['min']:g}")
        expect(slider).to_have_attribute("max", f"{feature['max']:g}")
    controls = page.locator("main button, main input, main select")
    # the grid's cells, Clear, the two radios, the pen and a slider per feature
    assert controls.count() == SIZE * SIZE + 1 + 2 + 1 + len(card["inputs"][0]["features"])
    for index in range(controls.count()):
        expect(controls.nth(index)).to_have_accessible_name(re.compile(r"\S"))
    expect(page.locator("#digit-summary")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#demand-summary")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#demand-probability")).to_be_visible()
    # every request the page made went to this service
    assert requested and all(url.startswith(server + "/") for url in requested), requested
    assert problems == []


def test_drawn_one_shows_what_the_api_and_the_numpy_forward_propagation_answer(page, server, problems):
    page.goto(server + "/")
    for row, col in ONE:
        cell(page, row, col).click()
    pixels = one_pixels()

    labels = read_card(latest_version("digits"))["outputs"][0]["labels"]
    probabilities = infer(server, "digits", pixels)
    oracle = forward.Network.load(latest_version("digits")).predict(pixels)
    assert np.max(np.abs(probabilities - oracle)) <= PARITY
    best = int(np.argmax(probabilities))
    assert best == int(np.argmax(oracle))
    assert labels[best] == "1"  # the stroke is a 1 for the model too
    expect(page.locator("#digit-label")).to_have_text(labels[best])
    expect(page.locator("#digit-probability")).to_have_text(shown_percent(probabilities[best]))
    expect(page.locator("#digit-bars li .label")).to_have_text(labels)
    expect(page.locator("#digit-bars li .value")).to_have_text([shown_percent(p) for p in probabilities])

    # Every layer of :explain, drawn as the network and listed as numbers.
    card = read_card(latest_version("digits"))
    units = sum(layer["units"] for layer in card["forward"]["layers"])
    expect(page.locator("#digit-net circle")).to_have_count(units)
    expect(page.locator("#digit-net rect")).to_have_count(SIZE * SIZE)
    activations = explain(server, "digits", pixels.tolist())["activations"]
    rows = page.locator("#digit-numbers p")
    expect(rows).to_have_count(1 + len(card["forward"]["layers"]))
    for number in range(1, len(card["forward"]["layers"]) + 1):
        expect(rows.nth(number)).to_contain_text(", ".join(fixed(a, 4) for a in activations[f"a{number}"]))

    # The same grid, sent to digits-binary.
    page.get_by_role("radio", name=re.compile("^digits-binary:")).check()
    [p_one] = infer(server, "digits-binary", pixels)
    [oracle_one] = forward.Network.load(latest_version("digits-binary")).predict(pixels)
    assert abs(p_one - oracle_one) <= PARITY
    label, p_label = ("1", p_one) if p_one >= 0.5 else ("0", 1 - p_one)
    expect(page.locator("#digit-label")).to_have_text(label)
    expect(page.locator("#digit-probability")).to_have_text(shown_percent(p_label))
    expect(page.locator("#digit-bars li .value")).to_have_text([shown_percent(1 - p_one),
                                                                shown_percent(p_one)])
    binary = read_card(latest_version("digits-binary"))
    units = sum(layer["units"] for layer in binary["forward"]["layers"])
    expect(page.locator("#digit-net circle")).to_have_count(units)

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#digit-summary")).to_have_text("Draw a digit to see what the network says.")
    assert problems == []


def demand_values(page: Page, card: dict) -> list[float]:
    return [float(page.locator(f"#feature-{f['name']}").input_value()) for f in card["inputs"][0]["features"]]


def expect_demand(page: Page, server: str, values: list[float]) -> str:
    """The page shows the API's answer for these inputs; returns the probability shown."""
    explanation = explain(server, "demand", values)
    [p] = explanation["prediction"]
    [oracle] = forward.Network.load(latest_version("demand")).predict(np.array(values))
    assert abs(p - oracle) <= PARITY
    shown = shown_percent(p)
    expect(page.locator("#demand-probability")).to_have_text(shown)
    expect(page.locator("#demand-label")).to_have_text(explanation["label"])
    for unit, a in enumerate(explanation["activations"]["a1"]):
        expect(page.locator(f'#demand-hidden li[data-unit="{unit}"] .value')).to_have_text(fixed(a, 3))
    return shown


def test_moving_a_demand_slider_shows_the_api_answer_for_the_new_inputs(page, server, problems):
    card = read_card(latest_version("demand"))
    page.goto(server + "/")
    before = expect_demand(page, server, demand_values(page, card))

    marketing = page.get_by_role("slider", name=re.compile("^Marketing"))
    marketing.focus()
    marketing.press("End")
    expect(marketing).to_have_value(f"{card['inputs'][0]['features'][2]['max']:g}")
    values = demand_values(page, card)
    after = expect_demand(page, server, values)
    assert after != before

    # The hidden units carry the lesson's names; each is the unit its feature weighs most on, and
    # a unit that falls as its feature rises is marked inverted.
    with np.load(latest_version("demand") / "weights.npz") as weights:
        W1 = weights["W1"]
    names = [f["name"] for f in card["inputs"][0]["features"]]
    for concept, feature in HIDDEN_UNITS.items():
        weights_in = W1[names.index(feature)]
        unit = int(np.argmax(np.abs(weights_in)))
        inverted = (weights_in[unit] < 0) != (concept == "affordability")
        item = page.locator(f'#demand-hidden li[data-unit="{unit}"] .name')
        expect(item).to_have_text(concept.capitalize() + (" (inverted)" if inverted else ""))
    assert problems == []


def test_an_error_answer_is_shown(page, server):
    """The requests of both panels go to a model the server does not have: the page shows its 404s."""
    def elsewhere(route):
        route.continue_(url=re.sub(r"/models/(digits|demand)([/:])", r"/models/no-such-model\2",
                                   route.request.url))

    page.route("**/v2/models/digits/infer", elsewhere)
    page.route("**/v1/models/demand:explain", elsewhere)
    page.goto(server + "/")
    status, answer = post(server, "/v1/models/no-such-model:explain", {"instances": [[1, 2, 3, 4]]})
    assert status == 404
    expect(page.locator("#demand-error")).to_be_visible()
    expect(page.locator("#demand-error")).to_contain_text(answer["error"])

    cell(page, 3, 3).click()
    pixels = np.zeros(SIZE * SIZE)
    pixels[3 * SIZE + 3] = 16
    status, answer = post(server, "/v2/models/no-such-model/infer", {"inputs": [
        {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": pixels.tolist()}]})
    assert status == 404
    alert = page.get_by_role("alert").filter(has_text="POST /v2/models/digits/infer").filter(
        has_text=answer["error"])
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("404")
    expect(page.locator("#digit-summary")).to_contain_text("No prediction")

    page.unroute("**/v2/models/digits/infer")  # the service answers again: the error goes away
    cell(page, 4, 3).click()
    expect(page.locator("#draw-error")).to_be_hidden()
    expect(page.locator("#digit-probability")).to_be_visible()


def test_unavailable_versions_and_missing_models_are_shown_with_the_reason(browser, tmp_path):
    """demand version 2 is refused (tampered model.onnx) while version 1 serves; a model whose
    only version is broken is listed unavailable; digits is not in the repository at all, so the
    drawing panel is not shown."""
    shutil.copytree(MODELS / "demand", tmp_path / "demand")
    tampered = tmp_path / "demand" / "2"
    shutil.copytree(tmp_path / "demand" / "1", tampered)
    card = read_card(tampered)
    (tampered / "card.json").write_text(json.dumps({**card, "version": 2}))
    with (tampered / "model.onnx").open("ab") as graph:
        graph.write(b"\0")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "card.json").write_text("{not json")
    with gunicorn(tmp_path, workers=1) as server:
        page = browser.new_page()
        try:
            page.goto(server.url + "/")
            index = post(server.url, "/v2/repository/index", {})[1]
            reasons = {(entry["name"], entry["version"]): entry["reason"] for entry in index}
            assert reasons[("demand", "1")] == ""
            assert "sha256" in reasons[("demand", "2")] and reasons[("broken", "1")]
            expect(page.locator("#model-cards .card")).to_have_count(2)  # every model, no more
            demand = get(server.url, "/v2/models/demand")
            card = page.locator('.card[data-model="demand"]')
            expect(card).to_contain_text(f"version {demand['parameters']['version']}")
            for key, value in demand["parameters"]["metrics"].items():
                expect(card).to_contain_text(f"{key.replace('_', ' ')} {value:.4f}")
            expect(card).to_contain_text("features · FP32 · [-1,\u00a04]")
            expect(card.locator(".card-error")).to_have_text(
                f"Version 2 is unavailable: {reasons[('demand', '2')]}")
            broken = page.locator('.card[data-model="broken"]')
            expect(broken).to_contain_text("unavailable")
            expect(broken.locator(".card-error")).to_have_text(
                f"Version 1 is unavailable: {reasons[('broken', '1')]}")
            for name in ("digits", "digits-binary"):
                expect(page.locator(f'.card[data-model="{name}"]')).to_have_count(0)
            # neither digits model is served: the page leads with what is, no drawing panel
            expect(page.locator("#draw")).to_be_hidden()
            expect(page.locator("#demand")).to_be_visible()
            # and demand still works, with version 1
            expect(page.locator("#demand-probability")).to_have_text(re.compile(r"^\d+\.\d%$"))
        finally:
            page.close()


def test_a_repository_of_ones_own_models_opens_on_them_without_the_built_in_panels(page, tmp_path, problems):
    """No digits, no demand: the page shows the user's model, and no panel that could only fail."""
    onnx_models.write_version(tmp_path, IMPORTED, 1, onnx_models.two_in_two_out(),
                              ranges=IMPORTED_RANGES, labels=IMPORTED_LABELS)
    with gunicorn(tmp_path, workers=1) as server:
        page.goto(server.url + "/")
        expect(page.locator(f'.card[data-model="{IMPORTED}"]')).to_be_visible()
        for panel in ("#draw", "#demand"):
            expect(page.locator(panel)).to_be_hidden()
        expect(page.locator(".error:visible")).to_have_count(0)
    assert problems == []


def test_with_api_keys_the_page_asks_for_one_and_works_with_it(browser, problems):
    """Without a key every panel shows the service's 401 and the key form appears; with the key
    (kept in this tab's sessionStorage only) every request carries it and the panels answer."""
    key, wrong = "page-test-key-0123456789", "not-the-key-0123456789"
    with gunicorn(workers=1, SERVING_API_KEYS=key) as server:
        status, refused = post(server.url, "/v1/models/demand:explain", {"instances": [[1, 2, 3, 4]]})
        assert status == 401
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        sent = []
        page.on("request", lambda request: sent.append((request.url, request.headers.get("authorization"))))
        try:
            page.goto(server.url + "/")
            expect(page.locator("#demand-error")).to_contain_text(
                f"The service answered 401 to GET /v2/models/demand: {refused['error']}")
            expect(page.locator("#demand-error")).to_contain_text("Enter the service's API key")
            expect(page.locator("#models-error")).to_contain_text("401")
            field = page.get_by_label("API key")
            expect(field).to_be_visible()
            expect(field).to_have_attribute("type", "password")

            field.fill(wrong)
            page.get_by_role("button", name="Use key").click()
            expect(page.locator("#demand-error")).to_contain_text("the API key is not valid")
            expect(page.locator("#demand-error")).to_contain_text("Enter a valid API key")

            # The wrong key's round ends (every panel asked and was refused) before the count starts.
            page.wait_for_load_state("networkidle")
            sent.clear()
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Use key").click()
            card = read_card(latest_version("demand"))
            expect(page.locator("#demand-probability")).to_have_text(re.compile(r"^\d+\.\d%$"))
            values = demand_values(page, card)
            status, answer = post(server.url, "/v1/models/demand:explain", {"instances": [values]},
                                  headers={"Authorization": f"Bearer {key}"})
            assert status == 200
            expect(page.locator("#demand-probability")).to_have_text(
                shown_percent(answer["explanations"][0]["prediction"][0]))
            for row, col in ONE:
                cell(page, row, col).click()
            expect(page.locator("#digit-label")).to_have_text("1")
            expect(page.locator("#model-cards .card")).to_have_count(len(PANEL_MODELS))
            expect(page.locator("#demand-error")).to_be_hidden()
            api = [(url, auth) for url, auth in sent if re.search(r"/v[12](/|$)", url)]
            assert api and all(auth == f"Bearer {key}" for _, auth in api), api
            stored = page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")
            assert stored == [1, 0, ""]
        finally:
            context.close()
    # the browser's only complaints are the 401 answers themselves
    assert problems and all("status of 401" in problem for problem in problems), problems


def centre(page: Page, row: int, col: int) -> tuple[float, float]:
    box = page.locator(f'#grid [data-index="{row * SIZE + col}"]').bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_dragging_draws_with_the_mouse_and_on_a_touch_screen(browser, page, server, problems):
    expected = shown_percent(infer(server, "digits", one_pixels()).max())
    page.goto(server + "/")
    page.mouse.move(*centre(page, *ONE[0]))
    page.mouse.down()
    for row, col in ONE[1:]:
        page.mouse.move(*centre(page, row, col), steps=3)
    page.mouse.up()
    expect(page.locator('#grid [aria-pressed="true"]')).to_have_count(len(ONE))
    expect(page.locator("#digit-probability")).to_have_text(expected)
    assert problems == []

    # A finger: touch events through the DevTools protocol, as a touch screen sends them.
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        phone = context.new_page()
        phone.goto(server + "/")
        touch = context.new_cdp_session(phone)
        x, y = centre(phone, *ONE[0])
        touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for row, col in ONE[1:]:
            x, y = centre(phone, row, col)
            touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        expect(phone.locator('#grid [aria-pressed="true"]')).to_have_count(len(ONE))
        expect(phone.locator("#digit-probability")).to_have_text(expected)
    finally:
        context.close()


def test_keyboard_drawing_and_sliders(page, server, problems):
    """Everything by keyboard: the roving focus of the grid, Space and Enter, a slider's arrows."""
    page.goto(server + "/")
    cell(page, 0, 0).focus()
    for key in ["ArrowRight"] * 4 + ["ArrowDown"]:
        page.keyboard.press(key)
    expect(page.locator(f'#grid [data-index="{1 * SIZE + 4}"]')).to_be_focused()
    page.keyboard.press("Space")
    for _ in ONE[1:]:
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
    expect(page.locator('#grid [aria-pressed="true"]')).to_have_count(len(ONE))
    probabilities = infer(server, "digits", one_pixels())
    expect(page.locator("#digit-probability")).to_have_text(shown_percent(probabilities.max()))
    # Space again erases
    page.keyboard.press("Space")
    expect(page.locator('#grid [aria-pressed="true"]')).to_have_count(len(ONE) - 1)
    page.keyboard.press("Enter")

    card = read_card(latest_version("demand"))
    price = page.get_by_role("slider", name=re.compile("^Price"))
    price.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    expect(price).to_have_value("22.5")
    expect_demand(page, server, demand_values(page, card))
    expect(page.locator("#digit-probability")).to_have_text(shown_percent(probabilities.max()))
    assert problems == []


# A repository with a model the page has no panel for


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """Copies of the committed models, and a model imported from a plain ONNX file."""
    repository = tmp_path_factory.mktemp("repository")
    for model in MODELS.iterdir():
        if model.is_dir():
            shutil.copytree(model, repository / model.name)
    onnx_models.write_version(
        repository, IMPORTED, 1, onnx_models.two_in_two_out(), file="two_in_two_out.onnx",
        description="A tiny graph built with onnx.helper: two inputs, two outputs.",
        ranges=IMPORTED_RANGES, labels=IMPORTED_LABELS)
    return repository


@pytest.fixture(scope="module")
def mixed(repository):
    """The URL of a gunicorn serving that repository."""
    with gunicorn(repository, workers=1) as running:
        yield running.url


def tensor_text(tensor: dict) -> str:
    shape = ",\u00a0".join(str(d) for d in tensor["shape"])
    return f"{tensor['name']} · {tensor['datatype']} · [{shape}]"


def example_request(card: dict) -> dict:
    """The request the page must offer, from the card: -1 read as 1, zeros, false for BOOL, and the
    low end of an input's range."""
    inputs = []
    for tensor in card["inputs"]:
        shape = [1 if d == -1 else d for d in tensor["shape"]]
        fill = False if tensor["datatype"] == "BOOL" else tensor.get("range", [0])[0]
        inputs.append({"name": tensor["name"], "datatype": tensor["datatype"], "shape": shape,
                       "data": [fill] * int(np.prod(shape))})
    return {"inputs": inputs}


def oracle(folder: Path, request: dict) -> dict[str, np.ndarray]:
    """onnxruntime run here, directly on the graph file, on the request's inputs."""
    dtypes = {"INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}
    return onnx_models.run(folder / "model.onnx", {
        tensor["name"]: np.array(tensor["data"], dtype=dtypes[tensor["datatype"]]).reshape(tensor["shape"])
        for tensor in request["inputs"]})


def expect_answer(answer: dict, expected: dict[str, np.ndarray], card: dict) -> None:
    """The answer's outputs are the oracle's: names, datatypes, shapes and every value."""
    assert [output["name"] for output in answer["outputs"]] == list(expected)
    for output, spec in zip(answer["outputs"], card["outputs"], strict=True):
        values = expected[output["name"]]
        assert output["datatype"] == spec["datatype"]
        assert output["shape"] == list(values.shape)
        shown = np.array(output["data"], dtype=values.dtype).reshape(values.shape)
        np.testing.assert_array_equal(shown, values)


def try_controls(page: Page):
    card = page.locator(f'.card[data-model="{IMPORTED}"]')
    return (card.get_by_role("textbox", name=f"Request to POST /v2/models/{IMPORTED}/infer"),
            card.get_by_role("button", name="Send"),
            card.get_by_role("textbox", name="Answer", exact=True))


def test_every_model_of_the_repository_is_listed_with_its_signature(page, mixed, repository, problems):
    page.goto(mixed + "/")
    status, index = post(mixed, "/v2/repository/index", {})
    assert status == 200
    names = sorted({entry["name"] for entry in index})
    assert names == sorted([*PANEL_MODELS, IMPORTED])
    cards = page.locator("#model-cards .card")
    expect(cards).to_have_count(len(names))
    assert [cards.nth(k).get_attribute("data-model") for k in range(len(names))] == names
    for name in names:
        meta = get(mixed, f"/v2/models/{name}")
        parameters = meta["parameters"]
        card = page.locator(f'.card[data-model="{name}"]')
        expect(card.get_by_role("heading", level=3)).to_have_text(f"{name} version {parameters['version']}")
        expect(card).to_contain_text(parameters["description"])
        source = parameters["source"]
        named = f" ({source['file']})" if source["file"] else ""
        expect(card).to_contain_text(SOURCES[source["kind"]] + named)
        for tensor in meta["inputs"] + meta["outputs"]:
            expect(card).to_contain_text(tensor_text(tensor))
        for output, labels in parameters["labels"].items():
            expect(card).to_contain_text(f"{output}: {', '.join(labels)}")
        for key, value in parameters["metrics"].items():
            expect(card).to_contain_text(f"{key.replace('_', ' ')} {value:.4f}")
        # only a model without a panel above is offered a request to try
        expect(card.get_by_role("button", name="Send")).to_have_count(0 if name in PANEL_MODELS else 1)

    imported = page.locator(f'.card[data-model="{IMPORTED}"]')
    expect(imported).to_contain_text("tokens · INT64 · [-1,\u00a03] · range [0, 9]")
    expect(imported).to_contain_text("score: no, yes (the value is P(yes))")
    expect(imported).to_contain_text("a plain ONNX import has no reference")
    expect(imported).not_to_contain_text("Test metrics")  # it has none
    assert problems == []


def test_an_imported_model_is_tried_with_a_request_made_from_its_metadata(page, mixed, repository, problems):
    folder = latest_version(IMPORTED, repository)
    card = read_card(folder)
    page.goto(mixed + "/")
    request, send, answer = try_controls(page)

    # The request on offer is the card's signature, and the service takes it as it stands.
    offered = json.loads(request.input_value())
    assert offered == example_request(card)
    assert offered["inputs"][0]["data"] == [IMPORTED_RANGES["tokens"][0]] * 3
    status, direct = post(mixed, f"/v2/models/{IMPORTED}/infer", request.input_value())
    assert status == 200, direct

    send.click()
    expect(answer).to_have_value(re.compile(r'"outputs"'))
    expect_answer(json.loads(answer.input_value()), oracle(folder, offered), card)
    expect(answer).to_have_attribute("readonly", "")

    # Edited by keyboard: new data, Tab to Send, Enter.
    edited = {"inputs": [
        {"name": "tokens", "datatype": "INT64", "shape": [2, 3], "data": [[3, 7, 1], [0, 8, 1]]},
        {"name": "numbers", "datatype": "FP32", "shape": [2, 2], "data": [[0.25, -1.5], [-2.0, 0.125]]}]}
    request.fill(json.dumps(edited, indent=2))
    request.focus()
    page.keyboard.press("Tab")
    expect(send).to_be_focused()
    page.keyboard.press("Enter")
    expect(answer).to_have_value(re.compile(r'"shape": \[2, 1\]'))
    expected = oracle(folder, edited)
    assert expected["flag"].any() and not expected["flag"].all()  # both answers of the flag
    expect_answer(json.loads(answer.input_value()), expected, card)
    assert problems == []

    # Made invalid: the service's own error is shown, in words, for each.
    out_of_range = json.dumps({"inputs": [{**edited["inputs"][0], "data": [3, 99, 1, 0, 0, 0]},
                                          edited["inputs"][1]]})
    for text, why in [(out_of_range, "outside the input's range [0, 9]"), ('{"inputs": [', "not valid JSON"),
                      (json.dumps({"inputs": edited["inputs"][:1]}), "numbers")]:
        status, refused = post(mixed, f"/v2/models/{IMPORTED}/infer", text)
        assert status == 400 and why in refused["error"], refused
        request.fill(text)
        request.press("Control+Enter")
        expect(answer).to_have_value(re.compile(re.escape(refused["error"])))
        expect(answer).to_have_value(
            re.compile(f"^The service answered 400 to POST /v2/models/{IMPORTED}/infer"))
        expect(answer).to_have_class(re.compile(r"\bfailed\b"))
    # the only complaints of the browser are the 400 answers themselves
    assert problems and all("status of 400" in problem for problem in problems), problems


def test_the_panels_work_beside_an_imported_model_and_the_screenshot(page, mixed, repository, problems):
    page.goto(mixed + "/")
    for row, col in ONE:
        cell(page, row, col).click()
    probabilities = infer(mixed, "digits", one_pixels())
    expect(page.locator("#digit-label")).to_have_text("1")
    expect(page.locator("#digit-probability")).to_have_text(shown_percent(probabilities.max()))
    expect(page.locator("#digit-net circle")).to_have_count(
        sum(layer["units"] for layer in read_card(latest_version("digits", repository))["forward"]["layers"]))

    card = read_card(latest_version("demand", repository))
    marketing = page.get_by_role("slider", name=re.compile("^Marketing"))
    marketing.focus()
    marketing.press("End")
    expect_demand(page, mixed, demand_values(page, card))

    request, send, answer = try_controls(page)
    send.click()
    expect(answer).to_have_value(re.compile(r'"outputs"'))
    assert problems == []

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
