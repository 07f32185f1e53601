"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for teacher tests.

It answers ``POST /v1/chat/completions`` either with canned texts that name the question and
choice (``mode="canned"``: order and grouping are easy to check) or by sampling from a tiny
random Llama with the character tokenizer (``mode="model"``: real ``model.generate``, seeded
by the request's ``seed``). Knobs make it misbehave the way real servers do: fail the first K
requests with a status, cap the number of choices (servers that ignore ``n``), sleep before
answering (timeouts), or reject the key (401 whose body echoes the key, as some APIs do).
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

API_KEY_ENV = "SSFT_TEST_OPENAI_KEY"
FAKE_KEY = "sk-test-FAKE-0123456789abcdef"


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, mode: str = "canned") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        # The key it accepts, fixed at start: a test can then give the CLIENT a wrong one.
        self.expected_key = os.environ.get(API_KEY_ENV) or FAKE_KEY
        self.fail_first = 0  # fail this many requests ...
        self.fail_status = 500  # ... with this status
        self.max_choices: int | None = None  # cap on choices per response (ignores n)
        self.delay_s = 0.0
        self.force_status: int | None = None  # answer every request with this status
        self.requests: list[dict[str, Any]] = []  # {"body": ..., "auth": ...}
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._model = self._tokenizer = None
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        """Stops serving and closes the socket; safe to call twice."""
        if not self._thread.is_alive():
            return
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def generate(
        self, prompt: str, n: int, body: dict[str, Any], number: int
    ) -> tuple[list[str], int]:
        """``n`` texts and the total completion-token count."""
        if self.mode == "canned":
            texts = [f"answer {number}.{k} to [{prompt}]" for k in range(n)]
            return texts, sum(len(t) for t in texts)
        import torch

        from ssft.models import build_char_tokenizer, build_random_model

        with self._model_lock:  # torch's RNG is global: one seeded generation at a time
            if self._model is None:
                self._tokenizer = build_char_tokenizer()
                cfg = SimpleNamespace(
                    hidden_size=32,
                    intermediate_size=64,
                    num_layers=2,
                    num_heads=4,
                    max_position_embeddings=256,
                    tie_word_embeddings=True,
                    dtype="float32",
                )
                self._model = build_random_model(cfg, len(self._tokenizer), self._tokenizer)
            tok = self._tokenizer
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            input_ids = tok(ids, return_tensors="pt").input_ids.repeat(n, 1)
            specials = ("<pad>", "<unk>", "<|user|>", "<|assistant|>")
            banned = [[tok.convert_tokens_to_ids(t)] for t in specials]
            torch.manual_seed(int(body.get("seed") or 0))
            out = self._model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                max_new_tokens=int(body.get("max_tokens", 16)),
                min_new_tokens=1,
                bad_words_ids=banned,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, input_ids.shape[1] :]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        used = int((new != tok.pad_token_id).sum())
        return texts, used


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None):
        # Count this request as finished BEFORE answering: once the client has the answer it
        # may send its next request, which must not overlap this one in the count.
        self._done()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout tests)
            pass

    def do_POST(self) -> None:
        srv = self.server
        self._counted = False
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        with srv.lock:
            srv.requests.append({"body": body, "auth": auth, "path": self.path})
            number = len(srv.requests)
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        self._counted = True
        try:
            self._answer(srv, body, auth, number)
        finally:
            self._done()

    def _done(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            with self.server.lock:
                self.server.in_flight -= 1

    def _answer(self, srv: ChatServer, body: dict[str, Any], auth: str | None, number: int):
        if srv.delay_s:
            time.sleep(srv.delay_s)
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": {"message": f"no route {self.path}"}})
        if auth != f"Bearer {srv.expected_key}":
            # Like some real APIs, the message echoes the key it got: the teacher must redact.
            return self._reply(401, {"error": {"message": f"Incorrect API key provided: {auth}"}})
        if srv.force_status is not None:
            return self._reply(srv.force_status, {"error": {"message": f"echo {auth}"}})
        if number <= srv.fail_first:
            status = srv.fail_status
            return self._reply(status, {"error": {"message": "busy"}}, {"Retry-After": "0"})
        n = int(body.get("n", 1))
        if srv.max_choices is not None:
            n = min(n, srv.max_choices)
        prompt = body["messages"][-1]["content"]
        texts, used = srv.generate(prompt, n, body, number)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(prompt), "completion_tokens": used}
        self._reply(
            200,
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": choices,
                "usage": usage,
            },
        )
