"""A small OCI distribution client over urllib: blobs (HEAD, GET, monolithic upload), manifests
(PUT and GET by tag or digest) and the referrers API, which is all `attach_referrers` and
`verify_referrers` (verify.py) need, with no registry library.

Plain HTTP for loopback registries (127.0.0.0/8, ::1, localhost; as Docker and `gapforge load` do)
or when the operator says `tls_verify=False` (`--no-tls-verify`); HTTPS otherwise. A loopback
registry is never reached through a proxy. Credentials: `--creds USER:PASS`, else the registry's
entry in a docker config.json or a containers auth.json (`docker login`, `skopeo login`), sent as
Basic, or exchanged for a Bearer token when the registry asks for one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.errors import GapforgeError
from gapforge.registry import MANIFEST_TYPES, OCI_INDEX, is_loopback

FIX_REACH = (
    "check that the registry runs, that HOST[:PORT] is right and that this machine can reach it"
)
FIX_AUTH = "pass --creds USER:PASS, or log in first ('docker login HOST' or 'skopeo login HOST')"


class RegistryError(GapforgeError):
    """The registry cannot be reached, refused a request, or answered something unusable."""


class NotFound(RegistryError):
    """The manifest or blob asked for is not in the repository (HTTP 404)."""


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of `data`: the digest a registry names a blob or manifest by."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes

    def header(self, name: str) -> str:
        """A header's value ('' when absent), whatever the case of `name`."""
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True)
class Manifest:
    data: bytes
    """The bytes as the registry stored them (their sha256 is the digest)."""
    media_type: str
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)

    def json(self) -> dict[str, Any]:
        """The manifest as a JSON object; RegistryError when it is not one."""
        try:
            value = json.loads(self.data)
        except (ValueError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


@dataclass(frozen=True)
class PutManifest:
    digest: str
    """The digest the registry stored the manifest as."""
    subject: str
    """The `OCI-Subject` header: set when the registry indexed the manifest's subject itself."""


def _auth_files() -> list[Path]:
    docker = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    files = [Path(os.environ["REGISTRY_AUTH_FILE"])] if os.environ.get("REGISTRY_AUTH_FILE") else []
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    return [*files, Path.home() / ".config" / "containers" / "auth.json", docker]


def stored_credentials(registry: str, files: Iterable[Path] | None = None) -> str | None:
    """`USER:PASS` for `registry` from the first docker config.json or containers auth.json whose
    `auths` names it (as `HOST`, `https://HOST` or `https://HOST/v1/`); credential helpers are
    not asked."""
    for path in _auth_files() if files is None else files:
        try:
            auths = json.loads(path.read_text()).get("auths", {})
        except (OSError, ValueError, AttributeError):
            continue
        for key, entry in auths.items() if isinstance(auths, dict) else ():
            host = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
            if host == registry and isinstance(entry, dict) and entry.get("auth"):
                try:
                    return base64.b64decode(entry["auth"]).decode()
                except (ValueError, UnicodeDecodeError):
                    continue
    return None


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryClient:
    """One registry (`HOST[:PORT]`), talked to over HTTPS, or plain HTTP for loopback hosts or
    with `tls_verify=False`."""

    def __init__(
        self, registry: str, tls_verify: bool | None = None, creds: str | None = None,
        timeout: float = 60.0,
    ) -> None:  # fmt: skip
        self.registry = registry
        loopback = is_loopback(registry)
        secure = (not loopback) if tls_verify is None else tls_verify
        self.base = f"{'https' if secure else 'http'}://{registry}"
        self.timeout = timeout
        self._creds = creds if creds is not None else stored_credentials(registry)
        if self._creds is not None and ":" not in self._creds:
            raise RegistryError(f"--creds for {registry}: expected USER:PASS")
        handlers: list[urllib.request.BaseHandler] = []
        if loopback:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)
        self._authorization: str | None = None

    # --- HTTP -----------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return path if "://" in path else self.base + path

    def _send(
        self, method: str, url: str, data: bytes | None, headers: Mapping[str, str]
    ) -> Response:
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers))
        if self._authorization:
            request.add_header("Authorization", self._authorization)
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                return Response(answer.status, _lower(answer.headers.items()), answer.read())
        except urllib.error.HTTPError as error:
            with error:
                body = error.read()
            return Response(error.code, _lower(error.headers.items()), body)
        except urllib.error.URLError as exc:
            reason = str(getattr(exc, "reason", exc))
            hint = ""
            if "wrong version number" in reason.lower() or "record layer" in reason.lower():
                hint = " (it speaks plain HTTP: pass --no-tls-verify)"
            elif "certificate" in reason.lower():
                hint = " (its TLS certificate is not trusted here: install the site's CA, or pass --no-tls-verify)"
            raise RegistryError(
                f"registry {self.registry} cannot be reached at {self.base}: {reason}{hint}; {FIX_REACH}"
            ) from None
        except (TimeoutError, ConnectionError) as exc:
            raise RegistryError(
                f"registry {self.registry} did not answer at {self.base} ({exc}); {FIX_REACH}"
            ) from None

    def request(
        self, method: str, path: str, data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:  # fmt: skip
        """One request; a 401 is answered once with the credentials (Basic, or a Bearer token)."""
        url = self._url(path)
        answer = self._send(method, url, data, headers or {})
        if answer.status == 401 and self._authorize(answer.header("www-authenticate")):
            answer = self._send(method, url, data, headers or {})
        if answer.status == 401:
            raise RegistryError(
                f"registry {self.registry} refused {method} {urllib.parse.urlsplit(url).path}: "
                f"it needs credentials{' (the ones given were refused)' if self._creds else ''}: "
                f"{FIX_AUTH}"
            )
        if answer.status == 400 and b"http request to an https server" in answer.body.lower():
            raise RegistryError(
                f"registry {self.registry} speaks HTTPS, not plain HTTP: leave out --no-tls-verify"
            )
        return answer

    def _authorize(self, challenge: str) -> bool:
        """Set the Authorization header a 401's challenge asks for; False when nothing can be tried."""
        scheme = challenge.split(" ", 1)[0].lower()
        basic = "Basic " + base64.b64encode(self._creds.encode()).decode() if self._creds else None
        if scheme == "basic" and basic and self._authorization != basic:
            self._authorization = basic
            return True
        if scheme != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.pop("realm", "")
        if not realm:
            return False
        token_url = realm + "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(
            token_url, headers={"Authorization": basic} if basic else {}
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                value = json.loads(answer.read())
        except (urllib.error.URLError, ValueError, OSError) as exc:
            raise RegistryError(
                f"registry {self.registry}: its token service {realm} refused or failed ({exc}): "
                f"{FIX_AUTH}"
            ) from None
        token = value.get("token") or value.get("access_token") if isinstance(value, dict) else None
        if not token or self._authorization == f"Bearer {token}":
            return False
        self._authorization = f"Bearer {token}"
        return True

    def _fail(self, method: str, what: str, answer: Response) -> RegistryError:
        detail = _error_text(answer.body)
        if answer.status == 404:
            return NotFound(f"{what}: not in registry {self.registry} ({detail or 'HTTP 404'})")
        if answer.status == 403:
            return RegistryError(
                f"registry {self.registry} denied {method} {what} ({detail or 'HTTP 403'}): the "
                "account has no right to it: use an account that may push/pull this repository"
            )
        return RegistryError(
            f"registry {self.registry}: {method} {what} answered HTTP {answer.status}"
            f"{f' ({detail})' if detail else ''}"
        )

    # --- the distribution API ---------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: raises RegistryError, naming the fix, when it is not an OCI registry we can use."""
        answer = self.request("GET", "/v2/")
        if answer.status != 200:
            raise self._fail("GET", "/v2/", answer)

    def blob_exists(self, repo: str, digest: str) -> bool:
        """HEAD the blob: True when the repository has it."""
        answer = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if answer.status in (200, 307):
            return True
        if answer.status == 404:
            return False
        raise self._fail("HEAD", f"{repo} blob {digest}", answer)

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload `data` (POST, then one monolithic PUT with `?digest=`) unless the repository
        already has it; returns its digest."""
        digest = sha256_digest(data)
        if self.blob_exists(repo, digest):
            return digest
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
        location = started.header("location")
        if started.status != 202 or not location:
            raise self._fail("POST", f"{repo} blob upload", started)
        url = urllib.parse.urljoin(self.base + "/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        done = self.request("PUT", url, data, headers)
        if done.status != 201:
            raise self._fail("PUT", f"{repo} blob {digest}", done)
        return digest

    def get_blob(self, repo: str, digest: str) -> bytes:
        """The blob's bytes, NOT checked against `digest` (the caller does, and says which failed)."""
        answer = self.request("GET", f"/v2/{repo}/blobs/{digest}")
        if answer.status != 200:
            raise self._fail("GET", f"{repo} blob {digest}", answer)
        return answer.body

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> PutManifest:
        """PUT a manifest or index under a tag or its digest."""
        answer = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", data, {"Content-Type": media_type}
        )
        if answer.status not in (200, 201):
            raise self._fail("PUT", f"{repo} manifest {reference}", answer)
        stored = answer.header("docker-content-digest") or sha256_digest(data)
        return PutManifest(stored, answer.header("oci-subject"))

    def get_manifest(
        self, repo: str, reference: str, accept: Iterable[str] = MANIFEST_TYPES
    ) -> Manifest:
        """The manifest at a tag or digest; raises NotFound when there is none, and RegistryError
        when a digest reference answers other bytes."""
        answer = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ", ".join(accept)}
        )
        if answer.status != 200:
            raise self._fail("GET", f"{repo}:{reference}" if ":" not in reference else f"{repo}@{reference}", answer)  # fmt: skip
        digest = sha256_digest(answer.body)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"registry {self.registry} answered {repo}@{reference} with a manifest whose "
                f"sha256 is {digest}: the registry's copy is corrupt or altered"
            )
        media_type = answer.header("content-type").split(";")[0].strip()
        with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
            media_type = str(json.loads(answer.body).get("mediaType") or media_type)
        return Manifest(answer.body, media_type, digest)

    def referrers(self, repo: str, digest: str) -> dict[str, Any] | None:
        """The referrers API's image index for `digest`, or None where the registry has no
        referrers API (the caller then reads the `sha256-<hex>` tag)."""
        answer = self.request(
            "GET", f"/v2/{repo}/referrers/{digest}", headers={"Accept": OCI_INDEX}
        )
        if answer.status == 403:
            raise self._fail("GET", f"{repo} referrers of {digest}", answer)
        if answer.status != 200:
            return (
                None  # 404 (the spec's "not supported"), or a registry that does not know the path
            )
        try:
            index = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            return None
        return index


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def _error_text(body: bytes) -> str:
    """The registry's `{"errors": [{"code", "message"}]}` as one line, else the start of the body."""
    try:
        errors = json.loads(body).get("errors", [])
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
    except (ValueError, UnicodeDecodeError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip()
