"""What stops a push to the Hub, in words that say what to do: the checks before anything is uploaded (offline mode,
the token, write access to the namespace), and a failed request described (HTTP status, timeout or network error,
the request and its retries), the token never shown."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Mapping
from typing import Any

from huggingface_hub import HfApi, constants, get_token, set_client_factory
from huggingface_hub.errors import HfHubHTTPError

from ..core.upstream import current_client_factory, http_library

__all__ = ["TOKEN_HELP", "Traffic", "access_problem", "describe", "namespace_problem", "redact", "watched_session"]

TOKEN_HELP = (
    "Create a token with write access at https://huggingface.co/settings/tokens, then run `hf auth login` or set "
    "the HF_TOKEN environment variable"
)


def access_problem(repo_id: str, token: str | None, timeout: float | None, endpoint: str | None) -> str | None:
    """What stops a push to ``repo_id`` before anything is uploaded, or None. Never raises: in a distributed run
    the answer is shared with every process."""
    if constants.is_offline_mode():
        return (
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1), so nothing can be uploaded. Unset HF_HUB_OFFLINE "
            "on a machine that reaches the Hub."
        )
    token = token or get_token()
    if not token:
        return f"no Hugging Face token was found. {TOKEN_HELP}."
    traffic = Traffic()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with watched_session(timeout, traffic):
            identity = api.whoami(token=token)
    except Exception as err:
        return redact(describe(err, api.endpoint, timeout, repo_id, traffic), token)
    return namespace_problem(identity, repo_id)


def namespace_problem(identity: Mapping[str, Any], repo_id: str) -> str | None:
    """Whether ``whoami``'s answer lets the token write to ``repo_id``'s namespace; None when it does (or when the
    answer does not say)."""
    namespace = repo_id.split("/")[0]
    user = identity.get("name")
    orgs = {org.get("name"): org.get("roleInOrg") for org in identity.get("orgs") or [] if isinstance(org, dict)}
    access = (identity.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        return f"the token is read-only (role 'read'), so it can neither create nor write a repository. {TOKEN_HELP}."
    if namespace != user and namespace not in orgs:
        yours = ", ".join(repr(name) for name in [user, *orgs] if name)
        return (
            f"the token belongs to {user!r}, who may not write to the namespace {namespace!r} (the token's "
            f"namespaces: {yours}). Push to one of those, e.g. {user}/{repo_id.split('/')[-1]}, or use a token of "
            f"a member of {namespace!r} with write access."
        )
    if namespace in orgs and orgs[namespace] == "read":
        return (
            f"{user!r} has only read access to the organisation {namespace!r}. Ask an admin of {namespace!r} for "
            "write access, or push to your own namespace."
        )
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped")
        if isinstance(scoped, list):
            writable = {
                (entry.get("entity") or {}).get("name")
                for entry in scoped
                if isinstance(entry, dict) and "repo.write" in (entry.get("permissions") or [])
            }
            if namespace not in writable and repo_id not in writable:
                return (
                    f"the fine-grained token grants no write access ('repo.write') to {namespace!r} or {repo_id!r}. "
                    "Add that permission at https://huggingface.co/settings/tokens, or use a token with write access."
                )
    return None


@dataclasses.dataclass
class Traffic:
    """The requests a push sent (method and path of each attempt, retries included) and when it started."""

    attempts: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def record(self, request: Any) -> None:
        self.attempts.append((request.method, request.url.path))

    def last_request(self) -> tuple[str, int]:
        """The last request (``"POST /api/..."``) and how many attempts in a row it got."""
        if not self.attempts:
            return "a request", 0
        last = self.attempts[-1]
        tries = 0
        for attempt in reversed(self.attempts):
            if attempt != last:
                break
            tries += 1
        return f"{last[0]} {last[1]}", tries


@contextlib.contextmanager
def watched_session(timeout: float | None, traffic: Traffic) -> Iterator[None]:
    """huggingface_hub's shared HTTP client, with ``timeout`` on every request and each request recorded.

    The shared client has no timeout (a silent server would hang the end of training), and huggingface_hub
    closes and rebuilds it after a connection error, so the timeout and the recording go into the client factory
    for as long as the push runs. The previous factory is read from huggingface_hub 2.4's private state
    (``softprompt_hf.core.upstream.current_client_factory``): there is no public getter.
    """
    previous = current_client_factory()
    http = http_library()

    def factory() -> Any:
        client = previous()
        client.timeout = http.Timeout(timeout)
        client.event_hooks["request"].append(traffic.record)
        return client

    set_client_factory(factory)  # closes the current client: the next request gets one of ours
    try:
        yield
    finally:
        set_client_factory(previous)


def describe(err: Exception, endpoint: str, timeout: float | None, repo_id: str, traffic: Traffic) -> str:
    request, tries = traffic.last_request()
    total = len(traffic.attempts)
    waited = time.monotonic() - traffic.started
    retried = f" ({tries} attempts: huggingface_hub retried it)" if tries > 1 else ""
    summary = f" The push gave up after {total} request{'s' if total != 1 else ''} and {waited:.1f} s in total."
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            return f"the Hub at {endpoint} rejected the token (HTTP 401: invalid or expired). {TOKEN_HELP}."
        if status == 403:
            namespace = repo_id.split("/")[0]
            return (
                f"the token may not write to {namespace!r} (HTTP 403). Use a token with write access to that "
                "namespace, or push to your own namespace."
            )
        first_line = str(err).strip().splitlines()[0]
        return f"the Hub at {endpoint} answered HTTP {status} to {request}{retried}: {first_line}.{summary}"
    http = http_library()
    if isinstance(err, http.TimeoutException):
        return (
            f"the Hub at {endpoint} did not answer {request} within {timeout} s, {tries} "
            f"attempt{'s' if tries != 1 else ''} in a row (huggingface_hub retries timed-out requests).{summary} "
            "Check your connection, or push later with a longer timeout (--timeout, or --push_timeout in the "
            "recipes)."
        )
    if isinstance(err, http.TransportError | OSError):
        return (
            f"could not reach the Hub at {endpoint} (network error: {err}; {request}, {tries} "
            f"attempt{'s' if tries != 1 else ''}).{summary} Check the connection and HF_ENDPOINT."
        )
    return f"{type(err).__name__}: {err}."


def redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text
