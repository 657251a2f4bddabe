"""A real OCI distribution registry (Debian's docker-registry) on 127.0.0.1 for tests."""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
_STARTUP_DEADLINE_SECONDS = 30.0
_STOP_GRACE_SECONDS = 10.0
_PORT_ATTEMPTS = 5
_PR_SET_PDEATHSIG = 1
_IDENTITY_HEADER = "X-Pycri-Test-Registry"


class RegistryError(RuntimeError):
    pass


# Test traffic goes to 127.0.0.1 only: never through a proxy from the environment.
loopback_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def registry_available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


def basic_auth_header(auth: tuple[str, str]) -> str:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    return f"Basic {token}"


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry; distribution accepts bcrypt hashes only."""
    import bcrypt  # only the auth registry needs it

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{username}:{hashed}\n"


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Resolved here, not in the forked child, where taking the loader's lock could deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # A killed test session must not leave its registry behind.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class LocalRegistry:
    """docker-registry serving plain HTTP on 127.0.0.1 with its storage under `workdir`.

    `auth=(user, password)` turns on htpasswd basic auth. Use as a context manager or call
    `start()` / `stop()`. The registry gets SIGTERM when the thread that started it ends, so
    start it from a thread that lives as long as it should (not from a short-lived executor).
    """

    def __init__(self, workdir: Path, auth: tuple[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.auth = auth
        self.port = 0
        # Sent back in a header by our process only: another session's registry may answer on a port we probed.
        self._identity = secrets.token_hex(8)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._process is not None:
            raise RegistryError("registry already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Another session may grab the port between probing and binding: retry on a new one.
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_loopback_port()
            self._spawn()
            if self._wait_until_serving():
                log.info("registry started", extra={"fields": {"url": self.url, "pid": self.pid}})
                return
            self._reap()
        raise RegistryError(f"docker-registry did not start; see {self.log_path}")

    def stop(self) -> None:
        if self._process is None:
            return
        pid = self._process.pid
        self._process.terminate()
        try:
            self._process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        log.info("registry stopped", extra={"fields": {"url": self.url, "pid": pid}})

    def _spawn(self) -> None:
        config_path = self.workdir / "config.yml"
        # YAML is a superset of JSON, so the config needs no YAML writer.
        config_path.write_text(json.dumps(self._config(), indent=2))
        env = {key: value for key, value in os.environ.items() if not key.startswith("REGISTRY_")}
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env,
                preexec_fn=_die_with_parent,
            )

    def _config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
            },
            "http": {
                "addr": self.host,
                "secret": secrets.token_hex(16),
                "headers": {_IDENTITY_HEADER: [self._identity]},
            },
        }
        if self.auth is not None:
            htpasswd_path = self.workdir / "htpasswd"
            htpasswd_path.write_text(htpasswd_line(*self.auth))
            config["auth"] = {"htpasswd": {"realm": "pycri-test", "path": str(htpasswd_path)}}
        return config

    def _wait_until_serving(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + _STARTUP_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if self._answers_v2():
                return True
            time.sleep(0.05)
        return False

    def _answers_v2(self) -> bool:
        try:
            with loopback_opener.open(f"{self.url}/v2/", timeout=2) as response:
                status, headers = response.status, response.headers
        except urllib.error.HTTPError as error:
            status, headers = error.code, error.headers
            error.close()
        except OSError:
            return False
        expected_status = 401 if self.auth is not None else 200
        return status == expected_status and headers.get(_IDENTITY_HEADER) == self._identity

    def _reap(self) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process = None
