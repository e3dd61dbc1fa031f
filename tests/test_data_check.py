"""`check_data`: every schema, every bad input, duplicates, lengths; nothing dropped uncounted."""

import json

import pytest
from conftest import write

from afinar.data import check_data


def qa_rows(n, start=0):
    return [{"pregunta": f"¿Pregunta número {i}?", "respuesta": f"Respuesta {i}."} for i in range(start, start + n)]


def jsonl(path, rows):
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def messages_of(report):
    return [str(i) for i in report.issues]


def test_qa_csv_semicolon_detected(tmp_path):
    lines = "pregunta;respuesta\n" + "".join(f"¿P{i}?;R{i}\n" for i in range(12))
    report = check_data([write(tmp_path / "faq.csv", lines)])
    assert report.ok
    assert report.files[0].schema == "qa" and report.files[0].delimiter == ";"
    assert len(report.examples) == 12
    assert report.examples[0].messages == [{"role": "user", "content": "¿P0?"}, {"role": "assistant", "content": "R0"}]


@pytest.mark.parametrize("q,a", [("question", "answer"), ("prompt", "completion"), ("Pregunta", "Respuesta")])
def test_qa_aliases(tmp_path, q, a):
    rows = [{q: f"q{i}", a: f"a{i}"} for i in range(10)]
    report = check_data([jsonl(tmp_path / "d.jsonl", rows)])
    assert report.ok and report.files[0].schema == "qa"


def test_alpaca_with_and_without_input(tmp_path):
    rows = [{"instruction": f"Traduce {i}", "input": "hola" if i % 2 else "", "output": f"hello {i}"} for i in range(10)]
    report = check_data([jsonl(tmp_path / "a.jsonl", rows)])
    assert report.ok and report.files[0].schema == "alpaca"
    assert report.examples[1].messages[0]["content"] == "Traduce 1\n\nhola"
    assert report.examples[0].messages[0]["content"] == "Traduce 0"


def test_openai_and_sharegpt_messages(tmp_path):
    oa = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": f"u{i}"},
                        {"role": "assistant", "content": f"a{i}"}, {"role": "user", "content": "más"},
                        {"role": "assistant", "content": "ok"}]} for i in range(5)]
    sg = [{"conversations": [{"from": "human", "value": f"h{i}"}, {"from": "gpt", "value": f"g{i}"}]} for i in range(5)]
    report = check_data([jsonl(tmp_path / "oa.jsonl", oa), jsonl(tmp_path / "sg.jsonl", sg)])
    assert report.ok, messages_of(report)
    assert len(report.examples[0].messages) == 5
    assert report.examples[5].messages == [{"role": "user", "content": "h0"}, {"role": "assistant", "content": "g0"}]


def test_user_story_schema_with_turn_list(tmp_path):
    rows = [{"conversacion": [{"role": "cliente", "content": f"Quiero exportar {i}"}, "Analista: ¿para quién?"],
             "historia_usuario": f"Como usuario quiero exportar {i} para compartir"} for i in range(10)]
    report = check_data([jsonl(tmp_path / "h.jsonl", rows)])
    assert report.ok and report.files[0].schema == "user_story"
    assert report.examples[0].messages[0]["content"] == "cliente: Quiero exportar 0\nAnalista: ¿para quién?"


def test_every_bad_message_record_gets_its_own_line(tmp_path):
    good = [{"messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": "a"}]} for i in range(10)]
    bad = [
        [1, 2],
        {"messages": [{"content": "x"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "x"}]},
        {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}, {"role": "assistant", "content": "z"}]},
    ]
    path = jsonl(tmp_path / "m.jsonl", good + bad)
    report = check_data([path])
    found = messages_of(report)
    expected = ["not an object", "has no 'role'", "unknown role 'robot'", "empty content", "two user turns in a row",
                "no assistant reply", "starts with an assistant turn"]
    for line, text in zip(range(11, 18), expected):
        assert any(f"m.jsonl:{line}: error: " in m and text in m for m in found), (line, text, found)
    assert report.n_invalid == 7 and len(report.examples) == 10 and not report.ok


