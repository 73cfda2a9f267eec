"""The HTTP API of `gatgan serve`, in process (FastAPI's TestClient): what every route answers, that
an image depends only on (class, seed, truncation, guidance) and equals what the library draws, and
that every body the API refuses gets one JSON line naming the problem and the field."""

from __future__ import annotations

import base64
import dataclasses
import io
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tinyrun import TINY_CLASSES

from gatgan.cli import main
from gatgan.serve import ServeLimits, create_app

DEFAULT = ServeLimits()
SMALL = ServeLimits(max_images=4)  # small enough that "too many" costs nothing to ask for
PADDING = 2  # between the tiles of a /generate grid; /interpolate strips have none
JSON = {"content-type": "application/json"}
GENERATE = {"class": "grey", "seeds": [3, 7], "truncation": 0.7, "guidance": 1.5}
INTERPOLATE = {"class": 0, "seeds": [1, 4], "steps": 3}
MISSING = object()  # a body field left out


def _client(model, limits: ServeLimits = DEFAULT) -> TestClient:
    """A 500 comes back as a response (not re-raised), so a test shows the status it got."""
    return TestClient(create_app(model, limits), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(gat):
    with _client(gat) as client:
        yield client


@pytest.fixture(scope="module")
def small(gat):
    with _client(gat, SMALL) as client:
        yield client


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 HWC pixels (a greyscale PNG gets its channel axis back)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image)
    return pixels if pixels.ndim == 3 else pixels[..., None]


def json_images(items: list) -> np.ndarray:
    """The base64 PNGs of a JSON answer ({"png": ...} per image, or the strings themselves) as NHWC."""
    return np.stack([decode_png(base64.b64decode(item["png"] if isinstance(item, dict) else item))
                     for item in items])


def body(base: dict, **changes) -> dict:
    """`base` with fields changed (or left out: MISSING); `class_` stands for "class"."""
    changes = {("class" if key == "class_" else key): value for key, value in changes.items()}
    merged = {**base, **changes}
    return {key: value for key, value in merged.items() if value is not MISSING}


