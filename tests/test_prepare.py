"""`prepare_data`: no leakage across the split, augmentation shares, atomic outputs, errors."""

import json
import random

import pytest
from conftest import write

from afinar.data.augment import bundled_negatives, language, paraphrase
from afinar.data.prepare import load_prepared, prepare_data, split_examples
from afinar.data.schemas import Example
from afinar.errors import DataError
from afinar.recipes import load_recipe


def make_recipe(tmp_path, rows, extra=""):
    data = write(tmp_path / "d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    text = f"name: t\nrefusal: Solo hablo de algoritmos.\ndata:\n  files: [{data.name}]\n{extra}"
    return load_recipe(write(tmp_path / "r.yaml", text))


def rows(n):
    # two paraphrases per answer: the grouped split must keep each pair together
    out = []
    for i in range(n):
        out.append({"pregunta": f"¿Qué es la estructura {i}?", "respuesta": f"La estructura {i} es así."})
        out.append({"pregunta": f"Explícame la estructura {i}", "respuesta": f"La estructura {i} es así."})
    return out


def test_split_by_answer_has_no_leakage(tmp_path):
    recipe = make_recipe(tmp_path, rows(20), "  eval_fraction: 0.25\n  negatives: 0\n")
    prepared = prepare_data(recipe, tmp_path / "out")
    train_answers = {ex.last_answer() for ex in prepared.train}
    eval_answers = {ex.last_answer() for ex in prepared.eval}
    assert eval_answers and not (train_answers & eval_answers)
    assert len(prepared.train) + len(prepared.eval) == 40
    assert 8 <= len(prepared.eval) <= 12


def test_split_by_record_and_empty_fraction():
    exs = [Example([{"role": "user", "content": str(i)}, {"role": "assistant", "content": "same"}]) for i in range(10)]
    train, held = split_examples(exs, 0.3, "record", 0)
    assert len(held) == 3 and len(train) == 7
    train, held = split_examples(exs, 0.3, "answer", 0)  # one answer: everything trains
    assert held == [] and len(train) == 10
    assert split_examples(exs, 0.0, "record", 0) == (exs, [])


def test_paraphrases_and_negatives(tmp_path):
    recipe = make_recipe(tmp_path, rows(20), "  paraphrases: 2\n  negatives: 0.1\n  eval_fraction: 0.2\n")
    prepared = prepare_data(recipe, tmp_path / "out")
    c = prepared.counts
    assert c["train_paraphrase"] == 2 * c["train_original"]
    share = c["train_negative"] / c["train"]
    assert 0.07 <= share <= 0.13
    negatives = [ex for ex in prepared.train if ex.kind == "negative"]
    assert all(ex.last_answer() == "Solo hablo de algoritmos." for ex in negatives)
    eval_negs = {ex.first_user() for ex in prepared.eval if ex.kind == "negative"}
    assert eval_negs and not (eval_negs & {ex.first_user() for ex in negatives})  # disjoint pools
    assert sum(language(ex.first_user()) == "es" for ex in negatives) >= len(negatives) // 2


def test_outputs_written_and_readable(tmp_path):
    recipe = make_recipe(tmp_path, rows(10))
    prepared = prepare_data(recipe, tmp_path / "out")
    assert load_prepared(prepared.train_path)[0].messages == prepared.train[0].messages
    report = json.loads(prepared.report_path.read_text())
    assert report["counts"]["train"] == len(prepared.train)
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary files left behind


def test_errors_stop_prepare_unless_skip_invalid(tmp_path):
    bad = rows(10) + [{"pregunta": "¿Vacía?", "respuesta": ""}]
    recipe = make_recipe(tmp_path, bad)
    with pytest.raises(DataError, match=r"(?s)d.jsonl:21: error: empty 'respuesta'.*skip_invalid"):
        prepare_data(recipe, tmp_path / "out")
    assert not (tmp_path / "out" / "train.jsonl").exists()
    recipe.data.skip_invalid = True
    prepared = prepare_data(recipe, tmp_path / "out")
    assert prepared.counts["invalid_skipped"] == 1


def test_too_few_examples_is_fatal_even_with_skip_invalid(tmp_path):
    recipe = make_recipe(tmp_path, rows(2), "  skip_invalid: true\n")
    with pytest.raises(DataError, match="only 4 usable"):
        prepare_data(recipe, tmp_path / "out")


def test_paraphrase_templates_by_language():
    rng = random.Random(0)
    es = paraphrase("¿Qué es una pila?", rng, 3)
    en = paraphrase("What is a stack?", rng, 3)
    assert len(es) == 3 and all("pila" in p and p != "¿Qué es una pila?" for p in es)
    assert len(en) == 3 and all("stack" in p for p in en)
    assert language("¿Cuánto cuesta el curso?") == "es" and language("How much is the course?") == "en"


def test_bundled_negative_pools_are_disjoint_and_large():
    train, held = bundled_negatives()
    assert len(train) >= 150 and len(held) >= 40 and not set(train) & set(held)
