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


def test_null_spellings_in_a_csv_are_missing_and_reported_by_line(tmp_path):
    # line 1 is the header, row i is on line i + 2: line 5 an empty cell, 9-14 and 22 a "missing" spelling
    rows = [f"¿Pregunta {i}?;Respuesta {i}." for i in range(20)]
    rows[3] = "¿Vacía?;"
    spellings = {7: "null", 8: "NULL", 9: "None", 10: "N/A", 11: "NaN", 12: "#N/A"}
    for idx, word in spellings.items():
        rows[idx] = f"¿Pregunta {idx}?;{word}"
    rows.append("¿Guion?; - ")
    report = check_data([write(tmp_path / "faq.csv", "pregunta;respuesta\n" + "\n".join(rows) + "\n")])
    errors = {i.line: i.message for i in report.errors if i.line}
    assert errors[5] == "empty 'respuesta'"
    for idx, word in spellings.items():
        assert f"holds {word!r}, taken as a missing value" in errors[idx + 2]
    assert "holds '-'" in errors[22]
    assert report.n_invalid == 8 and len(report.examples) == 13 and report.n_records == 21
    assert not any(m["content"].casefold() in ("null", "none", "n/a", "nan", "#n/a", "-")
                   for ex in report.examples for m in ex.messages)


def test_openai_content_parts_are_joined_and_image_parts_reported(tmp_path):
    parts = [{"role": "user", "content": [{"type": "text", "text": "¿Abren"}, {"type": "text", "text": "el sábado?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Sí, de 9 a 13."}]}]
    image = [{"role": "user", "content": [{"type": "text", "text": "¿Qué es esto?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
             {"role": "assistant", "content": "Un recibo."}]
    rows = [{"messages": [{"role": "user", "content": f"¿P{i}?"}, {"role": "assistant", "content": f"R{i}"}]} for i in range(10)]
    report = check_data([jsonl(tmp_path / "chat.jsonl", rows + [{"messages": parts}, {"messages": image}])])
    assert len(report.examples) == 11
    assert report.examples[-1].messages == [{"role": "user", "content": "¿Abren\nel sábado?"},
                                            {"role": "assistant", "content": "Sí, de 9 a 13."}]
    (err,) = report.errors
    assert err.line == 12 and "turn 1 (user) part 2 is an 'image_url' part" in err.message
    assert "empty content" not in " ".join(messages_of(report))


def test_a_line_in_another_schemas_shape_names_its_keys_and_schema(tmp_path):
    rows = qa_rows(10) + [{"instruction": "Resume el texto", "output": "Un resumen."}, {"tema": "horarios"}]
    report = check_data([jsonl(tmp_path / "faq.jsonl", rows)])
    by_line = {i.line: i.message for i in report.errors}
    assert "missing 'pregunta' and 'respuesta'" in by_line[11]
    assert "'instruction', 'output'" in by_line[11] and "'alpaca' schema" in by_line[11]
    assert by_line[12] == "missing 'pregunta' and 'respuesta': this line has 'tema'"
    assert report.n_invalid == 2


def test_a_file_is_read_in_the_shape_of_most_of_its_lines(tmp_path):
    chats = [{"messages": [{"role": "user", "content": f"¿P{i}?"}, {"role": "assistant", "content": f"R{i}"}]} for i in range(10)]
    report = check_data([jsonl(tmp_path / "chat.jsonl", chats[:5] + [{"instruction": "Resume", "output": "Un resumen."}] + chats[5:])])
    assert report.files[0].schema == "messages" and len(report.examples) == 10
    (err,) = report.errors
    assert err.line == 6 and "this line has 'instruction', 'output', the keys of the 'alpaca' schema" in err.message
