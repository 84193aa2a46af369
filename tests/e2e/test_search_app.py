"""The search page in headless Chromium: both columns, photos, filters, links, and what it refuses.

A real `python -m protocol.search_app` process serves the tiny pipeline's store (a private
copy where @champion is the candidate, as a passing scoreboard would make it); Playwright
drives Debian's chromium (scripts/install_chromium.sh), never a downloaded browser.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from protocol.tracking import registry
from protocol.tracking.artifact_cache import CACHE_ENV, resolve_input
from protocol.tracking.pyfunc import logged_model_id
from protocol.tracking.runs import REGISTERED_MODEL
from tests.e2e.conftest import ROOT, copy_store, pipeline_env
from tests.e2e.test_serve import free_port, wait_until_up

pytestmark = pytest.mark.e2e
UI_BASE = "http://127.0.0.1:5999"  # not the default: the links must follow the parameter
MAX_IMAGE_MB = 0.25
K = 6
QUERY = "striped cotton tee with short sleeves"
QUERY_SAYS = {"category": "tees", "material": "cotton", "pattern": "striped", "sleeve": "short"}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: run scripts/install_chromium.sh (as root; Debian's package)")
    return path


@pytest.fixture(scope="module")
def store(pipeline_store, tmp_path_factory):
    """(env, the version @champion names) on a private copy of the pipeline's store."""
    uri = copy_store(Path(pipeline_store.uri[len("sqlite:///"):]), tmp_path_factory.mktemp("search"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    candidate = registry.version_by_alias("candidate")
    registry.set_alias("champion", candidate)
    yield pipeline_env(uri), candidate
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def catalog(store) -> pd.DataFrame:
    """The champion's packed catalog rows: what its filters choose from."""
    _, champion = store
    model_dir = resolve_input(f"models:/{logged_model_id(champion)}", "champion")
    return pd.read_parquet(model_dir / "artifacts" / "catalog" / "catalog_meta.parquet")


def search_app(env: dict, port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "protocol.search_app", "--port", str(port), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def app(store):
    env, _ = store
    port = free_port()
    proc = search_app(env, port, "--mlflow-ui", UI_BASE, "--max-image-mb", str(MAX_IMAGE_MB))
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1024, "height": 760})
    page.goto(app)
    yield page
    page.close()


def searched(page, before: int) -> None:
    """Wait for the search after `before` searches to be drawn, and every photo on the page to load."""
    page.wait_for_function(f"document.querySelector('#status').dataset.searches > {before}")
    page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete)")


def searches(page) -> int:
    return int(page.get_attribute("#status", "data-searches"))


def column_items(page, side: str) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        f".column[data-side={side}] .card",
        "cards => cards.map(c => ({item: c.dataset.item, category: c.dataset.category, shared: c.dataset.shared,"
        " width: c.querySelector('img').naturalWidth}))")


def text_search(page, query: str = QUERY, k: int = K) -> None:
    before = searches(page)
    page.fill("#k", str(k))
    page.fill("#q", query)
    page.click("#go")
    searched(page, before)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_a_text_and_an_image_query_fill_both_columns_with_k_loaded_photos(page, app, catalog, tmp_path):
    text_search(page)
    chips = page.eval_on_selector_all("#grounded .chip", "chips => chips.map(c => c.textContent)")
    assert chips == [f"{name}: {value}" for name, value in QUERY_SAYS.items()]
    rows = catalog.set_index("item_id").rename(columns={"category2": "category"})
    marked = 0
    for side in ("baseline", "champion"):
        items = column_items(page, side)
        assert len(items) == K and all(i["width"] > 0 for i in items), (side, items)
        for i in items:  # a match is marked with exactly the query's attributes it has
            shares = [name for name, value in QUERY_SAYS.items() if rows.at[i["item"], name] == value]
            assert i["shared"] == ",".join(shares), (side, i)
            marked += bool(shares)
    assert marked > 0  # the tiny catalog is mostly cotton tees: some result shares something
    page.screenshot(path=tmp_path / "search_page.png")

    # An image query: the photo of the first zero-shot result, as the page serves it.
    item = column_items(page, "baseline")[0]["item"]
    status, photo = get(f"{app}/images/baseline/{item}")
    assert status == 200
    before = searches(page)
    page.set_input_files("#image", files=[{"name": "query.png", "mimeType": "image/png", "buffer": photo}])
    searched(page, before)
    for side in ("baseline", "champion"):
        items = column_items(page, side)
        assert len(items) == K and all(i["width"] > 0 for i in items), (side, items)
        assert items[0]["item"] == item  # the photo finds its own item first
    assert page.inner_text("#status") == f"photo search, k={K}"
    page.screenshot(path=tmp_path / "search_page_image.png")


