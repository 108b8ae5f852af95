"""The review page (backend/ui, NiiVue) in real headless Chromium against a live API + worker.

A phantom case is uploaded and segmented through the API; then, in the browser: sign in, open the
case from the worklist, check NiiVue holds the entropy heatmap, click a region (the crosshair moves to
its centre), paint a stroke, save, and check the correction reached the API on the image's grid.

Needs Debian's ``chromium`` (``apt-get install chromium``; never a downloaded browser), the NiiVue
bundle (``make ui``) and python ``playwright``. Without them the tests skip, except in CI (CI=true),
where they fail. Screenshots go to test-artifacts/review-page/. ``DUALSEG_TEST_UPDATE_DOCS_SCREENSHOT=1``
also writes docs/review-page.png (``DUALSEG_TEST_UI_PACKAGE=<model package>`` picks the model, e.g. a
trained one, so the picture shows a real mask and heatmap; see docs/review-page.md).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.helpers import ROOT, LiveStack, blob_volume, make_tiny_package, oblique_affine, write_nifti

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
NIIVUE_BUNDLE = ROOT / "backend" / "ui" / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js"
ARTIFACTS = ROOT / "test-artifacts" / "review-page"
DOCS_SHOT = ROOT / "docs" / "review-page.png"
# DUALSEG_TEST_ names survive the isolated environment of tests/conftest.py
UPDATE_DOCS = os.environ.get("DUALSEG_TEST_UPDATE_DOCS_SCREENSHOT") == "1"
UI_PACKAGE = os.environ.get("DUALSEG_TEST_UI_PACKAGE")
VIEWPORT = {"width": 1280, "height": 800}


def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _need(what: str) -> None:
    """Skip with the reason here; fail in CI, which must provide the browser and the bundle."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} — CI must provide it (.ci/run installs chromium and npm; "
                    "`make setup` runs `make ui`)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = _chromium()
    if path is None:
        _need("Debian's chromium is not installed (apt-get install -y chromium)")
    if not NIIVUE_BUNDLE.exists():
        _need(f"the NiiVue bundle is missing ({NIIVUE_BUNDLE.relative_to(ROOT)}): run `make ui`")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need("python playwright is not installed (pip install -e '.[dev]')")
    assert path is not None
    return path


def phantom(shape: tuple[int, int, int]) -> np.ndarray:
    """The test ellipsoid plus a second, smaller bright blob (the docs' demo model misses it: region #2)."""
    image, _ = blob_volume(shape, seed=3)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    centre = np.array([0.78, 0.3, 0.5]) * np.array(shape)
    small = ((grid - centre[:, None, None, None]) ** 2).sum(0) < (0.12 * shape[0]) ** 2
    return np.where(small, image + 200, image).astype(np.float32)


