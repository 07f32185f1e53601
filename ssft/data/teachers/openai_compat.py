"""The ``openai`` teacher: any OpenAI-compatible chat-completions endpoint.

Works with ``vllm serve``, llama.cpp's server, SGLang or a hosted API: one POST to
``{base_url}/chat/completions`` per question asks for all ``num_samples`` answers at once
(``n``). Some servers ignore ``n`` and return one choice, so the teacher keeps asking for the
missing ones until the question has its ``num_samples`` texts. Questions run on a small thread
pool (at most ``batch_size`` requests in flight); results come back grouped by question in
input order, whatever order the requests finish in.

The server applies the model's chat template, so ``use_chat_template`` does not apply here;
``system_prompt`` (if set) is sent as a system message before the question.

Why the standard library (``urllib``) and not an SDK: the teacher needs one POST with retries,
and ``ssft`` adds no dependency for it.

Failures, and what happens:

    connection error, timeout, HTTP 429, HTTP 5xx  -> retried up to ``max_retries`` times with
                                                      exponential backoff + seeded jitter
    any other HTTP 4xx (bad model name, 401, ...)  -> fails at once: status + server message

Secrets: the API key is read from ``os.environ[cfg.api_key_env]`` at request time (the config
only holds the variable's NAME), is sent only in the ``Authorization`` header, and is
redacted from every error message (servers sometimes echo a key back in a 401 body).
``api_key_env`` empty or None means the server needs no key (a local ``vllm serve``).

Seeds are best effort: each request carries a seed derived from (seed, question, request
number); servers that honour it (vLLM) give repeatable samples, hosted APIs usually do not.
``num_tokens`` is ``usage.completion_tokens`` only for single-choice responses: with n > 1 the
usage is a total, and splitting it evenly would invent lengths.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ssft.data.teachers.base import Question, Sample, Teacher
from ssft.errors import InputError

_MAX_ERROR_CHARS = 300
_MAX_EMPTY_ROUNDS = 3  # consecutive responses without a usable choice before giving up
_MAX_BACKOFF_S = 60.0


class TeacherRequestError(RuntimeError):
    """A chat-completions request failed for good (after retries, or a non-retryable 4xx)."""


class TeacherRejected(InputError, TeacherRequestError):
    """The server refused the request itself (401, 403, 404, 422, ...): a wrong key, model
    name or URL. Retrying cannot help, so the build stops at once with this one line."""


def _derived_seed(seed: int, question_id: str, request_no: int) -> int:
    key = f"{seed}|{question_id}|{request_no}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


class _Retryable(Exception):
    """Internal: a failure worth another attempt; ``retry_after`` comes from the server."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAITeacher(Teacher):
    """Samples answers from an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        for field in ("base_url", "model"):
            if not getattr(cfg, field, None):
                raise ValueError(
                    f"teacher {cfg.name!r}: kind 'openai' needs {field} (e.g. base_url="
                    "'http://127.0.0.1:8000/v1', model='Qwen/Qwen2.5-7B-Instruct')"
                )
        if int(cfg.max_retries) < 0 or float(cfg.request_timeout_s) <= 0:
            raise ValueError(
                f"teacher {cfg.name!r}: max_retries={cfg.max_retries} must be >= 0 and "
                f"request_timeout_s={cfg.request_timeout_s} must be > 0"
            )
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        # First backoff step in seconds (doubles per retry); tests shrink it.
        self.backoff_base_s = 0.5

    def __repr__(self) -> str:
        # Spelled out so a future attribute holding a secret can never leak through repr.
        return (
            f"OpenAITeacher(name={self.name!r}, model={self.cfg.model!r}, url={self.url!r}, "
            f"api_key_env={self.cfg.api_key_env!r})"
        )

    # -- public API -------------------------------------------------------------------------

    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
        """``num_samples`` answers per question, grouped by question in input order."""
        if num_samples <= 0 or not questions:
            return []
        self._api_key()  # a missing key fails before any thread or request starts
        workers = max(1, min(int(self.cfg.batch_size), len(questions)))
        refused = threading.Event()  # set by the first refusal: queued questions send nothing

        def sample(question: Question) -> list[Sample]:
            if refused.is_set():
                raise TeacherRejected(f"teacher {self.name!r}: not sent, the server refused")
            try:
                return self._sample_question(question, num_samples, seed)
            except TeacherRejected:
                refused.set()
                raise

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-teacher") as pool:
            futures = [pool.submit(sample, q) for q in questions]
            try:
                # Reading in submission order keeps the output grouped in input order.
                per_question = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return [s for group in per_question for s in group]

    # -- one question -------------------------------------------------------------------------

    def _messages(self, question: Question) -> list[dict[str, str]]:
        messages = []
        if self.cfg.system_prompt:
            messages.append({"role": "system", "content": self.cfg.system_prompt})
        messages.append({"role": "user", "content": question.prompt})
        return messages

    def _sample_question(self, question: Question, num_samples: int, seed: int) -> list[Sample]:
        """Asks for the missing samples until ``num_samples`` usable texts are collected."""
        rng = random.Random(_derived_seed(seed, question.question_id, -1))  # backoff jitter
        samples: list[Sample] = []
        request_no = empty_rounds = 0
        while len(samples) < num_samples:
            n = num_samples - len(samples)
            body = {
                "model": self.cfg.model,
                "messages": self._messages(question),
                "temperature": self.cfg.temperature,
                "top_p": self.cfg.top_p,
                "max_tokens": self.cfg.max_new_tokens,
                "n": n,
                "seed": _derived_seed(seed, question.question_id, request_no),
            }
            response = self._post_with_retries(body, rng)
            request_no += 1
            texts = [t for t in _choice_texts(response) if t][:n]
            if not texts:
                empty_rounds += 1
                if empty_rounds >= _MAX_EMPTY_ROUNDS:
                    raise TeacherRequestError(
                        f"teacher {self.name!r}: {self.url} returned no non-empty choice in "
                        f"{empty_rounds} consecutive responses for question "
                        f"{question.question_id!r}; check the model and max_new_tokens"
                    )
                continue
            empty_rounds = 0
            num_tokens = _completion_tokens(response) if len(texts) == 1 and n == 1 else None
            samples += [Sample(question.question_id, self.name, t, num_tokens) for t in texts]
        return samples

    # -- HTTP -----------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        env = self.cfg.api_key_env
        if not env:
            return None
        key = os.environ.get(env)
        if not key:
            raise ValueError(
                f"teacher {self.name!r}: environment variable {env!r} (api_key_env) is not set "
                "or empty; export it with the API key, or set api_key_env to null for a "
                "server without authentication"
            )
        return key

    def _post_with_retries(self, body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        attempts = int(self.cfg.max_retries) + 1
        for attempt in range(attempts):
            try:
                return self._post(body)
            except _Retryable as err:
                if attempt == attempts - 1:
                    raise TeacherRequestError(
                        f"teacher {self.name!r}: POST {self.url} failed after {attempts} "
                        f"attempt(s) (max_retries={self.cfg.max_retries}); last error: {err}"
                    ) from None
                delay = self.backoff_base_s * 2**attempt
                delay += rng.uniform(0, delay / 2)  # jitter spreads out retrying threads
                time.sleep(min(max(delay, err.retry_after or 0.0), _MAX_BACKOFF_S))
        raise AssertionError("unreachable: the loop returns or raises")

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request; raises ``_Retryable`` or ``TeacherRequestError``, never leaks the key."""
        key = self._api_key()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        timeout = float(self.cfg.request_timeout_s)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            status, message = err.code, _redact(_error_message(err), key)
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status}: {message}", _retry_after(err)) from None
            hint = ""
            if status in (401, 403):
                hint = (
                    f"; check the key in ${self.cfg.api_key_env}"
                    if self.cfg.api_key_env
                    else ("; the server wants a key: set api_key_env to the variable that holds it")
                )
            elif status == 404:
                hint = "; check base_url and the model name"
            raise TeacherRejected(
                f"teacher {self.name!r}: POST {self.url} failed with HTTP {status} (not "
                f"retried): {message}{hint}"
            ) from None
        except TimeoutError:
            raise _Retryable(
                f"timed out after request_timeout_s={timeout}s; raise it for slow servers "
                "or long generations"
            ) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise _Retryable(
                    f"timed out after request_timeout_s={timeout}s; raise it for slow servers "
                    "or long generations"
                ) from None
            raise _Retryable(f"cannot reach {self.url}: {_redact(str(err.reason), key)}") from None
        except (OSError, http.client.HTTPException) as err:  # reset or cut off mid-response
            raise _Retryable(f"connection error: {_redact(str(err), key)}") from None
        try:
            response = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Retryable(f"response is not JSON: {_redact(_clip(raw), key)!r}") from None
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            raise TeacherRequestError(
                f"teacher {self.name!r}: {self.url} answered without a 'choices' list: "
                f"{_redact(_clip(raw), key)!r}; is base_url an OpenAI-compatible /v1 root?"
            )
        return response


def _choice_texts(response: dict[str, Any]) -> list[str]:
    texts = []
    for choice in response["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        texts.append(content if isinstance(content, str) else "")
    return texts


def _completion_tokens(response: dict[str, Any]) -> int | None:
    usage = response.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else None


def _clip(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "...[truncated]"


def _error_message(err: urllib.error.HTTPError) -> str:
    """The server's own message (OpenAI ``{"error": {"message": ...}}`` or raw body), clipped."""
    try:
        raw = err.read()
    except OSError:
        raw = b""
    try:
        payload = json.loads(raw)
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = (error.get("message") or error.get("detail")) if isinstance(error, dict) else None
        return _clip(str(message if message else payload))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _clip(raw) if raw else str(err.reason)


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the exponential backoff is good enough


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text
