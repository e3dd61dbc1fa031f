"""Reading CSV/JSON/JSONL: encodings, delimiters, line numbers, unparseable rows."""

import pytest
from conftest import write

from afinar.data.readers import read_file, sniff_delimiter
from afinar.errors import DataError


@pytest.mark.parametrize("delim", [",", ";", "\t"])
def test_csv_delimiter_is_sniffed(tmp_path, delim):
    path = write(tmp_path / "faq.csv", f"pregunta{delim}respuesta\n¿Hola?{delim}Buenas\n")
    raw = read_file(path)
    assert raw.delimiter == delim
    assert raw.records[0].data == {"pregunta": "¿Hola?", "respuesta": "Buenas"}


def test_sniff_prefers_the_delimiter_that_splits_the_header():
    assert sniff_delimiter("a;b;c") == ";"
    assert sniff_delimiter('"x, y";z') == ";"


def test_csv_quoted_multiline_field_keeps_the_row_start_line(tmp_path):
    text = 'q;a\n"uno";"línea 1\nlínea 2"\n"dos";"x"\n'
    raw = read_file(write(tmp_path / "f.csv", text))
    assert [r.line for r in raw.records] == [2, 4]
    assert raw.records[0].data["a"] == "línea 1\nlínea 2"


def test_csv_row_with_extra_field_is_reported_with_its_line(tmp_path):
    raw = read_file(write(tmp_path / "f.csv", "pregunta;respuesta\n¿a?;b\n¿c?;d; e\n"))
    assert len(raw.records) == 1 and raw.unreadable == 1
    assert raw.issues[0].line == 3
    assert "3 fields but the header has 2" in raw.issues[0].message
    assert "double quotes" in raw.issues[0].message


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_bom_and_crlf(tmp_path, newline):
    path = tmp_path / "f.csv"
    path.write_bytes("\ufeffpregunta;respuesta\r\n¿Qué?;Sí\r\n".replace("\r\n", newline).encode("utf-8"))
    raw = read_file(path)
    assert raw.columns == ["pregunta", "respuesta"]
    assert raw.records[0].data == {"pregunta": "¿Qué?", "respuesta": "Sí"}


def test_utf16_with_bom(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes("pregunta,respuesta\n¿Año?,Sí\n".encode("utf-16"))
    assert read_file(path).records[0].data["pregunta"] == "¿Año?"


def test_windows_1252_is_decoded_with_a_warning(tmp_path):
    path = write(tmp_path / "f.csv", "pregunta;respuesta\n¿Cuánto cuesta?;Cien soles, señor\n", "cp1252")
    raw = read_file(path)
    assert raw.encoding == "cp1252"
    assert raw.records[0].data["respuesta"] == "Cien soles, señor"
    assert raw.issues[0].severity == "warning" and "UTF-8" in raw.issues[0].message


def test_undecodable_bytes_are_refused_not_garbled(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"q,a\nhola,\x81\x8d\x8f\x90\x9d\n")  # bytes undefined in cp1252
    with pytest.raises(DataError, match=r"f.csv:2: not valid UTF-8"):
        read_file(path)


def test_double_encoded_text_is_refused(tmp_path):
    path = write(tmp_path / "f.csv", "q,a\n¿Qué?,canciÃ³n\n")
    with pytest.raises(DataError, match=r"f.csv:2: .*double-encoded"):
        read_file(path)


def test_jsonl_invalid_line_is_reported_and_others_kept(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"q": 1}\n\n{"q": 2,}\n[1, 2]\n')
    raw = read_file(path)
    assert [r.line for r in raw.records] == [1, 4]
    assert raw.issues[0].line == 3 and "invalid JSON" in raw.issues[0].message


def test_json_array_records_know_their_lines(tmp_path):
    text = '[\n  {"q": "a",\n   "a": "b"},\n  {"q": "c", "a": "d"}\n]\n'
    raw = read_file(write(tmp_path / "d.json", text))
    assert [r.line for r in raw.records] == [2, 4]


def test_json_object_of_records_and_data_wrapper(tmp_path):
    raw = read_file(write(tmp_path / "a.json", '{"x1": {"q": "a", "a": "b"},\n "x2": {"q": "c", "a": "d"}}'))
    assert [r.data["q"] for r in raw.records] == ["a", "c"] and raw.records[1].line == 2
    raw = read_file(write(tmp_path / "b.json", '{"data": [\n{"q": "a", "a": "b"}\n]}'))
    assert raw.records[0].data == {"q": "a", "a": "b"} and raw.records[0].line == 2


def test_invalid_json_document_reports_its_line(tmp_path):
    raw = read_file(write(tmp_path / "d.json", '[\n{"q": "a"},\n{"q": }\n]'))
    assert raw.records == [] and raw.issues[0].line == 3


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_file(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a folder"):
        read_file(tmp_path)


def test_unknown_file_type_is_refused(tmp_path):
    """Regression: a Markdown file was parsed as CSV and produced dozens of row errors."""
    with pytest.raises(DataError, match=r"unsupported file type '.md'"):
        read_file(write(tmp_path / "notes.md", "# title\n\ntext, more\n"))
