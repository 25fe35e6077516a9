"""The driftloop view in the Airflow UI, in a real headless Chromium against the embedded stack.

An operator signs in through Airflow's own login page, opens the view from the nav bar and sees
the champion, the canary's step and weights, the drift history and the feedback written to the
lake; an admin's action becomes a DAG run through the REST API; a viewer sees the same page but
cannot act — the buttons are disabled, and a forced call is refused by Airflow (403).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from driftloop.config import Settings
from driftloop.stack import AirflowStack
from tests.models import register_model
from tests.overview_data import DRIFT_SHARES, seed_drift, seed_feedback, seed_rollout

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(
    os.environ.get("DRIFTLOOP_TEST_CHROMIUM", REPO / ".tools/chromium/bin/chromium-headless-shell")
)
README_SCREENSHOT = REPO / "plugins/driftloop_view/screenshot.png"
ACTION_BUTTONS = "button[data-action]"
# the screen of the README's screenshot: the view down to the alias history without scrolling
VIEWPORT = {"width": 1280, "height": 1480}
LINEAGE = {"lineage.features_version": "12", "lineage.code_revision": "3932ba0", "optuna.study": "fraud-ui"}
UI_TIMEOUT_MS = 60_000  # two busy cores: the first page load compiles the UI's bundle


@pytest.fixture(scope="module")
def view_settings(tmp_path_factory) -> Settings:
    """A registry with a champion and a challenger, a canary at 50 %, drift windows, feedback."""
    from driftloop.registry import Registry

    settings = Settings(data_dir=tmp_path_factory.mktemp("ui-view") / "data")
    registry = Registry(settings)
    versions = {}
    for alias, seed, trigger in (("champion", 0, "schedule"), ("challenger", 1, "drift")):
        version = register_model(settings, "good", seed=seed)
        # the lineage a retrain tags its version with (see retraining.register_version)
        registry.tag_version(version, LINEAGE | {"trigger": trigger, "optuna.trial": str(seed + 3)})
        registry.move_alias(alias, version, actor="train_model", run_key=f"ui-{alias}", reason="gate passed")
        versions[alias] = version
    champion, challenger = versions["champion"], versions["challenger"]
    now = datetime.now(UTC)  # the view shows the recent past: feedback of the last 7 days
    seed_rollout(settings, stable=champion, canary=challenger, now=now)
    seed_drift(settings, champion, now=now)
    seed_feedback(settings, now=now)
    return settings


@pytest.fixture(scope="module")
def stack(view_settings) -> Iterator[AirflowStack]:
    """The four Airflow components with the checkout's plugins/ (module scope: ~1.4 GiB)."""
    with AirflowStack(view_settings, job_schedules=False, echo=print) as running:
        running.wait_for_dags("train_model", "control_rollout", "review_challenger")
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"no headless Chromium at {CHROMIUM}: run `make setup` (include/ops/install-chromium.sh)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


def open_view(browser, stack: AirflowStack, user: str):
    """Sign in as ``user`` on Airflow's login page and open the driftloop entry of the nav bar.

    Returns the browser context, the page and the view's frame, once its data has loaded.
    """
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{stack.base_url}/")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(stack.credentials()[user])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="driftloop").click()
    page.wait_for_url("**/plugin/driftloop**")
    view = page.frame_locator("iframe[title=driftloop]")
    view.locator("body[data-loaded=true]").wait_for()
    return context, page, view


def dag_runs(stack: AirflowStack, dag_id: str) -> dict[str, dict]:
    body = stack.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})
    return {run["dag_run_id"]: run for run in body["dag_runs"]}


