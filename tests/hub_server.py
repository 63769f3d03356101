"""A small Hugging Face Hub stand-in for tests: the Hub's HTTP API on 127.0.0.1, files kept in memory.

    from hub_server import LocalHub

    hub = LocalHub(token="hf_test", user="user")
    with hub as url:                       # "http://127.0.0.1:PORT"
        hub.add_dataset("user/ds", {"train.csv": b"text,label\\nhi,0\\n"})
        env = {**os.environ, **hub.client_env(tmp_path / "hf")}   # HF_ENDPOINT, HF_TOKEN, HF_HOME, ...
        ...                                # push_to_hub / from_pretrained / load_dataset in a subprocess
                                           # with env (drop HF_HUB_OFFLINE=1 if your runner sets it)
        hub.files("user/model")            # {path: bytes} at main (or files(repo, "dev"), "refs/pr/1")
        hub.requests                       # [(method, path), ...] in arrival order
        hub.calls                          # the same, with query and JSON payload: Call(method, path, query, payload)

It answers what ``huggingface_hub`` 2.4, ``transformers`` 5.24 and ``datasets`` 5.2 call for an upload
and a download (see NOTES.md, "Hub"):

    POST /api/repos/create                               create a repo (409 if it exists)
    POST /api/validate-yaml                              README front matter must be a YAML mapping
    GET  /api/agent-harnesses                            an empty registry (huggingface_hub asks daily)
    GET  /api/whoami-v2                                  the token's user
    GET  /api/{models,datasets}/{repo}[/revision/{rev}]  repo info (sha, siblings, private)
    GET  /api/{models,datasets}/{repo}/tree/{rev}[/{path}][?recursive=]   listing; 404 EntryNotFound
    POST /api/{models,datasets}/{repo}/paths-info/{rev}  form ``paths=...``
    POST /api/{models,datasets}/{repo}/preupload/{rev}   always ``uploadMode: regular``
    POST /api/{models,datasets}/{repo}/commit/{rev}      NDJSON, files base64 inline; ``?create_pr=1``
                                                         commits to a new ``refs/pr/N`` based on ``rev``
    POST /api/{models,datasets}/{repo}/branch/{branch}   create a branch (409 if it exists)
    GET/HEAD /[datasets/]{repo}/resolve/{rev}/{path}     X-Repo-Commit, ETag (git blob sha1), Range

Every commit is kept (``rev`` may be a branch, ``refs/pr/N`` or any commit sha). Writes need ``Authorization: Bearer
<token>`` (401 otherwise, as the Hub answers a bad token), repos of another namespace are refused
(403), and private repos are readable only with the token. Errors carry the Hub's ``X-Error-Code``
headers so the client raises its usual exceptions. Repo ids are ``namespace/name``. Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset"}
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat().replace("+00:00", ".000Z")


class HubError(Exception):
    """An HTTP error answer: status, the Hub's ``X-Error-Code`` (or None) and a message."""

    def __init__(self, status: int, code: str | None, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def blob_oid(data: bytes) -> str:
    """Git's blob id of ``data``: the ETag and ``oid`` the Hub gives a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Call:
    """One request as the server saw it: ``payload`` is the JSON body (a commit's NDJSON header), or None."""

    method: str
    path: str
    query: dict[str, str]
    payload: dict | None


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    messages: dict[str, str] = field(default_factory=dict)  # sha -> commit summary
    refs: dict[str, str] = field(default_factory=dict)  # branch or "refs/pr/N" -> sha

    @property
    def main(self) -> str:
        return self.refs.get("main", "")

    def commit(self, files: dict[str, bytes], message: str, ref: str = "main") -> str:
        digest = hashlib.sha1(self.refs.get(ref, "").encode() + ref.encode() + message.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + blob_oid(files[path]).encode())
        sha = digest.hexdigest()
        self.commits[sha], self.messages[sha], self.refs[ref] = dict(files), message, sha
        return sha

    def resolve(self, revision: str) -> tuple[str, dict[str, bytes]]:
        sha = self.refs.get(revision, revision)
        if sha not in self.commits:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha, self.commits[sha]

    def create_branch(self, name: str, starting_point: str = "main") -> None:
        if name in self.refs:
            raise HubError(409, None, f"Reference already exists: refs/heads/{name}")
        self.refs[name] = self.resolve(starting_point)[0]

    def open_pr(self, base: str) -> str:
        """A new ``refs/pr/N`` starting at ``base``; returns its name."""
        number = 1 + sum(ref.startswith("refs/pr/") for ref in self.refs)
        ref = f"refs/pr/{number}"
        self.refs[ref] = self.resolve(base)[0]
        return ref


class LocalHub:
    """The server. ``with hub as url`` starts it on a free port and yields its base URL."""

    def __init__(self, token: str = "hf_test_token", user: str = "user", orgs: tuple[str, ...] = ()):
        self.token, self.user, self.namespaces = token, user, {user, *orgs}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.url = ""
        self._server: _Server | None = None

    def __enter__(self) -> str:
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # --- helpers for tests ---------------------------------------------------------------------

    def client_env(self, hf_home: str | os.PathLike) -> dict[str, str]:
        """Environment for a client subprocess (set before huggingface_hub is imported) that talks to
        this server with its token, caches under ``hf_home``, and never tries Xet storage."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": self.token,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", private: bool = False
    ) -> str:
        """Create (or add a commit to) a repo holding ``files``; returns the commit sha."""
        with self.lock:
            repo = self._create(repo_type, repo_id, private)
            return repo.commit({**repo.commits.get(repo.main, {}), **files}, "add files")

    def add_dataset(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A dataset repo ``repo_id`` with ``files`` (e.g. ``{"train.csv": b"..."}``) at main."""
        return self.add_repo(repo_id, files, repo_type="dataset")

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (a branch, ``refs/pr/N`` or a commit sha)."""
        return dict(self.repo(repo_id, repo_type).resolve(revision)[1])

    # --- state changes (called with the lock held) -----------------------------------------------

    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        key = (repo_type, repo_id)
        if key not in self.repos:
            self.repos[key] = Repo(repo_type, repo_id, private)
            self.repos[key].commit({}, "initial commit")
        return self.repos[key]

    def _lookup(self, repo_type: str, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_type}s/{repo_id}")
        return repo


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: LocalHub):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    # --- plumbing ------------------------------------------------------------------------------

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        body = (
            self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command == "POST" else b""
        )
        query = parse_qs(split.query)
        with self.hub.lock:
            self.hub.requests.append((self.command, split.path))
            self.hub.calls.append(
                Call(self.command, split.path, {k: v[0] for k, v in query.items()}, _payload(body))
            )
        try:
            with self.hub.lock:
                answer = self._route(split.path, query, body)
        except HubError as e:
            self._send(e.status, json.dumps({"error": e.message, **e.extra}).encode(), _error_headers(e))
            return
        self._send(*answer)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _require_token(self) -> None:
        if not self._authorized():
            raise HubError(401, None, "Invalid credentials in Authorization header")

    # --- routes --------------------------------------------------------------------------------

    def _route(self, path: str, query: dict, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        parts = path.strip("/").split("/")
        method = self.command
        if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if parts == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if parts == ["api", "agent-harnesses"]:  # huggingface_hub's agent-detection registry: empty
            return _json({"standardEnvVars": [], "harnesses": {}})
        if parts == ["api", "whoami-v2"]:
            self._require_token()
            return _json(
                {"type": "user", "name": self.hub.user, "orgs": [], "auth": {"type": "access_token"}}
            )
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            return self._api(REPO_TYPES[parts[1]], "/".join(parts[2:4]), parts[4:], query, body)
        if len(parts) >= 5 and parts[0] == "datasets" and parts[3] == "resolve":
            return self._resolve("dataset", "/".join(parts[1:3]), parts[4:])
        if len(parts) >= 4 and parts[2] == "resolve":
            return self._resolve("model", "/".join(parts[0:2]), parts[3:])
        raise HubError(404, None, f"{method} {path} is not implemented by this test Hub")

    def _api(self, repo_type: str, repo_id: str, rest: list[str], query: dict, body: bytes):
        repo = self.hub._lookup(repo_type, repo_id, self._authorized())
        action = rest[0] if rest else "revision"
        revision = unquote(rest[1]) if len(rest) > 1 else "main"
        if action == "revision" and self.command in ("GET", "HEAD"):
            return self._info(repo, revision)
        if action == "tree" and self.command == "GET":
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._tree(repo, revision, unquote("/".join(rest[2:])), recursive)
        if action == "paths-info" and self.command == "POST":
            return self._paths_info(repo, revision, parse_qs(body.decode()).get("paths", []))
        if action == "preupload" and self.command == "POST":
            self._require_token()
            return self._preupload(repo, revision, json.loads(body))
        if action == "commit" and self.command == "POST":
            self._require_token()
            return self._commit(repo, revision, body, query)
        if action == "branch" and self.command == "POST":
            self._require_token()
            repo.create_branch(revision, json.loads(body or b"{}").get("startingPoint") or "main")
            return _json({})
        raise HubError(
            404, None, f"{self.command} /api/{repo_type}s/{repo_id}/{'/'.join(rest)} is not implemented"
        )

    def _create_repo(self, payload: dict):
        self._require_token()
        namespace = payload.get("organization") or self.hub.user
        repo_id = f"{namespace}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        if namespace not in self.hub.namespaces:
            raise HubError(
                403,
                None,
                f"You don't have the rights to create a {repo_type} under the namespace {namespace!r}",
            )
        url = f"{self.hub.url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            raise HubError(
                409, None, f"You already created this {repo_type} repo", url=url
            )  # client reads "url"
        self.hub._create(
            repo_type, repo_id, payload.get("visibility") == "private" or bool(payload.get("private"))
        )
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict):
        import yaml  # the test environment has PyYAML (a dependency of the package)

        content = payload.get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as e:
                raise HubError(400, None, f"Invalid YAML in README.md front matter: {e}") from None
            if not isinstance(meta, dict):
                raise HubError(400, None, "README.md front matter must be a YAML mapping")
        return _json({"errors": [], "warnings": []})

    def _info(self, repo: Repo, revision: str):
        sha, files = repo.resolve(revision)
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": NOW,
            "lastModified": NOW,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return _json(info, {"X-Repo-Commit": sha})

    def _tree(self, repo: Repo, revision: str, folder: str, recursive: bool):
        _, files = repo.resolve(revision)
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        entries: dict[str, dict] = {}
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                sub = prefix + "/".join(parts[:i])
                entries.setdefault(sub, _folder_entry(sub))
            if recursive or len(parts) == 1:
                entries[path] = _file_entry(path, files[path])
        return _json(list(entries.values()))

    def _paths_info(self, repo: Repo, revision: str, paths: list[str]):
        _, files = repo.resolve(revision)
        found = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                found.append(_file_entry(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                found.append(_folder_entry(path))
        return _json(found)

    def _preupload(self, repo: Repo, revision: str, payload: dict):
        sha, files = repo.resolve(revision)
        answer = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": blob_oid(files[f["path"]]) if f["path"] in files else None,
            }
            for f in payload.get("files", [])
        ]
        return _json({"files": answer, "commitOid": sha})

    def _commit(self, repo: Repo, revision: str, body: bytes, query: dict):
        _, files = repo.resolve(revision)
        if revision not in repo.refs:
            raise HubError(400, None, f"Commit to a branch, not to the commit {revision}")
        ref = repo.open_pr(revision) if query.get("create_pr", [""])[0] in ("1", "true") else revision
        files, summary = dict(files), "commit"
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary") or summary
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, None, f"This test Hub accepts regular files only, not {key!r}")
        sha = repo.commit(files, summary, ref)
        prefix = f"{self.hub.url}/{'' if repo.repo_type == 'model' else 'datasets/'}{repo.repo_id}"
        pr = f"{prefix}/discussions/{ref.rsplit('/', 1)[-1]}" if ref.startswith("refs/pr/") else None
        return _json({"commitUrl": f"{prefix}/commit/{sha}", "commitOid": sha, "pullRequestUrl": pr})

    def _resolve(self, repo_type: str, repo_id: str, rest: list[str]):
        repo = self.hub._lookup(repo_type, repo_id, self._authorized())
        sha, files = repo.resolve(unquote(rest[0]))
        path = unquote("/".join(rest[1:]))
        if path not in files:
            raise HubError(
                404,
                "EntryNotFound",
                f"{path} does not exist on {rest[0]}",
            )
        data = files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{blob_oid(data)}"',
            "Accept-Ranges": "bytes",
        }
        span = _range(self.headers.get("Range"), len(data))
        if span is None:
            return 200, data, headers
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return 206, data[start:end], headers


def _payload(body: bytes) -> dict | None:
    """A request's JSON body, or the header (first line) of an NDJSON commit; None for anything else."""
    if not body.strip():
        return None
    try:
        first = json.loads(body)
    except ValueError:
        try:
            first = json.loads(body.splitlines()[0])
        except ValueError:
            return None
    if isinstance(first, dict) and first.get("key") == "header":
        return first.get("value")
    return first if isinstance(first, dict) else None


def _error_headers(e: HubError) -> dict[str, str]:
    headers = {"X-Error-Message": e.message}
    if e.code:
        headers["X-Error-Code"] = e.code
    return headers


def _json(obj, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    return 200, json.dumps(obj).encode(), dict(headers or {})


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "path": path, "size": len(data), "oid": blob_oid(data)}


def _folder_entry(path: str) -> dict:
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of a ``Range: bytes=...`` request, end exclusive; None for the whole file."""
    match = RANGE.match(header or "")
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if not first:  # the last N bytes
        return max(0, size - int(last)), size
    end = min(size, int(last) + 1) if last else size
    if int(first) >= size:
        raise HubError(416, None, f"Range {header} is past the end ({size} bytes)")
    return int(first), end