def test_a_filter_narrows_both_columns(page, catalog, tmp_path):
    text_search(page, k=K)
    unfiltered = {side: column_items(page, side) for side in ("baseline", "champion")}
    categories = [i["category"] for i in unfiltered["champion"]]
    # Not the first result's category, so the filter must change what is shown; one the results have, if any.
    others = [c for c in categories if c != categories[0]]
    value = others[0] if others else catalog["category2"][catalog["category2"] != categories[0]].mode()[0]
    before = searches(page)
    page.select_option(".filter[data-name=category]", value)
    searched(page, before)
    expected = min(K, int((catalog["category2"] == value).sum()))
    for side, was in unfiltered.items():
        items = column_items(page, side)
        assert len(items) == expected and all(i["width"] > 0 for i in items), (side, value, items)
        assert {i["category"] for i in items} == {value}
        kept = [i["item"] for i in was if i["category"] == value]  # the ranking is narrowed, not redone
        assert [i["item"] for i in items][:len(kept)] == kept
        depth = page.inner_text(f".column[data-side={side}] .depth")
        assert depth == f"{expected} of the top {len(catalog)} (of {len(catalog)}) pass the filters"
    assert [i["item"] for i in column_items(page, "champion")] != [i["item"] for i in unfiltered["champion"]]
    page.screenshot(path=tmp_path / "search_page_filtered.png")


def test_a_non_picture_upload_gets_a_clear_message(page):
    page.set_input_files("#image", files=[{"name": "notes.txt", "mimeType": "image/png",
                                           "buffer": b"these are notes, not a photo"}])
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == ("the upload is not a picture (UnidentifiedImageError); "
                                         "choose a JPEG, PNG or WebP photo")
    assert page.get_attribute("#status", "data-state") == "error"
    assert page.locator(".card").count() == 0


@pytest.mark.parametrize("query, body, message", [
    ("q=shorts&colour=red", None, "unknown parameter(s) ['colour']"),
    ("q=shorts&k=0", None, "k='0': give a whole number of results from 1 to 100"),
    ("q=shorts&k=ten", None, "k='ten'"),
    ("q=shorts&material=plaid", None, "material='plaid' is not a value of the catalogs"),
    ("k=3", None, "parameter 'q' (the query text) is missing or empty"),
    ("q=a&q=b", None, "['q'] given more than once"),
    ("k=3", b"", "no image bytes in the request body"),
    ("k=3", b"\0" * int(MAX_IMAGE_MB * 2**20 + 1), "the upload is larger than 0.25 MiB"),
    ("k=3&q=shorts", b"GIF89a", "give a query text or an image, not both"),
])
def test_bad_input_is_answered_with_400_and_the_reason(app, query, body, message):
    import json

    request = urllib.request.Request(f"{app}/api/search?{query}", data=body,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            pytest.fail(f"HTTP {resp.status} for {query}")
    except urllib.error.HTTPError as e:
        assert e.code == 400 and message in json.loads(e.read())["detail"]
    status, _ = get(f"{app}/api/search?q=shorts&k=3")  # the same parameters, well formed, are answered
    assert status == 200


def test_links_open_the_items_row_and_the_models_run_and_version(page, app, store, catalog):
    _, champion = store
    run = mlflow.get_run(champion.run_id)
    column = page.locator(".column[data-side=champion]")
    assert column.locator(".run-link").get_attribute("href") == \
        f"{UI_BASE}/#/experiments/{run.info.experiment_id}/runs/{champion.run_id}"
    assert column.locator(".version-link").get_attribute("href") == \
        f"{UI_BASE}/#/models/{REGISTERED_MODEL}/versions/{champion.version}"

    text_search(page)
    first = column_items(page, "champion")[0]["item"]
    page.click(f".column[data-side=champion] .card[data-item='{first}'] a")
    page.wait_for_load_state()
    assert page.inner_text("h1") == first
    row = catalog.set_index("item_id").loc[first]
    description = page.locator("tr", has=page.locator("th", has_text="description")).locator("td")
    assert description.inner_text() == row["description"]
    assert page.evaluate("document.querySelector('img.photo').naturalWidth") > 0
    assert get(f"{app}/items/champion/no-such-item")[0] == 404
    assert get(f"{app}/images/champion/..%2F..%2Fetc%2Fpasswd")[0] == 404  # ids only, never a path


def test_the_page_refuses_to_start_on_a_missing_version(store, monkeypatch, capsys):
    """`python -m protocol.search_app` exits with main()'s status (sys.exit(main())): main() here, in this process."""
    import uvicorn

    from protocol.search_app.__main__ import main

    env, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv(CACHE_ENV, env[CACHE_ENV])

    def serve(*args, **kwargs):  # if main() did not refuse, it would serve here until stopped: fail instead
        raise AssertionError("the page started serving on a missing version")

    monkeypatch.setattr(uvicorn, "run", serve)
    status = main(["--port", str(free_port()), "--version", "@nosuch"])
    err = capsys.readouterr().err
    assert status == 1 and "search_app: error:" in err and "has no alias @nosuch" in err, err


@pytest.mark.parametrize("spec", ["champion", "/5", "@two words", "models:/another-model@champion"])
def test_a_version_that_is_neither_an_alias_nor_a_number_is_refused_before_any_lookup(spec):
    from protocol.search_app.sides import registered_version

    with pytest.raises(ValueError, match="give an alias .* a version number"):
        registered_version(spec)
