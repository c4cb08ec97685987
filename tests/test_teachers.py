"""Teachers from published checkpoints: a URL, a member of a .tar at a URL, a named teacher.

A local HTTP server on 127.0.0.1 (started here, stopped at the end of the module) serves a small
archive and a plain checkpoint; the cache is a temporary folder (``RLD_CACHE``)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from pathlib import Path

import pytest
import torch

import rld.models.sources as sources
from conftest import assert_user_error
from rld.cli import main
from rld.config import resolve
from rld.engine.teacher import _build_teacher
from rld.errors import UserError
from rld.models import create_model
from rld.models.sources import NamedTeacher, download_path, named_teachers, resolve_checkpoint, teacher_cache_dir

FAST = ["train.batch_size=256", "data.eval_batch_size=512", "train.channels_last=false"]
MEMBER = "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth"


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        type(self).requests.append(self.path)
        if self.path == "/truncated.pth":  # the connection drops after 10 of 1000 bytes
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(base URL, folder, state dict)``: the folder holds ``teachers.tar`` (MEMBER and a readme) and
    ``plain.pth``, both holding the same resnet8 (10 classes) as ``{"model": state dict}``."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(7)
    state = create_model("resnet8", num_classes=10).state_dict()
    buf = io.BytesIO()
    torch.save({"model": state, "epoch": 240}, buf)
    (folder / "plain.pth").write_bytes(buf.getvalue())
    with tarfile.open(folder / "teachers.tar", "w") as tar:
        for name, data in ((MEMBER, buf.getvalue()), ("cifar_teachers/README.txt", b"teachers\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    handler = lambda *a, **k: _Handler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder, state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RLD_CACHE", str(tmp_path / "cache"))
    _Handler.requests.clear()
    return tmp_path / "cache" / "teachers"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_folder_follows_rld_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("RLD_CACHE", str(tmp_path / "r"))
    assert teacher_cache_dir() == tmp_path / "r" / "teachers"
    monkeypatch.delenv("RLD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert teacher_cache_dir() == tmp_path / "x" / "rld" / "teachers"


def test_a_url_is_downloaded_once_and_checked(served, cache):
    base, folder, _ = served
    url = f"{base}/plain.pth"
    path = resolve_checkpoint(f"{url}#sha256={_sha(folder / 'plain.pth')}", progress=False)
    assert path == download_path(url) and path.parent.parent == cache
    assert path.read_bytes() == (folder / "plain.pth").read_bytes()
    assert resolve_checkpoint(url, progress=False) == path
    assert _Handler.requests == ["/plain.pth"]  # the second use reads the cache
    assert _files(cache) == [str(path.relative_to(cache))]  # no temporary file left


def test_a_wrong_sha256_names_both_hashes_and_keeps_no_file(served, cache):
    base, folder, _ = served
    wrong = "0" * 64
    with pytest.raises(UserError) as err:
        resolve_checkpoint(f"{base}/plain.pth#sha256={wrong}", progress=False)
    assert str(err.value) == (
        f"the SHA-256 of {base}/plain.pth is {_sha(folder / 'plain.pth')}, not the expected {wrong}; "
        "the file was removed (check the #sha256= value, or the URL)"
    )
    assert _files(cache) == []
    short = "the connection closed after 10 of 1,000 bytes"
    for name, reason in (("missing.pth", "HTTP 404 File not found"), ("truncated.pth", short)):
        with pytest.raises(UserError) as err:
            resolve_checkpoint(f"{base}/{name}", progress=False)
        assert str(err.value).startswith(f"cannot download {base}/{name} ({reason}")
        assert _files(cache) == []
    with pytest.raises(UserError, match="must be 64 hexadecimal digits"):
        resolve_checkpoint(f"{base}/plain.pth#sha256=abc", progress=False)


def test_an_archive_member_is_extracted_once(served, cache):
    base, folder, state = served
    sha = _sha(folder / "teachers.tar")
    path = resolve_checkpoint(f"{base}/teachers.tar!/{MEMBER}#sha256={sha}", progress=False)
    assert path.name == "ckpt_epoch_240.pth"
    assert _same(torch.load(path, weights_only=True)["model"], state)
    assert resolve_checkpoint(f"{base}/teachers.tar!/{MEMBER}", progress=False) == path
    assert _Handler.requests == ["/teachers.tar"]
    assert not [f for f in _files(cache) if f.endswith(".part")]


def test_processes_that_start_together_download_once(served, cache):
    from concurrent.futures import ThreadPoolExecutor

    source = f"{served[0]}/teachers.tar!/{MEMBER}"
    with ThreadPoolExecutor(3) as pool:  # each thread locks the folder through a descriptor of its own
        paths = list(pool.map(lambda _: resolve_checkpoint(source, progress=False), range(3)))
    assert len(set(paths)) == 1 and paths[0].is_file()
    assert _Handler.requests == ["/teachers.tar"]


def test_a_missing_member_lists_the_archive(served, cache):
    base, _, _ = served
    with pytest.raises(UserError) as err:
        resolve_checkpoint(f"{base}/teachers.tar!/cifar_teachers/resnet99_vanilla/x.pth", progress=False)
    assert str(err.value) == (
        "teachers.tar has no file 'cifar_teachers/resnet99_vanilla/x.pth'; it holds 2 files: "
        f"{MEMBER}, cifar_teachers/README.txt"
    )
    assert _files(cache) == [str(download_path(f"{base}/teachers.tar").relative_to(cache))]  # the archive only
    with pytest.raises(UserError, match="must be a relative path inside the archive"):
        resolve_checkpoint(f"{base}/teachers.tar!/../x.pth", progress=False)


def test_an_unreachable_host_names_the_url_and_where_to_put_the_file(cache, capsys, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/teachers.tar"
    where = download_path(url)
    with pytest.raises(UserError) as err:
        resolve_checkpoint(f"{url}!/{MEMBER}", progress=False)
    assert str(err.value).startswith(f"cannot download {url} (")
    assert str(err.value).endswith(f"); download it by hand to {where} and run again")
    assert _files(cache) == []
    argv = ["train", "demo/kd", "--teacher", f"{url}!/{MEMBER}", "model.teacher=resnet8", "--out", str(tmp_path / "o")]
    assert_user_error(main(argv), capsys.readouterr().err, f"download it by hand to {where} and run again")
    assert _files(cache) == []


def test_a_file_placed_by_hand_is_used(served, cache, tmp_path):
    base, folder, state = served
    url = f"http://127.0.0.1:{_closed_port()}/teachers.tar"  # offline
    where = download_path(url)
    where.parent.mkdir(parents=True)
    where.write_bytes((folder / "teachers.tar").read_bytes())
    path = resolve_checkpoint(f"{url}!/{MEMBER}", progress=False)
    assert _same(torch.load(path, weights_only=True)["model"], state)


def test_a_url_teacher_trains_a_student_and_is_recorded(served, cache, tmp_path, capsys):
    base, folder, state = served
    source = f"{base}/teachers.tar!/{MEMBER}"
    cfg = resolve("demo/kd", [*FAST, "train.epochs=1", "model.teacher=resnet8", f"model.teacher_checkpoint={source}"])
    assert cfg.model.teacher_checkpoint == source  # not taken for a relative path
    teacher = _build_teacher(cfg, 10, torch.device("cpu"))
    assert _same(teacher.state_dict(), state)
    run = tmp_path / "kd"
    argv = ["train", "demo/kd", "--teacher", source, "model.teacher=resnet8", "train.epochs=1", *FAST]
    assert main([*argv, "--out", str(run)]) == 0
    assert _Handler.requests == ["/teachers.tar"]
    record = json.loads((run / "teacher.json").read_text())
    member = download_path(f"{base}/teachers.tar").parent / "members" / MEMBER
    assert record == {"checkpoint": source, "architecture": "resnet8", "file": str(member), "sha256": _sha(member)}
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    assert {r["which"] for r in json.loads(capsys.readouterr().out)} == {"last", "best", "teacher"}


def test_a_named_teacher_resolves_through_the_table(served, cache, monkeypatch, capsys):
    base, folder, state = served
    sha = _sha(folder / "teachers.tar")
    entry = NamedTeacher("cifar100:resnet8", "resnet8", f"{base}/teachers.tar", MEMBER, 12.5, sha)
    monkeypatch.setattr(sources, "named_teachers", lambda: {"cifar100:resnet8": entry})
    cfg = resolve("demo/kd", ["model.teacher=resnet8", "model.teacher_checkpoint=cifar100:resnet8"])
    assert cfg.model.teacher_checkpoint == "cifar100:resnet8"
    assert _same(_build_teacher(cfg, 10, torch.device("cpu")).state_dict(), state)
    with pytest.raises(UserError, match="named teacher cifar100:resnet8 is a resnet8, but model.teacher is resnet20"):
        resolve("demo/kd", ["model.teacher_checkpoint=cifar100:resnet8"])
    with pytest.raises(UserError, match=r"unknown named teacher 'cifar100:resnet9'; known: cifar100:resnet8"):
        resolve_checkpoint("cifar100:resnet9")
    assert main(["presets", "--teachers"]) == 0
    assert capsys.readouterr().out == f"cifar100:resnet8  resnet8  top-1 12.50%   {entry.checkpoint}\n"


def test_reproduce_keeps_a_url_or_a_name_as_given(served):
    from rld.experiments.plan import parse_teacher_checkpoints

    url = f"{served[0]}/plain.pth#sha256={'a' * 64}"
    given = ["resnet32x4=cifar100:resnet32x4", f"resnet8={url}"]
    assert parse_teacher_checkpoints(given) == {"resnet32x4": "cifar100:resnet32x4", "resnet8": url}


def test_the_table_of_published_teachers():
    table = named_teachers()
    archive = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
    assert {name: t.top1 for name, t in table.items()} == {  # RepDistiller's README, the RLD paper's Tables 2-3
        "cifar100:resnet56": 72.34,
        "cifar100:resnet110": 74.31,
        "cifar100:resnet32x4": 79.42,
        "cifar100:wrn_40_2": 75.61,
        "cifar100:vgg13": 74.64,
        "cifar100:ResNet50": 79.34,
    }
    for name, t in table.items():
        assert t.url == archive and t.member == f"cifar_teachers/{t.architecture}_vanilla/ckpt_epoch_240.pth"
        assert name == f"cifar100:{t.architecture}"
        create_model(t.architecture, num_classes=100)  # a model of the zoo


def test_a_teacher_file_with_its_options_and_a_numpy_accuracy_loads(tmp_path):
    """Training scripts save their options (argparse.Namespace) and an accuracy (a NumPy scalar, pickled
    under NumPy 1's name by older files) beside the weights; weights_only loading accepts them."""
    import argparse

    import numpy as np

    from rld.models import load_checkpoint

    torch.manual_seed(3)
    state = create_model("resnet8", num_classes=10).state_dict()
    opt = argparse.Namespace(model="resnet8", learning_rate=0.05)
    buf = io.BytesIO()  # the legacy format keeps the pickle readable, to write NumPy 1's module name
    torch.save({"model": state, "accuracy": np.float64(71.25), "opt": opt}, buf, _use_new_zipfile_serialization=False)
    path = tmp_path / "ckpt_epoch_240.pth"
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\nscalar" in path.read_bytes()
    model = create_model("resnet8", num_classes=10)
    meta = load_checkpoint(model, path)
    assert _same(model.state_dict(), state)
    assert meta == {"accuracy": 71.25, "opt": opt}
    torch.save({"model": state, "head": torch.nn.ReLU()}, path)  # other objects are still refused
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(model, path)
