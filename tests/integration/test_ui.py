"""The ingress's `/ui` status page in a real headless Chromium (Debian's chromium + chromium-driver,
which `make test` installs): the live values it renders match `/v1/status`, and its form asks the
service for a recommendation and lists what came back (or the API's error)."""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _text(drv, css: str) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.CSS_SELECTOR, css).text.strip()


def _wait(drv, cond, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.2).until(lambda d: cond(d))


def test_status_page_renders_live_values_in_chromium(serving, browser):
    from selenium.webdriver.common.by import By

    http, reg, cfg = serving
    users = [int(u) for u in np.load(reg.fetch("embeddings") / "user_ids.npy")[40:43]]
    for u in users:  # some traffic, so hit rates and levels have something to show
        for _ in range(2):
            assert (
                http.post("/v1/recommend", json={"user_id": u, "k": 5}, headers={"x-session-id": str(u)}).status_code
                == 200
            )

    # without a key the page asks for one (the status needs the admin scope)
    browser.get(f"{http.base_url}/ui")
    assert browser.title == "recserve status"
    _wait(browser, lambda d: "enter an API key" in _text(d, "#updated"))
    assert _text(browser, "#level") in ("…", "...", "\u2026")
    # the key in the URL's fragment (never sent to the server) fills it in
    key = http.headers["authorization"].split(" ", 1)[1]
    browser.get(f"{http.base_url}/ui#key={key}")
    _wait(browser, lambda d: _text(d, "#level").isdigit() and d.find_elements(By.CSS_SELECTOR, "#versions tr"))
    st = http.get("/v1/status").json()

    assert int(_text(browser, "#level")) == st["degradation_level"]
    shown = {
        tr.get_attribute("data-dependency"): tr.find_elements(By.TAG_NAME, "td")[1].text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#breakers tr[data-dependency]")
    }
    assert shown == {d: b["state"] for d, b in st["breakers"].items()}
    assert set(shown) >= {"vector_index", "ranker", "bandit", "explainer", "feature_store", "event_log"}
    versions = {
        tr.get_attribute("data-component"): tr.find_element(By.CSS_SELECTOR, ".version").text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#versions tr")
    }
    assert versions["ranker"] == reg.resolve("ranker") and versions["index"] == reg.resolve("index")
    assert versions == st["model_versions"]
    assert int(_text(browser, "#lag")) >= 0
    assert int(_text(browser, "#index-shards")) == st["index"]["shards"]
    # the L1 cache saw a hit for each user's second request: a rate above 0 is on the page
    l1 = _text(browser, "#cache-L1 .rate")
    assert l1.endswith("%") and float(l1[:-1]) > 0, l1
    assert browser.find_elements(By.CSS_SELECTOR, "#cache-context") and browser.find_elements(
        By.CSS_SELECTOR, "#cache-explanation"
    )
    # the vector count arrives within the ingress's 10 s refresh
    _wait(browser, lambda d: _text(d, "#index-vectors").isdigit(), timeout=30)
    assert int(_text(browser, "#index-vectors")) >= len(users)

    # the form: the same request the client just made, so the user's cached list comes back
    u = users[0]
    want = [
        i["item_id"]
        for i in http.post("/v1/recommend", json={"user_id": u, "k": 5}, headers={"x-session-id": str(u)}).json()[
            "items"
        ]
    ]
    box = browser.find_element(By.ID, "user-id")
    box.clear()
    box.send_keys(str(u))
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("5")
    browser.find_element(By.ID, "go").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result-items li")) == 5)
    got = [int(li.get_attribute("data-item-id")) for li in browser.find_elements(By.CSS_SELECTOR, "#result-items li")]
    assert got == want
    assert "cache hit" in _text(browser, "#result-meta")
    # each item shown by its title and category from the catalogue (GET /v1/items), not its id alone
    entries = {e["item_id"]: e for e in http.get("/v1/items", params={"ids": want}).json()["items"]}
    for li in browser.find_elements(By.CSS_SELECTOR, "#result-items li"):
        e = entries[int(li.get_attribute("data-item-id"))]
        assert e["title"] and li.find_element(By.CSS_SELECTOR, ".title").text == e["title"]
        assert li.get_attribute("data-category") == e["category"] and e["category"] in li.text

    # bad input: the API's 422 message is shown, nothing listed
    k.clear()
    k.send_keys("500")
    browser.find_element(By.ID, "go").click()
    _wait(browser, lambda d: _text(d, "#result-error"))
    assert _text(browser, "#result-error").startswith("422") and "k" in _text(browser, "#result-error")
    assert not browser.find_elements(By.CSS_SELECTOR, "#result-items li")

    # the page keeps refreshing: the timestamp moves
    first = _text(browser, "#updated")
    time.sleep(2.5)
    assert _text(browser, "#updated") != first or "updated" in first

    # a running experiment's arms appear, with their figures and status
    import redis

    from recserve.config import ExperimentConfig
    from recserve.serving import experiments as ex

    assert _text(browser, "#experiment-name") == "none running"
    exp = ExperimentConfig.model_validate(
        {"arms": {"control": {"share": 0.5}, "lessexplore": {"share": 0.5, "bandit_share": 0.1}}}
    )
    r = redis.Redis.from_url(cfg.redis_url)
    ex.start(r, cfg.model_copy(update={"experiments": {"ui-exp": exp}}), reg, "ui-exp")
    try:
        for uu in users:
            http.post("/v1/recommend", json={"user_id": uu, "k": 6})
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#experiment tr[data-arm]")) == 2)
        assert _text(browser, "#experiment-name").startswith("ui-exp (control control)")
        rows = {
            tr.get_attribute("data-arm"): tr.text
            for tr in browser.find_elements(By.CSS_SELECTOR, "#experiment tr[data-arm]")
        }
        assert set(rows) == {"control", "lessexplore"} and "bandit_share" in rows["lessexplore"]
        assert all("running" in t for t in rows.values())
        # the charts of the last hour: the answers above drawn from the replica's own counters
        rate = browser.find_element(By.ID, "chart-rate")
        assert int(rate.get_attribute("data-points")) >= 1 and rate.find_elements(By.TAG_NAME, "polyline")
        assert int(browser.find_element(By.ID, "chart-levels").get_attribute("data-points")) >= 1
        # the experiment's reward per shown item over time: a point per guardrail check (every 5 s)
        for uu in users:
            ans = http.post("/v1/recommend", json={"user_id": uu, "k": 6}).json()
            fb = {"request_id": ans["request_id"], "item_id": ans["items"][0]["item_id"], "reward": 1.0}
            assert http.post("/v1/feedback", json=fb).status_code == 200
        # the replica follows the new experiment within its refresh; until then the chart may still hold the
        # points of an experiment an earlier test ended, so wait for the legend to name this one
        _wait(
            browser,
            lambda d: (
                "ui-exp" in _text(d, "#experiment-legend")
                and int(d.find_element(By.ID, "chart-experiment").get_attribute("data-points") or 0) >= 1
            ),
            timeout=40,
        )
        assert "ui-exp" in _text(browser, "#experiment-legend")
    finally:
        ex.stop(r)
        r.close()
