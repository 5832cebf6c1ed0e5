"""A missing dataset is downloaded once, under a lock, with a stall timeout and an md5 check, before any run.

Served from a loopback HTTP server started by the test: nothing leaves the machine. Before, each run
downloaded on its own (no lock, no timeout): one reproduction made 15 attempts, a second process
overwrote the first's download, and behind a black-holed proxy a run sat at 0/240 with an empty log.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from kdbench.data.datasets import cifar
from kdbench.errors import KdbenchError

from test_data import trust_files, write_fake_cifar100


def fake_archive(tmp_path: Path) -> bytes:
    """A tar.gz holding a tiny cifar-100-python folder, as the official archive is laid out."""
    src = tmp_path / "src"
    write_fake_cifar100(src)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    return buffer.getvalue()


class Server:
    """Serves one archive at /cifar-100-python.tar.gz, slowly, counting the requests."""

    def __init__(self, body: bytes, delay_s: float = 0.0):
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests += 1
                time.sleep(
                    delay_s
                )  # long enough that a second process asks while the first downloads
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def served(tmp_path, monkeypatch):
    body = fake_archive(tmp_path)
    server = Server(body, delay_s=0.5)
    spec = dataclasses.replace(
        cifar.CIFAR_SPECS["cifar100"],
        base_url=server.url,
        archive_md5=__import__("hashlib").md5(body).hexdigest(),
    )
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar100", spec)
    trust_files(monkeypatch, "cifar100", tmp_path / "src" / "cifar-100-python")
    yield server
    server.close()


def test_two_processes_asking_at_once_download_once(tmp_path, served):
    data = tmp_path / "data"
    errors = []

    def prepare():
        try:
            cifar.prepare_cifar("cifar100", data)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [
        threading.Thread(target=prepare) for _ in range(3)
    ]  # each takes the lock on its own open file
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and served.requests == 1
    assert cifar.load_cifar("cifar100", data, download=False).x_train.shape == (50, 32, 32, 3)
    assert not list(data.glob(".*.part")) and not [
        p for p in data.glob(".cifar-100-python.*") if p.is_dir()
    ]  # no temp left


def test_an_archive_with_another_md5_is_refused_and_leaves_nothing(tmp_path, served, monkeypatch):
    spec = dataclasses.replace(cifar.CIFAR_SPECS["cifar100"], archive_md5="0" * 32)
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar100", spec)
    data = tmp_path / "data"
    with pytest.raises(KdbenchError, match="not the official 0{32}"):
        cifar.prepare_cifar("cifar100", data)
    assert not (data / "cifar-100-python").exists() and not (data / spec.archive).exists()
    assert not list(data.glob(".*.part"))


def test_a_server_that_never_answers_fails_after_the_stall_timeout(tmp_path, monkeypatch):
    hole = socket.socket()  # accepts connections (the kernel's backlog), never reads or answers
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    try:
        spec = dataclasses.replace(
            cifar.CIFAR_SPECS["cifar100"], base_url=f"http://127.0.0.1:{hole.getsockname()[1]}/"
        )
        monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar100", spec)
        monkeypatch.setattr("kdbench.data.download.STALL_TIMEOUT_S", 1.0)
        started = time.monotonic()
        with pytest.raises(KdbenchError, match="the download failed .*timed out") as caught:
            cifar.prepare_cifar("cifar100", tmp_path / "data")
        assert time.monotonic() - started < 30
        assert "tar -xzf cifar-100-python.tar.gz" in str(
            caught.value
        )  # with the advice on where to put it
    finally:
        hole.close()


@pytest.mark.e2e
def test_reproduce_with_a_missing_dataset_fails_once_before_any_run(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: every connection is refused at once, on this machine
    env = {
        **os.environ,
        "COLUMNS": "200",
        "https_proxy": f"http://127.0.0.1:{port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{port}",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdbench",
            "reproduce",
            "simkd-table1",
            "--profile",
            "ci",
            "--pairs",
            "res32x4_res8x4",
            "--methods",
            "kd",
            "--teachers",
            "trained",
            "--results",
            str(results),
            "--data-dir",
            str(tmp_path / "data"),
            "--cpu-jobs",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("CIFAR-100 not found") == 1 and "the download failed" in proc.stderr
    assert not (results / "runs").exists() or not any(
        (results / "runs").iterdir()
    )  # nothing was scheduled