# ---------------------------------------------------------------------------------- read-only routes
def test_the_page_is_html(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.lstrip().lower().startswith("<!doctype html")


def test_health_counts_finished_generations(gat):
    with _client(gat) as client:
        assert client.get("/health").json() == {"status": "ok", "busy": False, "waiting": 0, "completed": 0}
        assert client.post("/generate", json=GENERATE).status_code == 200
        assert client.get("/health").json() == {"status": "ok", "busy": False, "waiting": 0, "completed": 1}


def test_the_model_card_describes_the_model_and_the_limits(small, gat):
    card = small.get("/model").json()
    height, width, channels = gat.generate(0, [0], output="numpy").shape[1:]
    assert card["image"] == {"height": height, "width": width, "channels": channels}
    assert (card["name"], card["generator"], card["num_classes"], card["step"]) == ("tiny", "GAT-Nano/2", 3, 6)
    assert card["parameters"] == sum(p.numel() for p in gat.sampler.generator.parameters())
    assert card["limits"] == {"max_images": 4, "max_body_bytes": SMALL.max_body_bytes, "max_waiting": 16,
                              "max_seed": 2**32 - 1, "truncation": [0.0, 1.0], "guidance": [0.0, 10.0]}


@pytest.mark.parametrize("source, sent", [
    ("folder:/srv/team/my pets (class folders)", "folder:my pets (class folders)"),
    ("zip:/srv/data/pets.zip (one folder per class)", "zip:pets.zip (one folder per class)"),
    ("fashion-mnist:/usr/share/datasets/fashion-mnist", "fashion-mnist:fashion-mnist"),
    ("repa:relative/dir", "repa:dir"),
    ("an array given in memory", "an array given in memory"),
    (None, None),
])
def test_the_data_source_is_sent_without_the_servers_directories(gat, source, sent):
    card = gat.card | {"data": {**gat.card["data"], "source": source}}
    with _client(dataclasses.replace(gat, card=card)) as client:
        data = client.get("/model").json()["data"]
    assert data == {"source": sent, "count": gat.card["data"]["count"]}


def test_scores_that_could_not_be_computed_are_sent_as_null(gat):
    """JSON has no NaN: a NaN score must not break /model (or send the non-JSON token NaN)."""
    scores = {"best": {"fid": math.nan, "step": 3}, "last_eval": {"fid": 12.5, "kid": math.inf}}
    with _client(dataclasses.replace(gat, card=gat.card | {"scores": scores})) as client:
        response = client.get("/model")
    assert response.status_code == 200 and "NaN" not in response.text and "Infinity" not in response.text
    assert response.json()["scores"] == {"best": {"fid": None, "step": 3}, "last_eval": {"fid": 12.5, "kid": None}}


def test_classes_are_the_models_names_with_their_indices(client, gat):
    assert gat.class_names == TINY_CLASSES
    assert client.get("/classes").json() == {"classes": [{"index": i, "name": n} for i, n in enumerate(TINY_CLASSES)]}


# ---------------------------------------------------------------------------------- generating
@pytest.mark.parametrize("class_, seeds, truncation, guidance", [
    ("grey", [3, 7, 11], 1.0, 1.0),
    (2, [0, 1], 0.6, 1.5),
    ("dark", [2**32 - 1, 0, 5], 0.0, 10.0),
])
def test_generate_json_images_are_the_librarys_pixels(client, gat, class_, seeds, truncation, guidance):
    response = client.post("/generate", json={"class": class_, "seeds": seeds, "truncation": truncation,
                                              "guidance": guidance})
    assert response.status_code == 200, response.text
    answer = response.json()
    label = gat.sampler.class_index(class_)
    assert {k: v for k, v in answer.items() if k != "images"} == {
        "class": TINY_CLASSES[label], "class_index": label, "truncation": truncation, "guidance": guidance,
        "width": 8, "height": 8}
    assert [image["seed"] for image in answer["images"]] == seeds
    images = json_images(answer["images"])
    np.testing.assert_array_equal(images, gat.generate(class_, seeds, truncation, guidance, output="numpy"))
    if truncation > 0:  # at truncation 0 every seed draws the class mean
        assert not np.array_equal(images[0], images[1]), "different seeds drew the same image"


def test_a_saved_model_folder_serves_the_runs_images(gat, tmp_path):
    """`gatgan serve --model` loads a save_pretrained folder: it must draw what the run draws."""
    from gatgan import GAT

    folder = gat.save_pretrained(tmp_path / "model")
    with _client(GAT.from_pretrained(folder)) as from_folder:
        answer = from_folder.post("/generate", json=GENERATE)
        model = from_folder.get("/model").json()
    assert answer.status_code == 200, answer.text
    np.testing.assert_array_equal(json_images(answer.json()["images"]),
                                  gat.generate(GENERATE["class"], GENERATE["seeds"], GENERATE["truncation"],
                                               GENERATE["guidance"], output="numpy"))
    assert (model["name"], model["step"]) == (gat.card["name"], gat.card["step"])


@pytest.mark.parametrize("count, columns, grid_columns", [(3, None, 3), (10, None, 8), (5, 2, 2), (2, 5, 5)])
def test_generate_png_is_a_grid_of_the_images(client, gat, count, columns, grid_columns):
    """Default columns: min(count, 8); rows as many as needed; PADDING white pixels between tiles."""
    seeds = list(range(100, 100 + count))
    response = client.post("/generate", json={"class": 1, "seeds": seeds, "format": "png"}
                           | ({"columns": columns} if columns else {}))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    grid = decode_png(response.content)
    expected = gat.generate(1, seeds, output="numpy")
    (h, w), rows = expected.shape[1:3], -(-count // grid_columns)
    assert grid.shape == (rows * (h + PADDING) + PADDING, grid_columns * (w + PADDING) + PADDING, 1)
    for i, image in enumerate(expected):
        row, column = divmod(i, grid_columns)
        top, left = PADDING + row * (h + PADDING), PADDING + column * (w + PADDING)
        np.testing.assert_array_equal(grid[top:top + h, left:left + w], image)
    assert (grid[:PADDING] == 255).all() and (grid[:, :PADDING] == 255).all()


@pytest.mark.parametrize("seeds, steps", [([1, 4], 3), ([1, 4, 9], 4)])
def test_interpolate_json_has_one_frame_per_step_with_the_seeds_as_keyframes(client, gat, seeds, steps):
    response = client.post("/interpolate", json={"class": "bright", "seeds": seeds, "steps": steps,
                                                 "truncation": 0.8})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {k: v for k, v in answer.items() if k != "frames"} == {
        "class": "bright", "class_index": 2, "seeds": seeds, "steps": steps, "space": "z", "truncation": 0.8,
        "width": 8, "height": 8}
    frames = json_images(answer["frames"])
    assert len(frames) == (len(seeds) - 1) * (steps - 1) + 1
    keyframes = frames[::steps - 1]  # in z the walk passes exactly through each seed's image
    np.testing.assert_array_equal(keyframes, gat.generate("bright", seeds, truncation=0.8, output="numpy"))


@pytest.mark.parametrize("space", ["z", "w"])
def test_interpolate_png_is_a_strip_of_the_json_frames(client, space):
    request = {"class": 0, "seeds": [5, 6, 7], "steps": 5, "space": space}
    frames = json_images(client.post("/interpolate", json=request).json()["frames"])
    response = client.post("/interpolate", json=request | {"format": "png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    strip = decode_png(response.content)
    assert len(frames) == 9 and strip.shape == (8, 9 * 8, 1)
    np.testing.assert_array_equal(strip, np.concatenate(list(frames), axis=1))


# ---------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("route, request_body", [
    ("/generate", GENERATE), ("/generate", GENERATE | {"format": "png"}),
    ("/interpolate", INTERPOLATE), ("/interpolate", INTERPOLATE | {"format": "png", "space": "w"}),
])
def test_the_same_request_gives_the_same_bytes(client, route, request_body):
    first, second = (client.post(route, json=request_body) for _ in range(2))
    assert first.status_code == second.status_code == 200
    assert first.content == second.content


def test_an_image_does_not_depend_on_the_other_seeds_of_its_request(client):
    alone = json_images(client.post("/generate", json={"class": 1, "seeds": [5]}).json()["images"])
    among_others = json_images(client.post("/generate", json={"class": 1, "seeds": [2, 5, 9]}).json()["images"])
    np.testing.assert_array_equal(alone[0], among_others[1])


@pytest.mark.parametrize("name, index", list(zip(TINY_CLASSES, range(len(TINY_CLASSES)))))
def test_a_class_by_name_draws_what_its_index_draws(client, name, index):
    by_name = client.post("/generate", json=GENERATE | {"class": name})
    by_index = client.post("/generate", json=GENERATE | {"class": index})
    assert by_name.status_code == 200 and by_name.content == by_index.content


# ---------------------------------------------------------------------------------- refused bodies
REFUSED_FIELDS = [  # id, route, body, field, words the message must hold (all 422)
    ("unknown class name", "/generate", body(GENERATE, class_="purple"), "class", ["unknown class 'purple'"]),
    ("class index too large", "/generate", body(GENERATE, class_=3), "class", ["unknown class 3", "[0, 3)"]),
    ("class index negative", "/generate", body(GENERATE, class_=-1), "class", ["unknown class -1"]),
    ("class true", "/generate", body(GENERATE, class_=True), "class", ["class name or an index", "got true"]),
    ("class null", "/generate", body(GENERATE, class_=None), "class", ["class"]),
    ("class missing", "/generate", body(GENERATE, class_=MISSING), "class", ["class", "required"]),
    ("negative seed", "/generate", body(GENERATE, seeds=[1, -1]), "seeds", ["greater than or equal to 0"]),
    ("seed over 32 bits", "/generate", body(GENERATE, seeds=[2**32]), "seeds", ["4294967295"]),
    ("seed string", "/generate", body(GENERATE, seeds=["1"]), "seeds", ["valid integer"]),
    ("seed float", "/generate", body(GENERATE, seeds=[1.5]), "seeds", ["valid integer"]),
    ("seed true", "/generate", body(GENERATE, seeds=[True]), "seeds", ["valid integer"]),
    ("seeds empty", "/generate", body(GENERATE, seeds=[]), "seeds", ["at least 1"]),
    ("seeds not a list", "/generate", body(GENERATE, seeds=7), "seeds", ["valid list"]),
    ("seeds missing", "/generate", body(GENERATE, seeds=MISSING), "seeds", ["required"]),
    ("too many images", "/generate", body(GENERATE, seeds=list(range(5))), "seeds", ["at most 4 images", "got 5"]),
    ("truncation below 0", "/generate", body(GENERATE, truncation=-0.1), "truncation", ["greater than or equal to 0"]),
    ("truncation above 1", "/generate", body(GENERATE, truncation=1.5), "truncation", ["less than or equal to 1"]),
    ("truncation string", "/generate", body(GENERATE, truncation="0.5"), "truncation", ["valid number"]),
    ("truncation null", "/generate", body(GENERATE, truncation=None), "truncation", ["valid number"]),
    ("guidance below 0", "/generate", body(GENERATE, guidance=-0.5), "guidance", ["greater than or equal to 0"]),
    ("guidance above 10", "/generate", body(GENERATE, guidance=10.5), "guidance", ["less than or equal to 10"]),
    ("unknown format", "/generate", body(GENERATE, format="gif"), "format", ["'json' or 'png'"]),
    ("columns 0", "/generate", body(GENERATE, columns=0), "columns", ["greater than or equal to 1"]),
    ("columns 65", "/generate", body(GENERATE, columns=65), "columns", ["less than or equal to 64"]),
    ("unknown key", "/generate", body(GENERATE, bogus=1), "bogus", ["bogus", "Extra inputs are not permitted"]),
    # A key is the client's text: the message must stay one line whatever the key holds.
    ("unknown key with a newline", "/generate", body(GENERATE, **{"a\nb": 1}), "a\nb", ["Extra inputs"]),
    ("one interpolation seed", "/interpolate", body(INTERPOLATE, seeds=[1]), "seeds", ["at least 2"]),
    ("too many frames", "/interpolate", body(INTERPOLATE, steps=5), "steps", ["at most 4 frames", "got 5"]),
    ("too many frames from seeds", "/interpolate", body(INTERPOLATE, seeds=[1, 2, 3]), "steps", ["got 5"]),
    ("one step", "/interpolate", body(INTERPOLATE, steps=1), "steps", ["greater than or equal to 2"]),
    ("unknown space", "/interpolate", body(INTERPOLATE, space="x"), "space", ["'z' or 'w'"]),
    ("interpolation class unknown", "/interpolate", body(INTERPOLATE, class_="purple"), "class", ["purple"]),
    ("interpolation truncation", "/interpolate", body(INTERPOLATE, truncation=2), "truncation", ["less than"]),
    ("guidance on interpolate", "/interpolate", body(INTERPOLATE, guidance=1.0), "guidance", ["Extra inputs"]),
]


@pytest.mark.parametrize("route, request_body, field, words",
                         [pytest.param(*case[1:], id=case[0]) for case in REFUSED_FIELDS])
def test_a_refused_field_is_named_in_one_line(small, check_error, route, request_body, field, words):
    check_error(small.post(route, json=request_body), 422, field, *words)


REFUSED_BODIES = [  # id, raw body, content type, field, words (all 422)
    ("a list", b"[]", "application/json", None, ["must be a JSON object"]),
    ("a string", b'"grey"', "application/json", None, ["must be a JSON object"]),
    ("null", b"null", "application/json", None, ["must be a JSON object"]),
    ("a number", b"42", "application/json", None, ["must be a JSON object"]),
    ("empty", b"", "application/json", None, ["body"]),
    ("truncated JSON", b'{"class": 0, "seeds": [1', "application/json", None, ["not valid JSON"]),
    ("not JSON", b"class=0&seeds=1", "application/json", None, ["not valid JSON"]),
    ("NaN truncation", b'{"class": 0, "seeds": [1], "truncation": NaN}', "application/json", "truncation",
     ["finite"]),
    ("infinite guidance", b'{"class": 0, "seeds": [1], "guidance": Infinity}', "application/json", "guidance",
     ["finite"]),
    ("invalid UTF-8", b'{"class": "\xff\xfe", "seeds": [1]}', "application/json", None, ["not valid JSON"]),
    ("nested too deeply", b"[" * 10_000 + b"]" * 10_000, "application/json", None, ["not valid JSON", "nested"]),
    ("a 5000-digit integer", b'{"class": ' + b"9" * 5000 + b', "seeds": [1]}', "application/json", None,
     ["not valid JSON"]),
    # FastAPI parses JSON only for a JSON content type; any other type leaves the body as bytes,
    # which is then "not an object"; the message names the content type to send.
    ("JSON as text/plain", b'{"class": 0, "seeds": [1]}', "text/plain", None, ["Content-Type: application/json"]),
    ("JSON as a form", b'{"class": 0, "seeds": [1]}', "application/x-www-form-urlencoded", None,
     ["must be a JSON object"]),
    ("no content type", b'{"class": 0, "seeds": [1]}', None, None, ["must be a JSON object"]),
]


@pytest.mark.parametrize("content, content_type, field, words",
                         [pytest.param(*case[1:], id=case[0]) for case in REFUSED_BODIES])
def test_a_body_that_is_no_json_object_is_refused_in_one_line(small, check_error, content, content_type, field,
                                                               words):
    headers = {"content-type": content_type} if content_type else {}
    check_error(small.post("/generate", content=content, headers=headers), 422, field, *words)


def padded(size: int) -> bytes:
    """A valid /generate body of exactly `size` bytes (JSON allows trailing whitespace)."""
    start = b'{"class": 0, "seeds": [1]}'
    return start + b" " * (size - len(start))


def chunks(data: bytes, size: int = 4096):
    """A generator body: httpx sends it chunked, without Content-Length."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_with_413_and_one_at_it_is_served(small, check_error, chunked):
    limit = SMALL.max_body_bytes
    for size, status in [(limit, 200), (limit + 1, 413), (4 * limit, 413)]:
        content = chunks(padded(size)) if chunked else padded(size)
        response = small.post("/generate", content=content, headers=JSON)
        if status == 200:
            assert response.status_code == 200, (size, response.text)
        else:
            check_error(response, 413, None, f"larger than {limit} bytes")


@pytest.mark.parametrize("method, path, status, allowed", [
    ("GET", "/nope", 404, None), ("GET", "/static/nope.js", 404, None), ("GET", "/generate", 405, "POST"),
    ("DELETE", "/interpolate", 405, "POST"), ("POST", "/health", 405, "GET"), ("PUT", "/classes", 405, "GET"),
])
def test_an_unknown_path_or_method_is_a_json_error(small, check_error, method, path, status, allowed):
    response = small.request(method, path)
    check_error(response, status, None, "Not Found" if status == 404 else "Method Not Allowed")
    assert response.headers.get("allow") == allowed


# ---------------------------------------------------------------------------------- configuration
def test_serve_refuses_a_checkpoint_for_a_model_folder_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(tmp_path), "--checkpoint", "best"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [("gatgan serve: error: --checkpoint picks a checkpoint of --run; a --model folder holds one "
                      "generator")]


@pytest.mark.parametrize("field", ["max_images", "max_body_bytes", "max_waiting"])
@pytest.mark.parametrize("value", [0, -1])
def test_limits_below_one_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be >= 1, got {value}"):
        ServeLimits(**{field: value})
