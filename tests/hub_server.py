"""A local stand-in for the Hugging Face Hub, serving the real ``huggingface_hub`` client over HTTP.

What it implements, and only that: the endpoints the client calls to create a model repository, upload
files (preupload + NDJSON commit, every file as a "regular" base64 blob: it never asks for LFS or Xet),
validate a model card's YAML, read repository info and file listings, and download files (``HEAD``/``GET``
on ``/<repo>/resolve/<revision>/<path>``, with the ``X-Repo-Commit``, ``ETag`` and ``Content-Length``
headers the client reads). Repositories are public model repos on a single ``main`` branch; each commit
replaces or adds files (``deletedFile`` removes one) and gets a new commit hash. Writes need a token that
the server knows (401 with the Hub's "Invalid credentials" message otherwise); reads need none. Not
implemented (answered 404): private or gated repos, branches other than ``main``, pull requests, LFS/Xet
uploads, pagination, ``Range`` downloads, and every other endpoint. Each response closes its connection,
so a pooled client connection never outlives a server and reaches the next one on a reused port.

The ``hub`` fixture starts one with the tiny Bloom published as ``BASE_ID`` and points this process's
``huggingface_hub`` (and transformers' own ``HfApi``) at it; a subprocess only needs ``HF_ENDPOINT``.

``GET /api/whoami-v2`` answers the token's user, its organisations (``orgs``: user -> {org: role}, where a
"read" role may not write) and the token's role (``roles``: token -> "write" (default) or "read"). A user may
create and write repositories in their own namespace and in organisations where their role is not "read".

Fault injection for the tests: ``delay`` makes every request wait that many seconds before answering (a
client with a shorter timeout times out), ``delays`` does it only for paths that contain a key (e.g.
``{"/preupload/": 2.0}``), ``fail_commits`` answers that many commits with HTTP 500 (then succeeds again),
``failures`` answers every request whose path contains a key with that HTTP status (e.g. ``{"/commit/": 403}``),
``requests`` records ``(method, path)`` of every request, and ``authorizations`` the Authorization headers it saw.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub
import pytest
import transformers.utils.hub
import yaml
from huggingface_hub import constants

#: A token the test server accepts, for the user "alice".
TOKEN = "hf_TestSecretToken0123456789"
#: Where the hub fixture publishes the tiny Bloom base model.
BASE_ID = "tiny-org/tiny-bloom"


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0" * 40
    commits: int = 0


class HubServer:
    """``with HubServer(tokens={"hf_secret": "alice"}) as hub: ...``; ``hub.endpoint`` is its base URL."""

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, dict[str, str]] | None = None,
        roles: dict[str, str] | None = None,
    ) -> None:
        self.tokens = dict(tokens or {})
        self.orgs = dict(orgs or {})
        self.roles = dict(roles or {})
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.fail_commits = 0
        self.failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_folder(self, repo_id: str, folder: str | Path) -> None:
        """Publishes every file of a local folder as a repository (the test's stand-in for an existing model)."""
        repo = self.repos.setdefault(repo_id, Repo())
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                repo.files[path.relative_to(folder).as_posix()] = path.read_bytes()
        self._new_commit(repo)

    def count(self, method: str, part: str) -> int:
        """How many requests of ``method`` had ``part`` in their path."""
        return sum(1 for verb, path in self.requests if verb == method and part in path)

    def may_write(self, user: str, namespace: str) -> bool:
        return namespace == user or self.orgs.get(user, {}).get(namespace, "read") != "read"

    def _new_commit(self, repo: Repo) -> None:
        repo.commits += 1
        digest = hashlib.sha1(str(repo.commits).encode())
        for name in sorted(repo.files):
            digest.update(name.encode() + hashlib.sha256(repo.files[name]).digest())
        repo.sha = digest.hexdigest()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that timed out has closed its end before the (delayed) answer: expected in the timeout tests.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows failures itself
            pass

        # -- plumbing ---------------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            # One request per connection: a client's pooled connection must never outlive this server and reach
            # a later one that reuses the port.
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._json(status, {"error": message}, headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _user(self) -> str | None:
            """The token's user, or None after answering 401."""
            authorization = self.headers.get("Authorization", "")
            if authorization:
                hub.authorizations.append(authorization)
            token = authorization.removeprefix("Bearer ").strip()
            if token in hub.tokens:
                return hub.tokens[token]
            self._error(401, "Invalid credentials in Authorization header")
            return None

        def _route(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            delay = hub.delay + sum(seconds for part, seconds in hub.delays.items() if part in path)
            if delay:
                # Not time.sleep: tests replace huggingface_hub's retry sleeps, which are time.sleep.
                threading.Event().wait(delay)
            status = next((code for part, code in hub.failures.items() if part in path), None)
            if status is not None:
                self._body()
                return self._error(status, f"Injected failure: HTTP {status}")
            parts = path.strip("/").split("/")
            with hub._lock:
                if parts[:1] == ["api"]:
                    self._api(parts[1:])
                elif len(parts) >= 5 and parts[2] == "resolve":
                    self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
                else:
                    self._error(404, f"Not implemented by the test server: {self.command} {path}")

        do_GET = do_HEAD = do_POST = _route

        # -- API --------------------------------------------------------------------------------------
        def _api(self, parts: list[str]) -> None:
            if parts == ["repos", "create"] and self.command == "POST":
                return self._create_repo()
            if parts == ["validate-yaml"] and self.command == "POST":
                return self._validate_yaml()
            if parts == ["whoami-v2"] and self.command == "GET":
                return self._whoami()
            if len(parts) >= 3 and parts[0] == "models":
                repo_id, rest = "/".join(parts[1:3]), parts[3:]
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                if self.command == "GET" and (not rest or rest[0] == "revision"):
                    return self._info(repo_id, repo)
                if self.command == "GET" and rest[:1] == ["tree"]:
                    return self._tree(repo, "/".join(rest[2:]))
                if self.command == "POST" and rest[:1] == ["preupload"]:
                    return self._preupload(repo)
                if self.command == "POST" and rest[:1] == ["commit"]:
                    return self._commit(repo_id, repo)
            self._error(404, f"Not implemented by the test server: {self.command} /api/{'/'.join(parts)}")

        def _create_repo(self) -> None:
            user = self._user()
            if user is None:
                return
            payload = json.loads(self._body())
            namespace = payload.get("organization") or user
            if not hub.may_write(user, namespace) or self._read_only():
                return self._error(403, f"You cannot create repositories in {namespace!r}.")
            repo_id = f"{namespace}/{payload['name']}"
            if repo_id in hub.repos:
                # The Hub's 409 names the existing repo; create_repo(exist_ok=True) reads its "url".
                message = "You already created this model repo"
                body = {"error": message, "url": f"{hub.endpoint}/{repo_id}"}
                return self._json(409, body, {"X-Error-Message": message})
            hub.repos[repo_id] = Repo()
            self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

        def _read_only(self) -> bool:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            return hub.roles.get(token, "write") == "read"

        def _whoami(self) -> None:
            user = self._user()
            if user is None:
                return
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            orgs = [{"name": name, "roleInOrg": role} for name, role in sorted(hub.orgs.get(user, {}).items())]
            access = {"displayName": "test token", "role": hub.roles.get(token, "write")}
            self._json(
                200,
                {"type": "user", "name": user, "orgs": orgs, "auth": {"type": "access_token", "accessToken": access}},
            )

        def _validate_yaml(self) -> None:
            content = json.loads(self._body())["content"]
            if content.startswith("---\n"):
                try:
                    yaml.safe_load(content.split("---\n")[1])
                except yaml.YAMLError as err:
                    return self._json(400, {"errors": [{"message": str(err)}]})
            self._json(200, {"errors": [], "warnings": []})

        def _info(self, repo_id: str, repo: Repo) -> None:
            siblings = [{"rfilename": name, "size": len(data)} for name, data in sorted(repo.files.items())]
            self._json(
                200, {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "siblings": siblings}
            )

        def _tree(self, repo: Repo, folder: str) -> None:
            prefix = f"{folder}/" if folder else ""
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(repo.files.items())
                if name.startswith(prefix)
            ]
            if folder and not entries:
                return self._error(404, f"{folder} does not exist on main", "EntryNotFound")
            self._json(200, entries)

        def _preupload(self, repo: Repo) -> None:
            if self._user() is None:
                return
            files = json.loads(self._body())["files"]
            # Always "regular" (base64 in the commit); no oid, so the client always sends the content.
            self._json(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )

        def _commit(self, repo_id: str, repo: Repo) -> None:
            user = self._user()
            if user is None:
                return
            if not hub.may_write(user, repo_id.split("/")[0]) or self._read_only():
                return self._error(403, f"You may not write to {repo_id!r}.")
            if hub.fail_commits:
                hub.fail_commits -= 1
                self._body()
                return self._error(500, "Internal Error - We're working hard to fix this as soon as possible!")
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                return self._error(400, "A commit starts with a header line")
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file" and value.get("encoding") == "base64":
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    repo.files.pop(value["path"], None)
                else:
                    return self._error(400, f"The test server does not implement commit operation {key!r}")
            hub._new_commit(repo)
            self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{repo.sha}", "commitOid": repo.sha})

        # -- downloads --------------------------------------------------------------------------------
        def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "Repository not found", "RepoNotFound")
            if revision not in ("main", repo.sha):
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            data = repo.files.get(filename)
            if data is None:
                return self._error(404, "Entry not found", "EntryNotFound")
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            self._send(200, data, {"X-Repo-Commit": repo.sha, "ETag": etag, "Content-Type": "application/octet-stream"})

    return Handler


@pytest.fixture(name="hub")
def hub_fixture(monkeypatch, tmp_path, model_dirs):
    """The local Hub, with the tiny Bloom published as BASE_ID, and huggingface_hub pointed at it."""
    with HubServer(tokens={TOKEN: "alice"}) as server:
        server.add_folder(BASE_ID, model_dirs["bloom"])
        # Runs train from a local copy of the base model, as recipes do; its Hub id is passed separately.
        server.base_dir = model_dirs["bloom"]
        server.home = tmp_path / "hf-home"
        point_hub_client_at(monkeypatch, server.endpoint, server.home)
        yield server


def point_hub_client_at(monkeypatch, endpoint: str, home: Path) -> None:
    """Points huggingface_hub and transformers in this process at ``endpoint``, with a fresh cache and no token."""
    # huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and the cache and token paths when it is imported.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # transformers keeps its own HfApi
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
