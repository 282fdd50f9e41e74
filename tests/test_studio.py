"""ganforge studio: what the page shows, checked as functions, then driven in headless Chromium as a
person would use it (the browser test needs Debian's chromium and chromium-driver, which .ci/run
installs where missing)."""

import io
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ganforge.cli import main
from ganforge.errors import OptionError
from ganforge.inference import generate, load_model
from ganforge.models.base import Condition

pytest.importorskip("gradio", reason="the studio needs the [studio] extra")
from ganforge.studio import Studio, find_runs  # noqa: E402


@pytest.fixture
def roots(finished_runs):
    return finished_runs


def names(root: Path) -> dict[str, str]:
    return {path.name.split("-")[1]: name for name, path in find_runs([root]).items()}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_runs_are_found_under_the_roots_and_named_by_their_place_there(roots, tmp_path):
    found = find_runs([roots])
    assert list(found) == [f"{roots.name}/done/00001-dfgan-mnist-captions", f"{roots.name}/done/00000-cdcgan-mnist"]
    assert find_runs([roots / "done" / "00000-cdcgan-mnist"]) == {"00000-cdcgan-mnist": roots / "done" / "00000-cdcgan-mnist"}
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    assert find_runs([tmp_path / "empty", tmp_path / "missing"]) == {}


def test_samples_follow_seed_class_truncation_and_caption(roots):
    studio, run = Studio([roots]), names(roots)
    cdcgan, dfgan = run["cdcgan"], run["dfgan"]
    rows = studio.samples(cdcgan, 0, 1.0, 3, None, None)  # one row of 3 per class: 10 rows of 16 px + padding
    assert rows.size == (3 * 17 + 1, 10 * 17 + 1) and rows.mode == "L"
    seven = studio.samples(cdcgan, 0, 1.0, 2, 7, None)
    model = load_model(roots / "done" / "00000-cdcgan-mnist")
    expected, _, _ = generate(model, 4, 0, 7)
    cells = pixels(seven)
    assert np.abs(cells[1:17, 1:17] - expected[0, 0].add(1).mul(127.5).round().numpy()).max() <= 1
    assert (pixels(studio.samples(cdcgan, 1, 1.0, 2, 7, None)) != cells).any()
    flat = pixels(studio.samples(cdcgan, 0, 0.0, 2, 7, None))  # psi 0: every sample is the mean latent's
    assert (flat[1:17, 1:17] == flat[1:17, 18:34]).all() and (cells[1:17, 1:17] != cells[1:17, 18:34]).any()
    three = studio.samples(dfgan, 0, 1.0, 2, None, "a handwritten digit three")
    assert three.size == (35, 35) and three.mode == "L"  # the digits have one channel
    assert (pixels(studio.samples(dfgan, 0, 1.0, 2, None, "a handwritten digit eight")) != pixels(three)).any()


def test_a_walk_ends_at_each_keyframes_own_sample(roots):
    studio, run = Studio([roots]), names(roots)
    model = load_model(roots / "done" / "00000-cdcgan-mnist")
    start, end = (pixels(studio.walk(run["cdcgan"], (3, 9), t, 1, (2, 5), (None, None))) for t in (0.0, 1.0))
    for image, seed, label in ((start, 3, 2), (end, 9, 5)):
        z = model.sampling_latents(1, generator=torch.Generator().manual_seed(seed))
        own = model.generate(z, Condition(classes=torch.tensor([label])))
        assert np.abs(image[..., 0] - own[0, 0].add(1).mul(127.5).round().numpy()).max() <= 1
    middle = pixels(studio.walk(run["cdcgan"], (3, 9), 0.5, 1, (2, 5), (None, None)))
    assert (middle != start).any() and (middle != end).any()


def test_progress_reads_kimg_speed_and_points_of_the_run(roots):
    studio, run = Studio([roots]), names(roots)
    grid, chart, line = studio.progress(run["cdcgan"])
    assert grid is not None and chart is not None and chart.size[0] > 300
    assert "0.1 kimg of 0.064" in line and "img/s" in line and re.search(r"\b4 points\b", line), line
    options, metrics = studio.details(run["cdcgan"])
    assert options["model"] == "cdcgan" and options["kimg"] == 0.064 and metrics["swd"]["kimg"] == 0.064