def test_the_view_shows_the_lake_and_registry_after_login(browser, stack, view_settings, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    context, page, view = open_view(browser, stack, "admin")
    try:
        client = MlflowClient(view_settings.tracking_uri)
        name = view_settings.registered_model
        champion = client.get_model_version_by_alias(name, "champion")
        challenger = client.get_model_version_by_alias(name, "challenger")

        assert view.locator("[data-testid=champion-version]").inner_text() == f"v{champion.version}"
        assert view.locator("[data-testid=challenger-version]").inner_text() == f"v{challenger.version}"
        # the local SQLite store has no UI: the run id is shown, not linked
        assert champion.run_id in view.locator("[data-testid=champion]").inner_text()
        assert view.locator("[data-testid=rollout-step]").inner_text() == "step 2 of 3"
        weights = view.locator("[data-testid=weights]").inner_text()
        assert f"stable v{champion.version} 50%" in weights
        assert f"canary v{challenger.version} 50%" in weights
        assert "120 of 200 canary requests so far" in view.locator("[data-testid=rollout]").inner_text()

        points = view.locator("[data-testid=drift-chart] circle.point")
        assert points.count() == len(DRIFT_SHARES)
        assert view.locator("[data-testid=drift-chart] circle.drifted").count() == sum(
            share >= view_settings.monitoring.share_of_drifted_features for share in DRIFT_SHARES
        )
        assert view.locator("[data-testid=feedback-false_positive] strong").inner_text() == "2"
        assert view.locator("[data-testid=feedback-false_negative] strong").inner_text() == "1"
        assert view.locator("[data-testid=feedback-rejected] strong").inner_text() == "1"
        assert "3932ba0" in view.locator("[data-testid=champion]").inner_text()  # lineage
        assert "features_version" in view.locator("[data-testid=challenger]").inner_text()
        assert view.locator("[data-testid=aliases] tbody tr").count() == 2

        page.screenshot(path=tmp_path / "driftloop-view.png")
        if os.environ.get("DRIFTLOOP_UPDATE_SCREENSHOT"):
            _save_readme_screenshot(tmp_path / "driftloop-view.png")

        # the Evidently report of the latest window, served by the view from the lake
        view.get_by_role("link", name="Evidently report").click()
        # (expect retries: the frame's old page answers until the report has replaced it)
        expect(page.frame_locator("iframe[title=driftloop]").locator("h1")).to_have_text("Data drift report")
    finally:
        context.close()


def _save_readme_screenshot(source: Path) -> None:
    """The README's picture of the view: cropped to the page, as a small palette PNG."""
    from PIL import Image

    with Image.open(source) as image:
        small = image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
        small.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(README_SCREENSHOT, optimize=True)
    shutil.copy(source, source.with_name("driftloop-view-full.png"))


@pytest.mark.parametrize(
    ("button", "reason_field", "dag_id", "conf"),
    [
        ("Retrain", "retrain-reason", "train_model", {}),
        ("Abort", "control-reason", "control_rollout", {"action": "abort"}),
        ("Approve", "review-reason", "review_challenger", {"decision": "approve"}),
    ],
)
def test_an_admin_action_creates_a_dag_run_as_that_user(
    browser, stack, view_settings, button, reason_field, dag_id, conf
):
    from mlflow import MlflowClient

    if dag_id == "review_challenger":  # the review names the challenger it decides on
        challenger = MlflowClient(view_settings.tracking_uri).get_model_version_by_alias(
            view_settings.registered_model, "challenger"
        )
        conf = {**conf, "version": str(challenger.version)}
    context, _page, view = open_view(browser, stack, "admin")
    try:
        before = dag_runs(stack, dag_id)
        reason = f"{button.lower()} from the driftloop view"
        view.locator(f"#{reason_field}").fill(reason)
        view.get_by_role("button", name=button, exact=True).click()
        run_id = view.locator("[data-testid=run-link]").inner_text()
    finally:
        context.close()

    created = dag_runs(stack, dag_id)
    assert set(created) - set(before) == {run_id}
    run = created[run_id]
    assert run["conf"] == {**conf, "reason": reason}
    assert run["run_type"] == "manual"
    assert run["triggering_user_name"] == "admin"


def test_a_viewer_sees_the_view_but_cannot_act(browser, stack):
    context, page, view = open_view(browser, stack, "viewer")
    try:
        assert view.locator("[data-testid=champion-version]").inner_text().startswith("v")
        buttons = view.locator(ACTION_BUTTONS)
        assert buttons.count() == 5
        for index in range(buttons.count()):
            assert buttons.nth(index).is_disabled()
            assert "your role cannot trigger" in buttons.nth(index).get_attribute("title")

        runs_before = dag_runs(stack, "train_model")
        # a viewer who forces the call from the page (same session cookie) is refused by Airflow
        frame = next(f for f in page.frames if f.url.endswith("/driftloop/"))
        status = frame.evaluate(
            """async () => (await fetch('/api/v2/dags/train_model/dagRuns', {
                method: 'POST', credentials: 'same-origin',
                headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({logical_date: null, conf: {reason: 'viewer forces it'}}),
            })).status"""
        )
        assert status == 403
        assert dag_runs(stack, "train_model") == runs_before
    finally:
        context.close()


def test_the_view_and_its_data_need_a_signed_in_user(stack):
    with httpx.Client(base_url=stack.base_url, trust_env=False, timeout=30) as anonymous:
        page = anonymous.get("/driftloop/", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"].startswith("/auth/login")
        assert anonymous.get("/driftloop/api/overview").status_code == 401
        assert anonymous.get("/driftloop/reports/drift/index.html").status_code == 401


def test_only_reports_under_the_lake_reports_folder_are_served(stack, view_settings):
    headers = {"Authorization": f"Bearer {stack.token('viewer')}"}
    lake = Path(view_settings.lake_uri)
    (lake.parent / "secret.html").write_text("<p>not a report</p>")
    with httpx.Client(base_url=stack.base_url, trust_env=False, timeout=30, headers=headers) as client:
        overview = client.get("/driftloop/api/overview").json()
        path = overview["drift"][-1]["report_path"]
        served = client.get(f"/driftloop/reports/{path}")
        assert served.status_code == 200
        assert "Data drift report" in served.text
        # the report runs sandboxed: its scripts cannot use the viewer's Airflow session
        assert served.headers["content-security-policy"].startswith("sandbox allow-scripts")
        for sneaky in ("..%2F..%2Fsecret.html", "drift/..%2F..%2F..%2Fsecret.html", "%2Fetc%2Fpasswd"):
            assert client.get(f"/driftloop/reports/{sneaky}").status_code == 404, sneaky