@pytest.fixture(scope="module")
def stack(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("review")
    s = LiveStack(tmp / "var")
    pkg = Path(UI_PACKAGE) if UI_PACKAGE else make_tiny_package(tmp / "pkg", version="tiny-ui-1")
    out = s.cli("models", "import", str(pkg), "--activate")
    assert "imported" in out.stdout, out.stderr
    s.start("api", "worker")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def case(stack: LiveStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The phantom file (oblique affine: the hard case for "same grid"), and an unsegmented case."""
    tmp = tmp_path_factory.mktemp("review-case")
    if UPDATE_DOCS:
        shape: tuple[int, int, int] = (64, 64, 40)
        affine = np.diag([1.0, 1.0, 1.5, 1.0])
        affine[:3, 3] = [-30.0, -25.0, -20.0]
    else:
        shape, affine = (40, 36, 24), oblique_affine()
    path = write_nifti(tmp / "phantom.nii.gz", phantom(shape), affine)
    with stack.client("annotator") as client:
        r = client.post("/api/v1/cases", files=[("files", ("second.nii.gz", path.read_bytes()))],
                        data={"segment": "false"})
        assert r.status_code == 202, r.text
    return {"path": path, "tmp": tmp, "shape": shape, "affine": affine, "other": r.json()["case_id"]}


def _results(stack: LiveStack, case_id: str, tmp: Path) -> dict[str, Any]:
    """What the API serves for a segmented case: image, mask, entropy (nibabel) and the regions."""
    out: dict[str, Any] = {}
    with stack.client("annotator") as client:
        urls = (("image", "image"), ("mask", "mask?format=nifti"), ("entropy", "uncertainty?format=nifti"))
        for name, url in urls:
            r = client.get(f"/api/v1/cases/{case_id}/{url}")
            assert r.status_code == 200, r.text
            (tmp / f"{name}.nii.gz").write_bytes(r.content)
            out[name] = nib.load(str(tmp / f"{name}.nii.gz"))
        out["regions"] = client.get(f"/api/v1/cases/{case_id}/regions").json()["regions"]
    return out


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


@pytest.fixture
def page(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport=VIEWPORT)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(30_000)
        yield pg
        context.close()
        browser.close()
        assert errors == [], errors


def _sign_in(page: Any, stack: LiveStack, role: str = "annotator") -> None:
    page.goto(stack.base + "/")
    assert page.url.endswith("/ui/"), page.url
    page.wait_for_selector("#login-form")
    page.fill("#token-input", stack.token(role))
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("li.case")


def test_ui_static_files_need_no_auth_and_api_still_does(stack: LiveStack) -> None:
    r = httpx.get(stack.base + "/", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/ui/"
    page = httpx.get(stack.base + "/ui/")
    assert page.status_code == 200 and 'src="app.js"' in page.text
    js = httpx.get(stack.base + "/ui/vendor/niivue/index.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "Niivue" in js.text and "export {" in js.text
    assert httpx.get(stack.base + "/api/v1/cases").status_code == 401


def test_review_page_in_browser_region_paint_save(stack: LiveStack, case: dict[str, Any], page: Any) -> None:
    t0 = time.monotonic()
    _sign_in(page, stack)
    print(f"\nsigned in: {time.monotonic() - t0:.1f} s")
    # upload from the page: upload progress, then the job's progress while it segments, then the case
    page.set_input_files("#upload-input", str(case["path"]))
    page.click("#upload-btn")
    page.wait_for_function("window.dualseg.state.caseId !== null")
    cid = page.evaluate("window.dualseg.state.caseId")
    assert page.eval_on_selector("#upload-progress", "e => e.value") == 100
    assert "segmentation queued" in page.inner_text("#upload-text")
    # the job overlay shows queue position / stage and progress (unless the worker was already done)
    page.wait_for_function("!document.querySelector('#job-overlay').hidden || window.dualseg.state.ready")
    if page.locator("#job-overlay").is_visible():
        assert "%" in page.inner_text("#job-text")
        _shot(page, "1-uploaded-segmenting")
    page.wait_for_function("window.dualseg.state.ready === true", timeout=300_000)
    assert page.locator("#job-overlay").is_hidden()
    print(f"segmented: {time.monotonic() - t0:.1f} s")
    res = _results(stack, cid, case["tmp"])

    # the worklist: most uncertain first, with state and model version
    page.click("#refresh-btn")
    row = page.locator(f"li.case[data-case-id='{cid}']")
    row.locator(".badge.succeeded").wait_for()
    if not UI_PACKAGE:
        assert "tiny-ui-1" in row.inner_text()
    assert "selected" in (row.get_attribute("class") or "")
    with stack.client("annotator") as client:
        listing = client.get("/api/v1/cases", params={"sort": "uncertainty"}).json()
    api_order = [c["case_id"] for c in listing["items"]]
    assert page.eval_on_selector_all("li.case", "els => els.map((e) => e.dataset.caseId)") == api_order

    # the heatmap is loaded in NiiVue, on the image's grid, with the server's values
    st = page.evaluate("window.dualseg.viewer.state()")
    names = [v["name"] for v in st["volumes"]]
    assert names == ["image.nii.gz", "entropy.nii.gz"], names
    heat = st["volumes"][1]
    assert heat["colormap"] == "warm" and heat["opacity"] > 0 and heat["cal_max"] == 1
    assert heat["dims"][1:4] == list(case["shape"]) == st["volumes"][0]["dims"][1:4]
    ent = np.asarray(res["entropy"].dataobj, dtype=np.float32)
    probe = [int(n // 3) for n in case["shape"]]
    value = page.evaluate("([i, j, k]) => window.dualseg.nv.volumes[1].getValue(i, j, k)", probe)
    assert value == pytest.approx(float(ent[tuple(probe)]), abs=1e-5)
    assert st["drawing"] is True  # the label layer starts as the model's mask
    mask = np.asarray(res["mask"].dataobj)
    drawn = page.evaluate("(() => { let n = 0;"
                          " for (const v of window.dualseg.nv.drawBitmap) n += v > 0; return n; })()")
    assert drawn == int((mask > 0).sum())
    assert page.locator("#region-list li.region").count() == len(res["regions"]) >= 1
    print(f"case shown: {time.monotonic() - t0:.1f} s")

    # move the crosshair away (a click on a 2D tile in navigate mode), then click region #1: it jumps
    # to the region's centre in every plane
    box = page.locator("#gl").bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(cx - box["width"] * 0.2, cy - box["height"] * 0.2)
    before = page.evaluate("window.dualseg.viewer.crosshair()")
    region = res["regions"][0]
    page.click("#region-list li.region >> nth=0")
    after = page.evaluate("window.dualseg.viewer.crosshair()")
    assert np.linalg.norm(np.subtract(after["mm"], before["mm"])) > 1.0, (before, after)
    assert after["mm"] == pytest.approx(region["centroid_mm"], abs=0.05)
    vox = page.evaluate("(() => { const nv = window.dualseg.nv;"
                        " return Array.from(nv.back.mm2vox(nv.frac2mm(nv.scene.crosshairPos))); })()")
    assert np.abs(np.subtract(vox, region["centroid_voxel"])).max() <= 1.0, (vox, region["centroid_voxel"])
    assert "selected" in (page.locator("#region-list li.region >> nth=0").get_attribute("class") or "")
    _shot(page, "2-case-view")
    if UPDATE_DOCS:
        DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_SHOT))
    page.keyboard.press("m")  # labels as outline (M cycles fill -> outline -> hidden)
    shown = "[window.dualseg.viewer.labels.mode, window.dualseg.nv.drawRimOpacity]"
    assert page.evaluate(shown) == ["outline", 1]
    _shot(page, "2b-outline")
    page.keyboard.press("m")
    page.keyboard.press("m")
    assert page.evaluate(shown)[0] == "fill"
    page.keyboard.press("n")  # next region (wraps around)
    assert page.evaluate("window.dualseg.state.regionIndex") == (1 % len(res["regions"]))
    page.click("button[data-view=axial]")

    # paint a stroke of label 1 with the pen (D, then 1), over background where the model said 0
    page.keyboard.press("d")
    page.keyboard.press("1")
    st = page.evaluate("window.dualseg.viewer.state()")
    assert st["drawingEnabled"] is True and st["penValue"] == 1 and st["tool"] == "pen"
    count = "(() => { let n = 0; for (const v of window.dualseg.nv.drawBitmap) n += v === 1; return n; })()"
    page.click("button[data-tool=erase]")  # clear a strip first so the stroke surely adds voxels
    y = cy + box["height"] * 0.15
    page.mouse.move(cx - box["width"] * 0.15, y)
    page.mouse.down()
    for i in range(1, 4):  # NiiVue joins successive pen positions with a line
        page.mouse.move(cx - box["width"] * 0.15 + i * box["width"] * 0.1, y)
    page.mouse.up()
    erased = page.evaluate(count)
    page.click("button[data-tool=pen]")
    page.mouse.move(cx - box["width"] * 0.1, y)
    page.mouse.down()
    for i in range(1, 3):
        page.mouse.move(cx - box["width"] * 0.1 + i * box["width"] * 0.1, y)
    page.mouse.up()
    painted = page.evaluate(count)
    assert painted > erased, (erased, painted)
    # Fill: a closed outline is filled; Z undoes it
    page.keyboard.press("f")
    top = cy - box["height"] * 0.3
    page.mouse.move(cx - box["width"] * 0.1, top)
    page.mouse.down()
    for dx, dy in ((0.1, 0.0), (0.0, 0.12), (-0.1, 0.0)):
        page.mouse.move(cx + box["width"] * dx, top + box["height"] * dy)
    page.mouse.up()
    filled = page.evaluate(count)
    assert filled > painted + 5, (painted, filled)
    page.keyboard.press("z")
    assert page.evaluate(count) == painted
    assert page.evaluate("window.dualseg.viewer.dirty") is True
    assert page.locator("#save-btn").is_enabled()
    print(f"painted: {time.monotonic() - t0:.1f} s")
    _shot(page, "3-painted")

    # save (S): the label map goes out as NIfTI on the image's own grid and affine; the page shows the
    # server's statistics. (Chromium does not expose Blob request bodies, so the bytes are re-exported
    # with the same function the save uses; the server's counts below tie them to what it received.)
    def is_put(r: Any) -> bool:
        return bool(r.request.method == "PUT" and r.url.endswith("/correction"))

    with page.expect_response(is_put) as resp_info:
        page.keyboard.press("s")
    assert resp_info.value.status == 201, resp_info.value.text()
    page.wait_for_selector("#save-result.ok")
    sent = bytes(page.evaluate("window.dualseg.viewer.exportLabels().then((b) => Array.from(b))"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "sent-correction.nii.gz"
    path.write_bytes(sent)
    img = nib.load(str(path))
    labels = np.asarray(img.dataobj)
    assert labels.shape == tuple(case["shape"]) and labels.dtype == np.uint8
    np.testing.assert_allclose(img.affine, res["image"].affine, atol=1e-4)
    np.testing.assert_allclose(img.affine, case["affine"], atol=1e-4)
    assert set(np.unique(labels)) <= {0, 1}
    changed = int((labels != mask).sum())
    assert changed > 0
    _shot(page, "4-saved")
    assert page.evaluate("window.dualseg.viewer.dirty") is False

    with stack.client("annotator") as client:
        history = client.get(f"/api/v1/cases/{cid}/corrections").json()
    assert len(history) == 1
    stats = history[0]["stats"]
    assert history[0]["author"] == "tests-annotator" and history[0]["source_format"] == "nifti"
    assert stats["voxels_changed"] == changed
    assert stats["voxels_added"] == int(((labels > 0) & (mask == 0)).sum())
    shown = page.inner_text("#save-result")
    assert f"{stats['voxels_changed']} vox" in shown and f"{stats['dice']:.4f}" in shown

    # the next-case shortcut follows the worklist (the other case has no segmentation: image only)
    page.keyboard.press("]")
    page.wait_for_function(f"window.dualseg.state.caseId === '{case['other']}' && window.dualseg.state.ready")
    assert page.locator("#region-list li.region").count() == 0
    assert [v["name"] for v in page.evaluate("window.dualseg.viewer.state()")["volumes"]] == ["image.nii.gz"]
    assert "no segmentation yet" in page.inner_text("#banner")
    elapsed = time.monotonic() - t0
    print(f"review page browser flow: {elapsed:.1f} s")


def test_review_page_tells_what_to_do_without_niivue_bundle(stack: LiveStack, case: dict[str, Any],
                                                             page: Any) -> None:
    page.route("**/ui/vendor/niivue/**", lambda route: route.fulfill(status=404, body="not found"))
    _sign_in(page, stack)
    banner = page.locator("#banner")
    banner.wait_for(state="visible")
    assert "make ui" in banner.inner_text()


def test_out_of_distribution_case_shows_banner_and_badge(stack: LiveStack, case: dict[str, Any],
                                                         page: Any) -> None:
    """A case its model flags as unlike its training data: an OOD badge in the worklist (first in the
    uncertainty order) and a warning banner when it is opened."""
    from models.inference.ood import FEATURES, fit_reference

    far = fit_reference([{f: 50.0 + i for f in FEATURES} for i in range(3)])
    pkg = make_tiny_package(case["tmp"] / "pkg-ood", version="tiny-ui-ood", ood_reference=far)
    assert "imported" in stack.cli("models", "import", str(pkg)).stdout
    with stack.client("annotator") as client:
        r = client.post("/api/v1/cases", files=[("files", ("ood.nii.gz", case["path"].read_bytes()))],
                        data={"model_version": "tiny-ui-ood"})
        assert r.status_code == 202, r.text
        cid = r.json()["case_id"]
        assert stack.wait_job(client, r.json()["job_id"])["state"] == "succeeded"
    _sign_in(page, stack)
    row = page.locator(f"li.case[data-case-id='{cid}']")
    row.locator(".badge.ood").wait_for()
    assert page.locator("li.case").first.get_attribute("data-case-id") == cid
    row.click()
    page.wait_for_function("window.dualseg.state.ready === true", timeout=120_000)
    banner = page.locator("#banner")
    banner.wait_for(state="visible")
    assert "Out of distribution" in banner.inner_text() and "review the whole volume" in banner.inner_text()
    assert "warning" in (banner.get_attribute("class") or "")