@pytest.mark.parametrize("call,message", [
    (lambda s, r: s.samples(r["cdcgan"], 0, 1, 2, 12, None), "class 12 is out of range: this run has classes 0 to 9"),
    (lambda s, r: s.samples(r["cdcgan"], 0, 1, 2, "two", None), "class 'two': give a class number from 0 to 9"),
    (lambda s, r: s.samples(r["cdcgan"], -1, 1, 2, None, None), "seed -1: give a whole number"),
    (lambda s, r: s.samples(r["cdcgan"], 0, 1, 9, None, None), "grid 9: give 1 to 8"),
    (lambda s, r: s.samples(r["cdcgan"], 0, float("nan"), 2, None, None), "truncation psi nan: give a number from 0 to 2"),
    (lambda s, r: s.walk(r["cdcgan"], (0, 1), 7.0, 1, ("1", "2"), (None, None)), "t 7.0: give a number from 0 to 1"),
    (lambda s, r: s.samples(r["dfgan"], 0, 1, 2, None, "   "), "caption is empty"),
    (lambda s, r: s.walk(r["dfgan"], (0, 1), 0.5, 1, (None, None), ("a digit", "")), "caption B is empty"),
    (lambda s, r: s.samples("../../etc", 0, 1, 2, None, None), "unknown run '../../etc'"),
    (lambda s, r: s.progress("/etc"), "unknown run '/etc'"),
])
def test_bad_input_is_a_message_naming_it(roots, call, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        call(Studio([roots]), names(roots))


def call_api(url: str, endpoint: str, data: list) -> tuple[str, list | None]:
    """POST to the page's API as any client may, without the page: (the event, its data)."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{url}gradio_api/call/{endpoint}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request, timeout=60))["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=120).read().decode()
    event = re.findall(r"^event: (\w+)", stream, re.M)[-1]
    payload = re.findall(r"^data: (.*)$", stream, re.M)[-1]
    return event, json.loads(payload) if payload.startswith("[") else None


def test_the_api_answers_any_input_with_a_message_not_a_traceback(roots, capfd):
    import json
    import urllib.request

    from ganforge.studio import serve

    page, url = serve([roots], port=free_port())
    try:
        info = json.load(urllib.request.urlopen(f"{url}gradio_api/info", timeout=60))["named_endpoints"]
        kinds = {name: [p["component"] for p in e["parameters"]] for name, e in info.items()}
        draw = next(n for n, k in kinds.items() if k == ["Dropdown", "Number", "Slider", "Slider", "Textbox", "Textbox"])
        walk = next(n for n, k in kinds.items() if k[:3] == ["Dropdown", "Number", "Number"])
        run = names(roots)["cdcgan"]
        for endpoint, data, message in [
            (draw, [run, "abc", 1.0, 2, "", ""], "seed 'abc': give a number"),
            (draw, [run, [1], 1.0, 2, "", ""], "seed [1]: give a number"),
            (draw, [run, 0, "x", 2, "", ""], "truncation psi 'x': give a number"),
            (draw, [run, 0, 1.0, {"a": 1}, "", ""], "grid {'a': 1}: give a number"),
            (draw, [["a"], 0, 1.0, 2, "", ""], "run ['a']: give a run's name"),
            (walk, [run, 0, "one", 0.5, 1, "0", "1", "", ""], "seed B 'one': give a number"),
        ]:
            event, output = call_api(url, endpoint.lstrip("/"), data)
            assert event == "complete" and message in output[-1], (data, event, output)
        event, output = call_api(url, draw.lstrip("/"), [run, "3", 1.0, 2, "7", ""])  # numbers as text are numbers
        assert event == "complete" and output[-1] == "" and output[0] is not None
    finally:
        page.close()
    assert "Traceback" not in capfd.readouterr().err


def test_links_inside_a_run_to_files_elsewhere_are_not_read(roots, tmp_path):
    import json
    import os

    run = tmp_path / "runs" / "linked"
    shutil.copytree(roots / "done" / "00000-cdcgan-mnist", run)
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("L", (40, 40), 255).save(secret / "private.png")
    (secret / "private.jsonl").write_text(json.dumps({"kimg": 9, "password": 1234}) + "\n")
    (secret / "options.json").write_text(json.dumps({"model": "cdcgan", "password": 1234}))
    own_grids = sorted(p.name for p in run.glob("fakes*.png"))
    os.symlink(secret / "private.png", run / "fakes999999.png")
    os.symlink(secret / "private.jsonl", run / "metric-stolen.jsonl")
    (run / "training_options.json").unlink()
    os.symlink(secret / "options.json", run / "training_options.json")
    studio = Studio([tmp_path / "runs"])
    grid, _, line = studio.progress("runs/linked")
    assert grid.size != (40, 40) and f"grid at {kimg_of_name(own_grids[-1])} kimg" in line
    options, metrics = studio.details("runs/linked")
    assert "stolen" not in metrics and "swd" in metrics and options == {}
    (run / "latest.pt").rename(run / "elsewhere.pt")
    for snapshot in run.glob("snapshot-*.pt"):
        snapshot.unlink()
    os.symlink(run / "elsewhere.pt", run / "latest.pt")
    with pytest.raises(OptionError, match="no snapshot yet"):
        studio.samples("runs/linked", 0, 1.0, 2, None, None)


def kimg_of_name(name: str) -> str:
    from ganforge.explore import kimg_of

    return f"{kimg_of(Path(name).stem[len('fakes'):]):g}"


def test_generate_psi_zero_draws_one_image_per_class(roots, tmp_path):
    out = tmp_path / "flat.png"
    result = CliRunner().invoke(main, ["generate", str(roots / "done" / "00000-cdcgan-mnist"), "--n", "4",
                                       "--label", "3", "--psi", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(out).convert("L")).astype(int)
    assert grid.shape == (35, 35) and (grid[1:17, 1:17] == grid[1:17, 18:34]).all() and grid[1:17, 1:17].std() > 0


def test_studio_command_refuses_a_missing_folder(tmp_path):
    result = CliRunner().invoke(main, ["studio", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere: no such folder" in result.output


# --- in a real browser ------------------------------------------------------------------------------
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium ([test] extra)")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, seconds=60.0, what="the page"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - the element is being re-rendered; look again
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_the_page_in_chromium_shows_samples_walks_and_a_run_as_it_trains(roots, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    live = subprocess.Popen([sys.executable, "-m", "ganforge", "train", "--resolution", "16", "--batch", "16",
                             "--base-channels", "8", "--kimg", "100", "--tick", "0.016", "--sample-every", "0.32",
                             "--snap", "0.032", "--quiet", "--outdir", str(roots / "live")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The studio's output goes to a file, not a pipe: a pipe nobody reads fills up, and the server's
    # next write (a warning, a log line) then blocks the handler that writes it.
    log = tmp_path / "studio.log"
    with open(log, "w") as out:
        studio = subprocess.Popen([sys.executable, "-m", "ganforge", "studio", str(roots), "--port", str(free_port()),
                                   "--refresh", "1"], stdout=out, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        url = wait_for(lambda: re.search(r"http://\S+/", log.read_text())[0], 120, "the studio's address")
        wait_for(lambda: (roots / "live" / "00000-cdcgan-mnist" / "latest.pt").exists(), 120, "the live run's snapshot")
        run = names(roots)
        driver = browser()
        find = driver.find_element

        def picture(elem_id):
            """The image an output shows: (its URL, its pixels as the browser drew them)."""
            img = find(By.CSS_SELECTOR, f"#{elem_id} img")
            return img.get_attribute("src"), pixels(Image.open(io.BytesIO(img.screenshot_as_png)).convert("L"))

        def enter(elem_id, text):
            field = find(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(Keys.BACKSPACE)
            field.send_keys(text, Keys.ENTER)

        def open_tab(name):
            wait_for(lambda: find(By.XPATH, f"//button[@role='tab' and contains(., '{name}')]"), 60, f"the {name} tab").click()

        def message():
            return find(By.ID, "message").text

        # A text-to-image run: its samples change with the seed and with the caption.
        driver.get(f"{url}?run={run['dfgan']}")
        first_src, first = wait_for(lambda: picture("samples"), 90, "the first samples")
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        elsewhere = [u for u in fetched if not u.startswith((url, "data:", "blob:"))]
        assert fetched and not elsewhere, f"the page fetched from outside the studio: {elsewhere}"  # works offline
        enter("seed", "7")
        seven_src, seven = wait_for(lambda: (p := picture("samples"))[0] != first_src and p, 60, "new samples")
        assert seven.shape != first.shape or (seven != first).any()
        enter("caption", "a handwritten digit eight")
        wait_for(lambda: picture("samples")[0] != seven_src, 60, "samples of the new caption")
        enter("caption", "")
        assert "caption is empty" in wait_for(message, 30, "the empty-caption message")
        assert "Traceback" not in driver.page_source

        # A class-conditional run: a class out of range is a message.
        driver.get(f"{url}?run={run['cdcgan']}")
        wait_for(lambda: picture("samples"), 60, "the class run's samples")
        for attempt in range(3):  # keys typed while the page still wires the run's controls can be lost
            enter("label", "12")
            try:
                said = wait_for(message, 15, "the class message")
                break
            except AssertionError:
                if attempt == 2:
                    raise
        assert "out of range" in said

        # The walk: dragging t to the end shows seed B's sample.
        open_tab("Walk")
        start_src, _ = wait_for(lambda: picture("walk"), 30, "the walk")

        def drag_to_end():
            """Drag t to 1; true once the walk shows another image. The drag is sent again on each look:
            on a busy machine (the live run trains beside the page) the slider may be re-rendered
            after the tab opens, and a drag sent to the old element is lost."""
            if picture("walk")[0] != start_src:
                return True
            driver.execute_script("arguments[0].value = 1; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
                                  "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));"
                                  "arguments[0].dispatchEvent(new PointerEvent('pointerup', {bubbles: true}));",
                                  find(By.CSS_SELECTOR, "#t input[type=range]"))
            time.sleep(2)
            return picture("walk")[0] != start_src

        try:
            wait_for(drag_to_end, 180, "the walk to move")  # 90 s was once too few in CI
        except AssertionError as e:
            t_value = find(By.CSS_SELECTOR, "#t input[type=range]").get_attribute("value")
            raise AssertionError(f"{e}; the page says: {message()!r}; the slider reads {t_value}") from None

        # An unknown run is a message, not a page of errors.
        driver.get(f"{url}?run=nope/../../etc")
        assert "unknown run" in wait_for(message, 60, "the unknown-run message")

        # A run still training: its chart gains points while the page is open.
        driver.get(f"{url}?run={run['cdcgan'].replace('done/00000', 'live/00000')}")
        open_tab("Training")
        points = lambda: int(re.search(r"(\d+) points", find(By.ID, "status").text)[1])  # noqa: E731
        before = wait_for(points, 60, "the live run's status")
        chart_src = wait_for(lambda: picture("chart")[0], 30, "the live run's chart")
        wait_for(lambda: points() > before + 2, 90, "the chart to gain points")
        wait_for(lambda: picture("chart")[0] != chart_src, 30, "the chart to be drawn again")
        driver.save_screenshot(str(tmp_path / "studio.png"))
        assert Image.open(tmp_path / "studio.png").size[0] >= 1000
    except AssertionError as e:
        raise AssertionError(f"{e}\nthe studio printed (last 3000 characters):\n{log.read_text()[-3000:]}") from None
    finally:
        if driver is not None:
            driver.quit()
        for process in (studio, live):
            process.terminate()
            process.wait(30)


def test_a_text_run_starts_from_captions_of_its_own_data(tmp_path):
    from ganforge.training import TrainOptions, train

    data = tmp_path / "shapes"
    (data / "classes.txt").parent.mkdir()
    (data / "classes.txt").write_text("shapes\n")
    rows = ["image,label,split"]
    for i, colour in enumerate(["red", "green", "blue", "yellow", "white"] * 3):
        (data / "images").mkdir(exist_ok=True)
        (data / "text").mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), colour).save(data / "images" / f"{i}.png")
        (data / "text" / f"{i}.txt").write_text(f"a {colour} square\na square painted {colour}\n")
        rows.append(f"images/{i}.png,0,train")
    (data / "split.csv").write_text("\n".join(rows) + "\n")
    train(TrainOptions(model="dfgan", data=str(data), resolution=16, batch=8, model_opts={"nf": 4}, kimg=0.008,
                       tick=0.008, outdir=str(tmp_path / "runs")), progress=False)
    studio = Studio([tmp_path / "runs"])
    name = next(iter(studio.runs))
    assert studio.describe(name)["captions"] == ["a red square", "a blue square"]  # images 0 and 7 of 15
    assert studio.samples(name, 0, 1.0, 1, None, "a red square").size == (16, 16)


def test_the_training_tab_gives_no_eta_for_a_run_that_is_not_training(roots, tmp_path):
    import json
    import os

    studio, run = Studio([roots]), names(roots)
    line = studio.progress(run["cdcgan"])[2]
    assert "ETA" not in line and "finished, last wrote" in line
    # the same run cut short, its process gone (a lock naming no live process)
    stopped = shutil.copytree(studio.run_dir(run["cdcgan"]), tmp_path / "runs" / "00000-stopped")
    options = json.loads((stopped / "training_options.json").read_text())
    (stopped / "training_options.json").write_text(json.dumps({**options, "kimg": 10}))
    (stopped / ".lock").write_text("999999999")
    line = Studio([tmp_path / "runs"]).progress("runs/00000-stopped")[2]
    assert "ETA" not in line and "stopped, last wrote" in line
    (stopped / ".lock").write_text(str(os.getpid()))  # a live process trains it
    line = Studio([tmp_path / "runs"]).progress("runs/00000-stopped")[2]
    assert "training, ETA" in line


def test_a_picture_shown_twice_is_one_file_written_once():
    """Gradio rewrote a returned PIL picture's file in place each time it was returned, so a picture
    computed twice was cut short while the browser fetched it (a broken image that never updated)."""
    from ganforge.studio import PictureFiles

    files = PictureFiles()
    grey, white = Image.new("L", (8, 8), 128), Image.new("L", (8, 8), 255)
    first = Path(files.file(grey))
    written = first.stat().st_mtime_ns, first.stat().st_ino
    time.sleep(0.01)
    assert Path(files.file(grey.copy())) == first and (first.stat().st_mtime_ns, first.stat().st_ino) == written
    assert (pixels(Image.open(first)) == 128).all()
    assert Path(files.file(white)) != first and sorted(p.name[0] != "." for p in files.folder.iterdir()) == [True, True]