def test_missing_columns_names_found_columns_and_mapping(tmp_path):
    report = check_data([write(tmp_path / "x.csv", "Consulta frecuente;Lo que respondemos\na;b\n")])
    [issue] = report.errors[:1]
    assert "'Consulta frecuente'" in issue.message and "columns: {question:" in issue.message
    assert report.n_invalid == 1


def test_column_mapping_overrides_detection(tmp_path):
    text = "Consulta frecuente;Lo que respondemos\n" + "".join(f"q{i};a{i}\n" for i in range(10))
    report = check_data([write(tmp_path / "x.csv", text)], schema="qa",
                        columns={"question": "Consulta frecuente", "answer": "Lo que respondemos"})
    assert report.ok and len(report.examples) == 10


def test_empty_dataset_and_too_few_examples(tmp_path):
    report = check_data([write(tmp_path / "e.jsonl", "\n")])
    assert any("empty" in i.message for i in report.errors)
    report = check_data([jsonl(tmp_path / "s.jsonl", qa_rows(4))])
    assert any("only 4 usable" in i.message for i in report.errors)


def test_empty_answer_field(tmp_path):
    rows = qa_rows(10) + [{"pregunta": "¿Y esto?", "respuesta": ""}]
    report = check_data([jsonl(tmp_path / "d.jsonl", rows)])
    assert any(m.endswith("d.jsonl:11: error: empty 'respuesta'") for m in messages_of(report))


def test_duplicates_exact_and_normalised_are_counted_and_skipped(tmp_path):
    rows = qa_rows(10) + [
        {"pregunta": "¿Pregunta número 1?", "respuesta": "Respuesta 1."},
        {"pregunta": "¿PREGUNTA   número 2?", "respuesta": "respuesta 2."},
        {"pregunta": "¿Pregunta nu\u0301mero 3?", "respuesta": "Respuesta 3."},  # NFD accent
    ]
    report = check_data([jsonl(tmp_path / "d.jsonl", rows)])
    assert report.ok and report.n_duplicates == 3 and len(report.examples) == 10
    found = messages_of(report)
    assert any("d.jsonl:11: warning: exact duplicate of" in m and "d.jsonl:2" in m for m in found)
    assert any("d.jsonl:12: warning: duplicate (differs only in case" in m for m in found)
    assert any("d.jsonl:13: warning: duplicate" in m for m in found)
    assert report.files[0].usable == 10


def test_same_question_different_answer_is_a_warning(tmp_path):
    rows = qa_rows(10) + [{"pregunta": "¿Pregunta número 1?", "respuesta": "Otra cosa."}]
    report = check_data([jsonl(tmp_path / "d.jsonl", rows)])
    assert any("same question as" in str(i) for i in report.warnings)


def test_token_lengths_and_too_long_examples(tmp_path, tiny_tokenizer):
    rows = qa_rows(10) + [{"pregunta": "¿Larga?", "respuesta": "palabra " * 300}]
    report = check_data([jsonl(tmp_path / "d.jsonl", rows)], tokenizer=tiny_tokenizer, max_seq_len=128)
    assert any("d.jsonl:11: error: example is" in str(i) and "max_seq_len=128" in str(i) for i in report.errors)
    assert report.tokens.over_limit == 1 and report.tokens.max > 128
    assert 0 < report.tokens.reply_tokens < report.tokens.total
    assert len(report.examples) == 10 and report.n_invalid == 1


def test_records_are_all_accounted_for(tmp_path):
    text = "pregunta;respuesta\n" + "".join(f"¿P{i}?;R{i}\n" for i in range(10)) + "¿x?;y;z\n¿P1?;R1\n;vacía\n"
    report = check_data([write(tmp_path / "f.csv", text)])
    assert report.n_records == 13
    assert len(report.examples) + report.n_invalid + report.n_duplicates == report.n_records


def test_report_json_is_serialisable(tmp_path):
    report = check_data([jsonl(tmp_path / "d.jsonl", qa_rows(10))])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["usable"] == 10 and data["files"][0]["schema"] == "qa"
