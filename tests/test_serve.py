"""`afinar serve`: every route and error of the OpenAI-compatible API, auth on every route, limits,
and the official `openai` client (plain and streaming) against a real server on loopback."""

import json
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from test_train import two_tiny_runs

from afinar.assistant.engine import Engine
from afinar.serving.api import ServeLimits, create_app

REFUSAL = "Solo pilas."
KEY = "clave-de-prueba"
IN_DOMAIN = "¿Qué es la pila 3?"
OUT_OF_DOMAIN = "¿Quién ganó el mundial de fútbol de 2010?"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    return two_tiny_runs(tmp_path_factory.mktemp("serve-runs"), tiny_model_dir, "generation.max_new_tokens=6")


@pytest.fixture(scope="module")
def engine(runs):
    return Engine(runs)


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine))


def ask(text, **extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["tiny", "otra"]


def test_plain_completion_and_guard_refusal(client):
    body = client.post("/v1/chat/completions", json=ask(IN_DOMAIN)).json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["afinar"]["refused"] is False and body["usage"]["completion_tokens"] <= 4
    refused = client.post("/v1/chat/completions", json=ask(OUT_OF_DOMAIN)).json()
    assert refused["choices"][0]["message"]["content"] == REFUSAL and refused["afinar"]["refused"] is True
    assert refused["choices"][0]["finish_reason"] == "stop"


def test_grounded_answers_return_their_records_plain_and_streamed(client):
    body = client.post("/v1/chat/completions", json=ask(IN_DOMAIN)).json()
    sources = body["afinar"]["sources"]
    assert sources[0]["question"] == IN_DOMAIN and sources[0]["n"] == 1 and isinstance(body["afinar"]["invented"], list)
    with client.stream("POST", "/v1/chat/completions", json=ask(IN_DOMAIN, stream=True)) as res:
        chunks = [json.loads(line[6:]) for line in res.iter_lines() if line.startswith("data: {")]
    assert chunks[-1]["afinar"]["sources"] == sources  # with the verdict, in the last chunk
    if chunks[-1]["afinar"]["replaced"]:  # the streamed text invented a fact: the last chunk says what replaces it
        assert chunks[-1]["afinar"]["answer"] == body["choices"][0]["message"]["content"]


def test_streaming_ends_with_done_and_says_when_refused(client):
    with client.stream("POST", "/v1/chat/completions", json=ask(OUT_OF_DOMAIN, stream=True)) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in res.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == REFUSAL
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["afinar"]["refused"] is True


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[]", None),
    (json.dumps({"model": "tiny"}).encode(), "messages"),
    (json.dumps({"model": "tiny", "messages": []}).encode(), "messages"),
    (json.dumps({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}).encode(), "messages[0].role"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": 5}]}).encode(), "messages[0].content"),
    (json.dumps({"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}).encode(), "messages"),
    (json.dumps(ask("x", max_tokens=0)).encode(), "max_tokens"),
    (json.dumps(ask("x", max_tokens=100000)).encode(), "max_tokens"),
    (json.dumps(ask("x", max_tokens="5")).encode(), "max_tokens"),
    (json.dumps(ask("x", temperature=3)).encode(), "temperature"),
    (b"[" * 5000 + b"]" * 5000, None),  # RecursionError while decoding: was a 500
    (b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hola \\ud800"}]}', "messages[0].content"),  # lone surrogate: was a 500
    (json.dumps(ask("x", tools=[{"type": "function", "function": {"name": "f"}}])).encode(), "tools"),
    (json.dumps(ask("x", response_format={"type": "json_object"})).encode(), "response_format"),
    (json.dumps(ask("x", logprobs=True)).encode(), "logprobs"),
])
def test_bad_requests_get_400_in_openai_shape(client, body, param):
    res = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param


def test_fields_not_acted_on_are_named_in_the_response(client):
    body = client.post("/v1/chat/completions", json=ask(IN_DOMAIN, seed=3, presence_penalty=0.5, user="u1",
                                                        response_format={"type": "text"}, tools=[])).json()
    assert body["afinar"]["ignored"] == ["seed", "presence_penalty", "user"]
    plain = client.post("/v1/chat/completions", json=ask(IN_DOMAIN)).json()
    assert "ignored" not in plain["afinar"]
    with client.stream("POST", "/v1/chat/completions", json=ask(IN_DOMAIN, stream=True, stop=["\n"])) as res:
        events = [json.loads(line[6:]) for line in res.iter_lines() if line.startswith("data: {")]
    assert events[-1]["afinar"]["ignored"] == ["stop"]


def test_the_guard_runs_once_per_request(client, engine, monkeypatch):
    guard = engine.persona("tiny").guard
    calls = []
    original = guard.check
    monkeypatch.setattr(guard, "check", lambda *a, **k: calls.append(a) or original(*a, **k))
    client.post("/v1/chat/completions", json=ask(IN_DOMAIN))
    with client.stream("POST", "/v1/chat/completions", json=ask(IN_DOMAIN, stream=True)) as res:
        list(res.iter_lines())
    assert len(calls) == 2  # one embedding per request, not one to count tokens and another to answer


def test_prompt_longer_than_the_context_is_400(client, engine):
    long = "pila " * (engine.context_length + 10)
    res = client.post("/v1/chat/completions", json=ask(long[:30000]))
    assert res.status_code == 400 and res.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_model_is_404_and_unknown_route_is_404(client):
    res = client.post("/v1/chat/completions", json={**ask("x"), "model": "gpt-9"})
    assert res.status_code == 404 and res.json()["error"]["code"] == "model_not_found" and "tiny" in res.json()["error"]["message"]
    assert client.get("/v1/nada").status_code == 404 and "error" in client.get("/v1/nada").json()


def test_request_and_message_size_limits(engine):
    client = TestClient(create_app(engine, limits=ServeLimits(max_request_bytes=2000)))
    res = client.post("/v1/chat/completions", json=ask("x" * 5000))
    assert res.status_code == 413 and res.json()["error"]["code"] == "request_too_large"
    res = TestClient(create_app(engine)).post("/v1/chat/completions", json=ask("x" * 40000))
    assert res.status_code == 400 and res.json()["error"]["param"] == "messages[0].content"


def test_api_key_on_every_route_but_health(engine):
    client = TestClient(create_app(engine, api_key=KEY))
    routes = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/studio/personas"), ("GET", "/static/app.js")]
    for method, path in routes:
        res = client.request(method, path, json=ask("x"))
        assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key", path
        assert client.request(method, path, json=ask("x"), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/health").status_code == 200
    page = client.get("/")
    assert page.status_code == 401 and "<form" in page.text  # the page asks for the key
    ok = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    client.post("/login", data={"key": KEY}, follow_redirects=False)  # the page's form sets a cookie
    assert client.get("/v1/models").status_code == 200 and client.get("/").status_code == 200


def test_full_queue_gets_429(engine):
    app = create_app(engine, limits=ServeLimits(max_queue=1))
    client = TestClient(app)
    app.state.queue.acquire()  # one request already waiting for the model
    try:
        res = client.post("/v1/chat/completions", json=ask(IN_DOMAIN))
        assert res.status_code == 429 and res.json()["error"]["code"] == "queue_full"
        assert client.post("/v1/chat/completions", json=ask(IN_DOMAIN, stream=True)).status_code == 429
    finally:
        app.state.queue.release()
    assert client.post("/v1/chat/completions", json=ask(IN_DOMAIN)).status_code == 200
    assert app.state.queue.used == 0


def test_vllm_command_lists_every_adapter(runs):
    from afinar.serving.vllm import printable, vllm_command

    argv = vllm_command(runs, "127.0.0.1", 8000, api_key_env=True)
    text = printable(argv)
    assert argv[:2] == ["vllm", "serve"] and "--enable-lora" in argv and "--lora-modules" in argv
    assert f"tiny={(runs[0] / 'adapter').resolve()}" in argv and f"otra={(runs[1] / 'adapter').resolve()}" in argv
    assert "--api-key $AFINAR_API_KEY" in text


# --- a real server on loopback ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(engine):
    import uvicorn

    app = create_app(engine, api_key=KEY)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_openai_client_plain_and_streaming(server):
    from openai import OpenAI

    _, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny", "otra"]
    plain = client.chat.completions.create(model="otra", messages=[{"role": "user", "content": OUT_OF_DOMAIN}], max_tokens=4)
    assert plain.choices[0].message.content == REFUSAL and plain.model == "otra"
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": IN_DOMAIN}], max_tokens=4, stream=True)
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert (chunks[-1].model_extra or {}).get("afinar", {}).get("refused") is False


def test_openai_client_sees_errors(server):
    import openai

    _, url = server
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="mala", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nadie", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=0)


def test_client_disconnect_mid_stream_frees_its_slot(server, monkeypatch):
    """A client that goes away must stop its generation and give back its place in the queue."""
    import httpx

    app, url = server
    seen = {}
    real = Engine.stream

    def spy(self, *args, **kwargs):
        seen["cancel"] = kwargs["cancel"]
        yield from real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "stream", spy)
    body = {**ask(IN_DOMAIN, stream=True), "max_tokens": 400, "temperature": 1.0}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as res:
        for line in res.iter_lines():
            if line.startswith("data: "):
                break  # the first event arrived: hang up
    for _ in range(200):
        if app.state.queue.used == 0 and seen["cancel"].is_set():
            break
        time.sleep(0.05)
    assert seen["cancel"].is_set() and app.state.queue.used == 0
    engine = app.state.engine
    assert engine._batcher.lock.acquire(timeout=20), "generation went on after the client left"
    engine._batcher.lock.release()


def test_cancel_event_stops_its_row_only():
    import torch

    from afinar.assistant.batcher import Request, _Rows

    settings = {"max_new_tokens": 5, "eos_token_id": 2}
    cancel = threading.Event()
    rows = _Rows([Request("a", None, "p", settings, cancel), Request("a", None, "q", settings)], None, prompt_width=3)
    ids = torch.zeros((2, 4), dtype=torch.long)  # one token made
    assert not rows.criterion(ids, None).any()
    cancel.set()
    assert rows.criterion(ids, None).tolist() == [True, False]


def test_concurrent_replies_are_batched_and_equal_one_at_a_time(runs):
    """Replies generated together (left-padded batch) must equal those generated alone (fp32, greedy),
    each with its own token limit."""
    engine = Engine([runs[0]], "off")
    questions = [("¿Qué es la pila 1?", 6), ("hola", 3), ("¿Qué es una pila larga y cuándo se usa?", 5)]
    alone = [engine.reply([{"role": "user", "content": q}], max_new_tokens=n) for q, n in questions]
    batches = []
    real = engine._batcher._generate
    engine._batcher._generate = lambda batch: (batches.append(len(batch)), real(batch))
    together = [None] * len(questions)
    with engine._batcher.lock:  # hold the model so that all three wait and form one batch
        threads = [threading.Thread(target=lambda i=i, q=q, n=n: together.__setitem__(i, engine.reply([{"role": "user", "content": q}], max_new_tokens=n)))
                   for i, (q, n) in enumerate(questions)]
        for t in threads:
            t.start()
        time.sleep(0.5)
    for t in threads:
        t.join(30)
    assert max(batches) >= 2
    assert [r.answer for r in together] == [r.answer for r in alone]
    assert [r.tokens for r in together] == [r.tokens for r in alone] and all(r.tokens <= n for r, (_, n) in zip(together, questions))


def test_studio_routes_check_uploads_and_report_bad_input(engine, tmp_path):
    from afinar.serving.studio import Studio

    client = TestClient(create_app(engine, studio=Studio(tmp_path / "studio")))
    assert client.get("/studio/personas").json()["studio"] is True
    faq = "pregunta;respuesta\n" + "".join(f"¿Precio {i}?;Cuesta {i} soles.\n" for i in range(12)) + "¿Vacía?;\n"
    report = client.post("/studio/datasets", files={"file": ("faq.csv", faq.encode(), "text/csv")}).json()
    assert report["ok"] is False and any("faq.csv:14" in m for m in report["messages"]) and report["records"] == 13
    res = client.post("/studio/datasets", files={"file": ("virus.exe", b"MZ", "application/octet-stream")})
    assert res.status_code == 400 and "CSV" in res.json()["error"]["message"]
    assert client.post("/studio/datasets", data={"x": "1"}).status_code == 400
    res = client.post("/studio/train", json={"dataset": "nada.csv"})
    assert res.status_code == 400 and "upload it first" in res.json()["error"]["message"]
    assert client.get("/studio/jobs/nope").status_code == 400


def test_interview_route_assembles_the_prompt(runs, tmp_path):
    import shutil

    from afinar.recipes import load_recipe

    run = tmp_path / "entrevista"
    shutil.copytree(runs[0], run)
    recipe = load_recipe(run / "recipe.yaml", ['interview.questions=["¿Qué función?", "¿Tu rol?"]'], check_files=False)
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    client = TestClient(create_app(Engine([run])))
    persona = client.get("/studio/personas").json()["personas"][0]
    assert persona["interview"] == ["¿Qué función?", "¿Tu rol?"]
    prompt = client.post("/studio/interview", json={"answers": ["exportar", "docente"]}).json()["prompt"]
    assert "exportar" in prompt and "docente" in prompt
    assert client.post("/studio/interview", json={"answers": "no"}).status_code == 400


def test_a_reply_ending_in_half_a_character_is_still_sent(tiny_tokenizer):
    """Regression: the batcher held back text ending in U+FFFD and never flushed it, so a reply made
    only of stray bytes reached the client empty."""
    import torch

    from afinar.assistant.batcher import Request, _Rows

    stray = next(i for i in range(len(tiny_tokenizer)) if tiny_tokenizer.decode([i]) == "\ufffd")
    request = Request("a", tiny_tokenizer, "p", {"max_new_tokens": 4, "eos_token_id": tiny_tokenizer.eos_token_id})
    rows = _Rows([request], tiny_tokenizer, prompt_width=1)
    rows.put(torch.zeros((1, 1), dtype=torch.long))  # the prompt
    rows.put(torch.tensor([stray]))
    assert request.out.empty()  # held back: it may be the first byte of a character
    rows.end()
    assert request.out.get_nowait() == "\ufffd"
