"""`afinar data generate`: a faulty OpenAI-compatible endpoint (429s, 5xx, timeouts, malformed
replies), resume after a kill, nothing written half, no credential in any file, the checks of
generated items, and their use downstream (training paraphrases, the index, the guard's calibration)."""

import json
import signal
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write

from afinar.cli import main
from afinar.data.generate import generate_data, parse_questions, plan, reject_reason
from afinar.data.generated import check_generated
from afinar.data.teacher import HttpTeacher, public_url
from afinar.errors import AfinarError
from afinar.recipes import load_recipe

SECRET = "sk-test-no-debe-aparecer-0123456789"
FAQ = ("pregunta;respuesta\n"
       "¿A qué hora abre la biblioteca?;Abre de lunes a viernes de 8:00 a 21:00.\n"
       "¿Cuántos libros puedo pedir?;Hasta 5 libros por 15 días.\n"
       "¿Cómo renuevo un préstamo?;En biblioteca.example.edu o en el mostrador.\n"
       "¿Hay wifi?;Sí, la red BiblioWifi con tu usuario de estudiante.\n")


class Teacher(BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible endpoint: `script` is consumed one entry per request
    ('429', '500', 'slow', 'garbage', 'ok'); when it runs out every request is 'ok'."""

    script: list[str] = []
    seen: list[dict] = []
    delay = 0.0
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            action = self.script.pop(0) if self.script else "ok"
            self.seen.append({"auth": self.headers.get("Authorization"), "path": self.path, "body": body})
        time.sleep(self.delay)
        if action in ("429", "500"):
            self.send_response(int(action))
            if action == "429":
                self.send_header("Retry-After", "0")
            self.end_headers()
            return
        if action == "slow":
            time.sleep(1.5)
        text = "no es JSON, ni una lista" if action == "garbage" else json.dumps({"questions": _questions(body)})
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                          "usage": {"total_tokens": 50}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        try:
            self.wfile.write(out)
        except BrokenPipeError:  # the client gave up on a slow reply
            pass

    def log_message(self, *args):
        pass


def _questions(body) -> list:
    prompt = body["messages"][-1]["content"]
    tag = zlib.crc32(prompt.encode()) % 10_000
    if "FAQ:\nQuestion:" in prompt:  # a paraphrase request: styles, plus a copy and an empty one to reject
        q = prompt.split("Question: ", 1)[1].split("\n", 1)[0]
        return [{"style": "informal", "question": f"oye {q.strip('¿?').lower()} {tag}"},
                {"style": "english", "question": f"quick one: {tag} opening hours?"},
                {"style": "copy", "question": q}, {"style": "empty", "question": " "}]
    return [f"¿Tienen cafetería en el edificio {tag}-{i}?" for i in range(10)]


@pytest.fixture
def endpoint():
    Teacher.script, Teacher.seen, Teacher.delay = [], [], 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def recipe_for(tmp_path, url, *extra):
    write(tmp_path / "faq.csv", FAQ)
    text = ("name: biblio\nrefusal: Solo hablo de la biblioteca.\ndata:\n  files: [faq.csv]\n"
            f"teacher:\n  url: {url}\n  model: maestro\n  paraphrases: 3\n  near_misses: 10\n  out_of_domain: 0\n"
            "  timeout_s: 0.5\n  retries: 4\n  concurrency: 2\n")
    return load_recipe(write(tmp_path / "r.yaml", text), list(extra))


def teacher_of(recipe):
    t = recipe.teacher
    return HttpTeacher(t.url, t.model, t.api_key_env, t.timeout_s, t.temperature, t.max_tokens)


def test_retries_429_5xx_timeouts_and_malformed_replies_then_writes_a_checked_file(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    recipe = recipe_for(tmp_path, endpoint)
    Teacher.script = ["429", "500", "slow", "garbage"]
    result = generate_data(recipe, teacher_of(recipe), progress=False, backoff_s=0.01, log=lambda *_: None)
    assert result.retries == 4 and result.requests == 5  # 4 records + 1 near-miss batch
    rows = [json.loads(line) for line in result.output.read_text(encoding="utf-8").splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("paraphrase") == 8 and kinds.count("near_miss") == 10  # 2 kept per record
    assert result.rejected == {"copy of a record's question": 4, "empty": 4}
    assert all(r["provenance"]["teacher"] == endpoint and r["provenance"]["model"] == "maestro" for r in rows)
    assert {r["record"] for r in rows if r["kind"] == "paraphrase"} == {
        "¿A qué hora abre la biblioteca?", "¿Cuántos libros puedo pedir?", "¿Cómo renuevo un préstamo?", "¿Hay wifi?"}
    assert "rejected (copy of a record's question)" in result.review.read_text(encoding="utf-8")
    assert all(s["auth"] == f"Bearer {SECRET}" and s["path"] == "/v1/chat/completions" for s in Teacher.seen)
    for path in tmp_path.rglob("*"):  # the key went in the header only
        assert path.is_dir() or SECRET not in path.read_text(encoding="utf-8", errors="replace"), path


def test_a_run_that_keeps_failing_writes_nothing_and_the_next_one_asks_only_what_is_missing(tmp_path, endpoint):
    recipe = recipe_for(tmp_path, endpoint, "teacher.retries=1", "teacher.concurrency=1")
    Teacher.script = ["ok", "ok", "ok", "500", "500"]  # the preview's 2, one more, then a request fails twice
    with pytest.raises(AfinarError, match=r"1 of 5 teacher requests failed after 1 retries.*run the same command again"):
        generate_data(recipe, teacher_of(recipe), progress=False, backoff_s=0.01, log=lambda *_: None)
    out = Path(recipe.teacher.output)
    assert not out.exists() and not out.with_name("generated.review.txt").exists()
    Teacher.seen.clear()
    result = generate_data(recipe, teacher_of(recipe), progress=False, backoff_s=0.01, log=lambda *_: None)
    assert len(Teacher.seen) == 1 and result.cached == 4 and out.exists()


def test_a_killed_run_resumes_from_its_cache(tmp_path, endpoint):
    recipe = recipe_for(tmp_path, endpoint, "teacher.concurrency=1")
    Teacher.delay = 0.4
    code = ("import sys; from afinar.cli import main; "
            f"sys.argv = ['afinar', 'data', 'generate', {str(tmp_path / 'r.yaml')!r}, '--no-progress']; main()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = Path(recipe.teacher.output).with_name(".generated.jsonl.cache.jsonl")
    deadline = time.time() + 60
    while time.time() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    answered = len(cache.read_text().splitlines())
    assert 3 <= answered < 5 and not Path(recipe.teacher.output).exists()
    Teacher.seen.clear()
    Teacher.delay = 0.0
    result = generate_data(recipe, teacher_of(recipe), progress=False, log=lambda *_: None)
    assert len(Teacher.seen) == 5 - answered and result.cached == answered


def test_a_wrong_key_stops_at_once_and_says_what_to_set(tmp_path, monkeypatch):
    class Refuses(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    recipe = recipe_for(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/v1")
    try:
        with pytest.raises(AfinarError, match=r"refused the key \(HTTP 401\): set the key in \$OPENAI_API_KEY"):
            generate_data(recipe, teacher_of(recipe), progress=False, backoff_s=0.01, log=lambda *_: None)
    finally:
        server.shutdown()


def test_a_credential_in_the_teacher_url_is_refused_and_never_kept(tmp_path):
    from afinar.errors import RecipeError

    with pytest.raises(RecipeError, match="the URL holds a credential"):
        recipe_for(tmp_path, "http://usuario:clave@127.0.0.1:9/v1")
    with pytest.raises(RecipeError, match="the URL holds a credential"):
        recipe_for(tmp_path, "https://api.example.com/v1?api_key=abc")
    assert public_url("http://u:p@host:8000/v1?x=1") == "http://host:8000/v1"


def test_preview_prints_the_first_records_and_writes_nothing(tmp_path, endpoint):
    recipe = recipe_for(tmp_path, endpoint)
    lines = []
    result = generate_data(recipe, teacher_of(recipe), preview_only=True, progress=False, log=lines.append)
    text = "\n".join(lines)
    assert "4 records -> 5 requests, about" in text and "preview: ¿A qué hora abre la biblioteca?" in text
    assert "[informal] oye a qué hora abre la biblioteca" in text
    assert result.output is None and not Path(recipe.teacher.output).exists() and len(Teacher.seen) == 2


def test_replies_are_read_from_json_fences_or_numbered_lines():
    assert parse_questions('Aquí:\n```json\n{"questions": ["¿uno?", {"style": "typo", "question": "dos"}]}\n```') == [
        {"question": "¿uno?", "style": ""}, {"question": "dos", "style": "typo"}]
    assert [q["question"] for q in parse_questions("1. ¿abren hoy?\n2) horario?\n- wifi?")] == ["¿abren hoy?", "horario?", "wifi?"]
    with pytest.raises(ValueError):
        parse_questions("Lo siento, no puedo ayudar con eso.")


def test_items_are_checked_for_language_copies_and_duplicates():
    records = {"¿hay wifi?"}
    assert reject_reason("¿Hay   WIFI?", "es", records, set()) == "copy of a record's question"
    assert reject_reason("как открыть счёт?", "es", records, set()) == "wrong language"
    assert reject_reason("where is the wifi password?", "es", records, set()) == ""
    assert reject_reason("oye hay wifi", "es", records, {"oye hay wifi"}) == "duplicate"
    assert reject_reason("x" * 301, "es", records, set()) == "too long"


def test_plan_counts_requests_and_asks_each_style():
    records = [("¿Hay wifi?", "Sí.", "f:2"), ("¿Abren el sábado?", "No.", "f:3")]
    requests = plan(records, 5, 25, 10)
    assert [r.kind for r in requests].count("paraphrase") == 2
    assert [r.count for r in requests if r.kind == "near_miss"] == [10, 10, 5]
    assert all(s in requests[0].messages[-1]["content"] for s in ("informal", "typo", "shorthand", "english", "situation"))


def generated_file(tmp_path, lines) -> Path:
    return write(tmp_path / "gen.jsonl", "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n"
                                                 for x in lines))


def test_data_check_reports_bad_generated_lines_by_line(tmp_path):
    recipe_for(tmp_path, "http://127.0.0.1:9/v1")
    path = generated_file(tmp_path, [
        {"kind": "paraphrase", "question": "oye hay wifi?", "record": "¿Hay wifi?"},
        "{roto",
        {"kind": "paraphrase", "question": "q onda el wifi", "record": "¿Hay internet?"},
        {"kind": "near_miss", "question": "¿Prestan portátiles?", "flag": "scores 0.91"},
        {"kind": "pregunta", "question": "¿?"},
        {"kind": "near_miss", "question": "  "},
        {"kind": "out_of_domain", "question": "¿Hay wifi?"},
    ])
    result = CliRunner().invoke(main, ["data", "check", str(path), "--recipe", str(tmp_path / "r.yaml")])
    out = result.output
    assert result.exit_code == 1, out
    assert f"{path}:2: error: not valid JSON" in out
    assert f"{path}:3: error: no record asks '¿Hay internet?'" in out
    assert f"{path}:4: warning: flagged for review (scores 0.91): left out until you delete its 'flag'" in out
    assert f"{path}:5: error: kind 'pregunta' is not one of paraphrase, near_miss, out_of_domain" in out
    assert f"{path}:6: error: empty 'question'" in out
    assert f"{path}:7: warning: a copy of a record's question" in out
    assert "generated data: 1 paraphrase, 0 near misses, 0 out-of-domain questions usable; 4 errors, 2 warnings" in out
    items, _ = check_generated([path], [])
    assert [i.kind for i in items] == ["out_of_domain"]  # with no records, every paraphrase names an unknown one


def test_data_check_of_the_recipes_data_checks_its_generated_files_too(tmp_path):
    recipe_for(tmp_path, "http://127.0.0.1:9/v1")
    generated_file(tmp_path, [{"kind": "paraphrase", "question": "q onda el wifi", "record": "¿Hay internet?"}])
    text = (tmp_path / "r.yaml").read_text().replace("  files: [faq.csv]\n", "  files: [faq.csv]\n  min_examples: 4\n  generated: [gen.jsonl]\n")
    write(tmp_path / "r.yaml", text)
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "faq.csv"), "--recipe", str(tmp_path / "r.yaml"),
                                       "--no-tokens"])
    assert result.exit_code == 1, result.output  # the FAQ is fine; the generated file names no record
    assert "OK: the data is usable" in result.output and "the recipe's data.generated: gen.jsonl" in result.output
    assert "gen.jsonl:1: error: no record asks '¿Hay internet?'" in result.output
    as_json = CliRunner().invoke(main, ["data", "check", str(tmp_path / "faq.csv"), "--recipe", str(tmp_path / "r.yaml"),
                                        "--no-tokens", "--json"])
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and report["ok"] is True and report["generated"]["ok"] is False
    assert "no record asks '¿Hay internet?'" in json.dumps(report["generated"]["issues"], ensure_ascii=False)


def test_generated_data_trains_joins_the_index_and_calibrates_the_guard(tmp_path, endpoint, monkeypatch):
    from afinar.data.prepare import prepare_data
    from afinar.index.store import build_run_guard

    recipe = recipe_for(tmp_path, endpoint)
    generate_data(recipe, teacher_of(recipe), progress=False, log=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "generated.jsonl").read_text(encoding="utf-8").splitlines()]
    rows.append({"kind": "near_miss", "question": "¿Prestan portátiles?", "flag": "revisar"})
    write(tmp_path / "generated.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    recipe = recipe_for(tmp_path, endpoint, "data.generated=[generated.jsonl]", "data.eval_fraction=0.25",
                        "data.negatives=0", "data.min_examples=1")
    run = tmp_path / "runs" / "biblio"
    prepared = prepare_data(recipe, run / "data")
    trained = {ex.first_user() for ex in prepared.train}
    held = prepared.eval[0].first_user()
    assert prepared.counts["train_paraphrase"] == 6 and prepared.counts["generated"] == {"paraphrase": 8, "near_miss": 10}
    assert not any(r["record"] == held and r["question"] in trained for r in rows if r["kind"] == "paraphrase")
    write(run / "recipe.yaml", recipe.to_yaml())
    guard = build_run_guard(run)
    record = next(r for r in guard.records if r.questions[0] == held)
    assert len(record.questions) == 3  # the held-out record is served with its generated paraphrases
    assert all(r.source.startswith(str(tmp_path / "faq.csv")) for r in guard.records)  # cited by the data's own line
    cal = guard.thresholds.calibration
    assert cal["positives"] == 8 and cal["near_misses"] == 10 and "¿Prestan portátiles?" not in str(guard.records)
    assert 0.5 <= cal["auc"] <= 1.0 and cal["positives_refused_at_refuse"] <= 0.25


def test_positives_in_the_index_are_scored_as_if_they_were_not_there():
    """Regression: scoring a generated paraphrase that sits in the index found itself (cosine 1)
    and its words, so calibration saw perfect separation and set thresholds users' questions miss."""
    from afinar.index import DomainGuard, Record, load_embedder

    records = [Record(["¿A qué hora abre la biblioteca?", "horario biblio porfa"], "De 8:00 a 21:00."),
               Record(["¿Cuántos libros puedo pedir?"], "Hasta 5.")]
    guard = DomainGuard(records, load_embedder())
    alone = DomainGuard([Record(["¿A qué hora abre la biblioteca?"], "De 8:00 a 21:00."), records[1]], load_embedder())
    left_out = guard._left_out_scores(["horario biblio porfa"])[0]
    assert left_out == pytest.approx(alone.scores(["horario biblio porfa"])[0][1], abs=1e-5)
    assert left_out < guard.scores(["horario biblio porfa"])[0][1] - 0.05


def test_the_cli_writes_the_file_and_says_how_to_use_it(tmp_path, endpoint):
    recipe_for(tmp_path, endpoint)
    result = CliRunner().invoke(main, ["data", "generate", str(tmp_path / "r.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Use it: add it to data.generated" in result.output and (tmp_path / "generated.jsonl").exists()
    check = CliRunner().invoke(main, ["data", "check", str(tmp_path / "generated.jsonl"), "--recipe", str(tmp_path / "r.yaml")])
    assert check.exit_code == 0 and "8 paraphrases, 10 near misses, 0 out-of-domain questions usable" in check.output


def test_a_gguf_teacher_runs_in_process_with_llama_cpp(tmp_path):
    """The local teacher without a server: the embedded model's own GGUF file, run by llama.cpp."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'afinar[llamacpp]'; ~5 min build)")
    from afinar.data.teacher import load_teacher
    from afinar.models import embedded_gguf_path

    recipe = recipe_for(tmp_path, str(embedded_gguf_path()), "teacher.paraphrases=2", "teacher.near_misses=0",
                        "teacher.temperature=0", "teacher.max_tokens=120", "teacher.retries=2")
    t = recipe.teacher
    teacher = load_teacher(t.url, t.model, temperature=0, max_tokens=120)
    assert teacher.public_url == f"file:{embedded_gguf_path().name}"
    result = generate_data(recipe, teacher, progress=False, log=lambda *_: None)
    assert result.requests == 4 and result.output.exists()


def test_a_gguf_teacher_without_llama_cpp_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    from afinar.data.teacher import TeacherError, load_teacher

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "llama_cpp" else real(name, *a, **k))
    teacher = load_teacher(str(write(tmp_path / "m.gguf", "x")), "")
    with pytest.raises(TeacherError, match=r"pip install 'afinar\[llamacpp\]'"):
        teacher.complete([{"role": "user", "content": "hola"}])
