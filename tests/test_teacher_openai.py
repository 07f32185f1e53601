"""The ``openai`` teacher against a real HTTP server on 127.0.0.1 (see ``openai_server.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ssft.data.teachers.base import Question, build_teacher
from ssft.data.teachers.openai_compat import OpenAITeacher, TeacherRequestError
from tests.openai_server import API_KEY_ENV, FAKE_KEY, ChatServer

QUESTIONS = [Question(f"q{i}", f"{i} + {i} = ?", str(2 * i), "test") for i in range(5)]


def make_cfg(server: ChatServer, **overrides) -> SimpleNamespace:
    cfg = dict(
        name="api",
        kind="openai",
        model="tiny-llama",
        base_url=server.base_url,
        api_key_env=API_KEY_ENV,
        samples_per_question=3,
        temperature=0.8,
        top_p=0.95,
        max_new_tokens=12,
        batch_size=3,
        system_prompt="Be brief.",
        use_chat_template=True,
        dtype="float32",
        trust_remote_code=False,
        request_timeout_s=10.0,
        max_retries=3,
        replay_path=None,
    )
    cfg.update(overrides)
    return SimpleNamespace(**cfg)


def make_teacher(server: ChatServer, **overrides) -> OpenAITeacher:
    teacher = build_teacher(make_cfg(server, **overrides))
    teacher.backoff_base_s = 0.01  # keep retry tests fast
    return teacher


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, FAKE_KEY)
    return FAKE_KEY


@pytest.fixture
def server(request, key):
    srv = ChatServer(mode="canned")
    request.addfinalizer(srv.stop)
    return srv


@pytest.fixture(scope="module")
def model_server():
    srv = ChatServer(mode="model")
    yield srv
    srv.stop()


def test_counts_order_and_request_body(server):
    server.delay_s = 0.05  # overlap requests so the pool bound is observable
    teacher = make_teacher(server)
    samples = teacher.generate(QUESTIONS, num_samples=3, seed=7)

    assert [s.question_id for s in samples] == [q.question_id for q in QUESTIONS for _ in range(3)]
    for s in samples:
        prompt = QUESTIONS[int(s.question_id[1:])].prompt
        assert f"to [{prompt}]" in s.text
        assert s.teacher == "api"
        assert s.num_tokens is None  # n=3: usage is a total, not per sample
    assert len(server.requests) == 5  # n=3 honoured: one request per question
    assert 1 < server.max_in_flight <= 3  # concurrent, but bounded by batch_size
    req = server.requests[0]
    assert req["auth"] == f"Bearer {FAKE_KEY}"
    body = req["body"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["role"] == "user"
    assert (body["model"], body["n"], body["max_tokens"]) == ("tiny-llama", 3, 12)
    assert (body["temperature"], body["top_p"]) == (0.8, 0.95)
    assert isinstance(body["seed"], int)


def test_single_sample_uses_usage_tokens_and_no_system_prompt(server):
    teacher = make_teacher(server, system_prompt=None)
    (sample,) = teacher.generate(QUESTIONS[:1], num_samples=1, seed=0)
    assert sample.num_tokens == len(sample.text)  # the canned server counts characters
    assert [m["role"] for m in server.requests[0]["body"]["messages"]] == ["user"]


def test_server_ignoring_n_gets_follow_up_requests(server):
    server.max_choices = 1
    teacher = make_teacher(server, batch_size=1)
    samples = teacher.generate(QUESTIONS[:2], num_samples=3, seed=1)
    assert [s.question_id for s in samples] == ["q0"] * 3 + ["q1"] * 3
    assert [r["body"]["n"] for r in server.requests] == [3, 2, 1, 3, 2, 1]
    seeds = [r["body"]["seed"] for r in server.requests]
    assert len(set(seeds)) == 6  # follow-ups must not repeat the first request's seed
    assert all(s.num_tokens is None for s in samples[:2])  # asked n>1: no per-sample usage


@pytest.mark.parametrize("status", [500, 429, 503])
def test_retries_transient_failures(server, status):
    server.fail_first, server.fail_status = 2, status
    teacher = make_teacher(server, max_retries=3, batch_size=1)
    samples = teacher.generate(QUESTIONS[:1], num_samples=2, seed=0)
    assert len(samples) == 2
    assert len(server.requests) == 3


def test_retries_exhausted_names_status_without_key(server, key):
    server.force_status = 500
    teacher = make_teacher(server, max_retries=1)
    with pytest.raises(TeacherRequestError) as info:
        teacher.generate(QUESTIONS[:1], num_samples=1, seed=0)
    message = str(info.value)
    assert "HTTP 500" in message and "2 attempt" in message
    assert key not in message and key not in repr(info.value)
    assert len(server.requests) == 2


def test_401_fails_fast_without_leaking_key(server, monkeypatch):
    wrong = "sk-wrong-KEY-should-never-be-shown"
    monkeypatch.setenv(API_KEY_ENV, wrong)
    teacher = make_teacher(server, max_retries=5)
    with pytest.raises(TeacherRequestError) as info:
        teacher.generate(QUESTIONS[:1], num_samples=1, seed=0)
    message = str(info.value)
    assert "HTTP 401" in message and "Incorrect API key" in message
    assert wrong not in message and FAKE_KEY not in message
    assert len(server.requests) == 1  # 4xx other than 429: no retry
    assert wrong not in repr(teacher) and FAKE_KEY not in repr(teacher)


def test_non_retryable_4xx_shows_server_message(server):
    server.force_status = 400
    teacher = make_teacher(server)
    with pytest.raises(TeacherRequestError, match=r"HTTP 400.*echo Bearer \*\*\*"):
        teacher.generate(QUESTIONS[:1], num_samples=1, seed=0)
    assert len(server.requests) == 1


def test_missing_key_env_names_the_variable(server, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV)
    teacher = make_teacher(server)
    with pytest.raises(ValueError, match=API_KEY_ENV):
        teacher.generate(QUESTIONS[:1], num_samples=1, seed=0)
    assert server.requests == []


def test_timeout_fails_with_clear_message(server):
    server.delay_s = 1.0
    teacher = make_teacher(server, request_timeout_s=0.2, max_retries=0)
    with pytest.raises(TeacherRequestError, match=r"timed out after request_timeout_s=0.2"):
        teacher.generate(QUESTIONS[:1], num_samples=1, seed=0)


def test_unreachable_server_is_retried_then_fails(server):
    url = server.base_url
    server.stop()
    teacher = make_teacher(server, base_url=url, max_retries=1)
    with pytest.raises(TeacherRequestError, match="failed after 2 attempt"):
        teacher.generate(QUESTIONS[:1], num_samples=1, seed=0)


def test_config_errors():
    cfg = SimpleNamespace(
        name="api",
        kind="openai",
        base_url="",
        model="m",
        max_retries=0,
        request_timeout_s=1.0,
        api_key_env=None,
    )
    with pytest.raises(ValueError, match="base_url"):
        build_teacher(cfg)


def test_model_backed_server_is_seeded(model_server, key):
    teacher = make_teacher(model_server, batch_size=2, max_new_tokens=6)
    first = teacher.generate(QUESTIONS[:2], num_samples=2, seed=3)
    again = teacher.generate(QUESTIONS[:2], num_samples=2, seed=3)
    other = teacher.generate(QUESTIONS[:2], num_samples=2, seed=4)
    assert [s.question_id for s in first] == ["q0", "q0", "q1", "q1"]
    assert all(s.text for s in first)
    assert [s.text for s in first] == [s.text for s in again]
    assert [s.text for s in first] != [s.text for s in other]
