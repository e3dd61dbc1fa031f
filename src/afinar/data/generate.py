"""`afinar data generate`: a teacher model writes paraphrases and near misses for the domain.

Steps:
  1. read the recipe's records (`data check`'s usable examples: one curated question and answer each);
  2. plan the requests: one per record (`teacher.paraphrases` paraphrases, one per user style:
     informal, typos, shorthand, English, a situation described instead of the topic named), and
     batches of BATCH questions for the domain's near misses and out-of-domain questions; print
     their number and an estimate of the tokens before anything is sent;
  3. ask the first PREVIEW_RECORDS records and print what came back (`--preview` stops there);
  4. ask the rest with `teacher.concurrency` requests in flight, retried and cached (teacher.py),
     behind a progress bar with ETA and tokens;
  5. check every item (not empty, not too long, in the domain's language or English, not a copy of
     any record's question, not a duplicate); near misses and out-of-domain questions that the
     guard's ranking scores like a record's own paraphrases get a `flag` for review (they may be
     answered by that record) and stay out of use until the flag is deleted;
  6. write the output (generated.py's format, with provenance) and a review file beside it, both
     atomically, and only when every request was answered: a failed run writes nothing but its cache.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from afinar.data.augment import language
from afinar.data.check import normalise_text
from afinar.data.teacher import RequestCache, Transient, ask
from afinar.errors import AfinarError
from afinar.io import atomic_write_text

PROMPT_VERSION = "afinar-generate-1"
STYLES = ("informal", "typo", "shorthand", "english", "situation")
STYLE_HINTS = {
    "informal": "casual chat, lower case, no opening question mark, maybe a greeting",
    "typo": "typed fast on a phone: a typo or two, no accents",
    "shorthand": "very short: chat shorthand or just the key words",
    "english": "in English, as an English speaker would ask it",
    "situation": "describe the user's situation or problem instead of naming the topic",
}
LANGUAGE_NAMES = {"es": "Spanish", "en": "English"}
BATCH = 10  # near misses / out-of-domain questions asked per request
PREVIEW_RECORDS = 2
MAX_CONTEXT_QUESTIONS = 60  # the domain's questions shown in a near-miss request


@dataclass
class Request:
    kind: str  # paraphrase | near_miss | out_of_domain
    messages: list[dict]
    count: int
    record: int | None = None  # index into the records, for paraphrases


@dataclass
class GenerateResult:
    output: Path | None
    review: Path | None
    requests: int
    cached: int
    tokens: int
    accepted: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    flagged: int = 0
    retries: int = 0

    def summary(self) -> str:
        kept = ", ".join(f"{n} {k}" for k, n in self.accepted.items()) or "nothing"
        why = ", ".join(f"{n} {r}" for r, n in self.rejected.most_common()) or "none"
        return (f"{self.requests} requests ({self.cached} from the cache, {self.retries} retries), "
                f"{self.tokens} tokens; kept {kept}; rejected {sum(self.rejected.values())} ({why}); "
                f"{self.flagged} flagged for review")


def records_of(examples) -> list[tuple[str, str, str]]:
    """(curated question, answer, file:line) per single-question record, in data order."""
    out, seen = [], set()
    for ex in examples:
        q = ex.first_user().strip()
        if q and normalise_text(q) not in seen:
            seen.add(normalise_text(q))
            out.append((q, ex.last_answer(), ex.source))
    return out


def plan(records: list[tuple[str, str, str]], paraphrases: int, near_misses: int, out_of_domain: int,
         system_prompt: str = "") -> list[Request]:
    """Every request the run will send (step 2)."""
    lang = LANGUAGE_NAMES.get(language(" ".join(q for q, _, _ in records[:50])), "Spanish")
    requests = [Request("paraphrase", _paraphrase_messages(q, a, paraphrases, lang), paraphrases, i)
                for i, (q, a, _) in enumerate(records) if paraphrases]
    topics = "\n".join(f"- {q}" for q, _, _ in records[:MAX_CONTEXT_QUESTIONS])
    about = f"The assistant's instructions: {system_prompt}\n" if system_prompt else ""
    for kind, total in (("near_miss", near_misses), ("out_of_domain", out_of_domain)):
        for b in range(0, total, BATCH):
            n = min(BATCH, total - b)
            requests.append(Request(kind, _domain_messages(kind, topics, about, n, lang, b // BATCH + 1), n))
    return requests


def _paraphrase_messages(question: str, answer: str, n: int, lang: str) -> list[dict]:
    styles = [STYLES[i % len(STYLES)] for i in range(n)]
    wanted = "\n".join(f"{i + 1}. {s}: {STYLE_HINTS[s]}" for i, s in enumerate(styles))
    return [{"role": "system", "content": "You write realistic test questions for a customer-service assistant. Reply with JSON only."},
            {"role": "user", "content": (
                f"One entry of the assistant's FAQ:\nQuestion: {question}\nAnswer: {answer}\n\n"
                f"Write {n} different questions that real users would type to get this answer, one per style:\n{wanted}\n"
                f"Write them in {lang}, except the English one. Do not copy the FAQ question. Do not put facts "
                "from the answer into a question unless a user would already know them.\n"
                'Reply with JSON only: {"questions": [{"style": "...", "question": "..."}, ...]}')}]


def _domain_messages(kind: str, topics: str, about: str, n: int, lang: str, batch: int) -> list[dict]:
    if kind == "near_miss":
        task = (f"Write {n} questions that a user of this same service might ask, using the domain's words, "
                "that NONE of these FAQ entries answers (a service, price, place, person or policy they do not cover).")
    else:
        task = (f"Write {n} everyday questions that have nothing to do with this service (cooking, sport, health, "
                "maths, travel, technology, history, ...), written the way users type.")
    return [{"role": "system", "content": "You write realistic test questions for a customer-service assistant. Reply with JSON only."},
            {"role": "user", "content": (
                f"{about}The questions its FAQ answers:\n{topics}\n\n{task} Write them in {lang}. "
                f"This is batch {batch}: vary them from any earlier batch.\n"
                'Reply with JSON only: {"questions": ["...", "..."]}')}]


def parse_questions(text: str) -> list[dict]:
    """[{question, style}] from a teacher's reply: JSON (bare, fenced, or inside prose), else
    numbered or bulleted lines, else lines that end in a question mark. Raises ValueError when no
    question can be read (the request is retried)."""
    found = _json_questions(text)
    if found is None:
        found = [{"question": m.group(1).strip(), "style": ""}
                 for m in re.finditer(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$", text, re.M)]
    if not found:
        found = [{"question": line.strip(), "style": ""} for line in text.splitlines() if line.strip().endswith("?")]
    if not any(f["question"] for f in found):
        raise ValueError("no questions in it")
    return found  # empty ones included: they are counted as rejected


def _json_questions(text: str) -> list[dict] | None:
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    items = obj.get("questions") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        return None
    out = []
    for it in items:
        if isinstance(it, str):
            out.append({"question": it.strip(), "style": ""})
        elif isinstance(it, dict) and isinstance(it.get("question"), str):
            out.append({"question": it["question"].strip(), "style": str(it.get("style") or "")})
    return out


def reject_reason(question: str, lang: str, record_questions: set[str], seen: set[str]) -> str:
    """Why an item is rejected (step 5), or '' when it is kept."""
    if not question.strip():
        return "empty"
    if len(question) > 300:
        return "too long"
    letters = [c for c in question if c.isalpha()]
    latin = sum("LATIN" in unicodedata.name(c, "") for c in letters)
    if letters and latin / len(letters) < 0.9 or language(question) not in (lang, "en"):
        return "wrong language"
    key = normalise_text(question)
    if key in record_questions:
        return "copy of a record's question"
    if key in seen:
        return "duplicate"
    return ""


def provenance(teacher) -> dict:
    return {"teacher": teacher.public_url, "model": teacher.model, "prompt_version": PROMPT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def run_requests(teacher, requests: list[Request], cache: RequestCache, concurrency: int, retries: int,
                 backoff_s: float = 1.0, progress: bool = True) -> tuple[dict[int, list[dict]], dict]:
    """Answers by request index; raises AfinarError when some requests failed after every retry."""
    from tqdm.auto import tqdm

    answers: dict[int, list[dict]] = {}
    stats = {"cached": 0, "tokens": 0, "retries": 0}
    failed: list[str] = []
    bar = tqdm(total=len(requests), desc="teacher", unit="req", disable=not progress, dynamic_ncols=True)

    def on_retry(reason: str) -> None:
        stats["retries"] += 1
        bar.set_postfix_str(f"tokens {stats['tokens']}, retrying: {reason}"[:80])

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(ask, teacher, r.messages, parse_questions, cache, retries, backoff_s,
                               random.Random(i), on_retry): i for i, r in enumerate(requests)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                answer = future.result()
                answers[i] = answer.parsed
                stats["cached"] += answer.cached
                stats["tokens"] += answer.tokens
            except Transient as exc:
                failed.append(str(exc))
            bar.update(1)
            bar.set_postfix_str(f"tokens {stats['tokens']}")
    bar.close()
    if failed:
        done = (f"the {len(cache)} answered requests are cached in {cache.path}: run the same command again to finish"
                if len(cache) else f"no request was answered: is the teacher running at {teacher.public_url}?")
        raise AfinarError(f"{len(failed)} of {len(requests)} teacher requests failed after {retries} retries "
                          f"(last: {failed[-1]}); nothing was written; {done}")
    return answers, stats


def estimate(requests: list[Request]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) expected, at ~4 characters a token and ~30 tokens a question."""
    prompt = sum(len(m["content"]) for r in requests for m in r.messages) // 4
    return prompt, sum(30 * r.count for r in requests)


def cache_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.cache.jsonl")


def review_path(output: Path) -> Path:
    return output.with_name(output.stem + ".review.txt")


def write_outputs(output: Path, rows: list[dict], review: list[str]) -> tuple[Path, Path]:
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return output, atomic_write_text(review_path(output), "\n".join(review) + "\n")


def generate_data(recipe, teacher, output: Path | None = None, preview_only: bool = False, progress: bool = True,
                  backoff_s: float = 1.0, embedder=None, log=print) -> GenerateResult:
    """Ask `teacher` for the recipe's paraphrases, near misses and out-of-domain questions (module docstring)."""
    from afinar.data import check_data

    t = recipe.teacher
    output = Path(output or t.output)
    d = recipe.data
    report = check_data(d.files, schema=d.schema_, columns=d.columns, min_examples=1)
    records = records_of(report.examples)
    if not records:
        raise AfinarError(f"{', '.join(d.files)}: no usable records to generate from; run `afinar data check` on it")
    requests = plan(records, t.paraphrases, t.near_misses, t.out_of_domain, recipe.system_prompt)
    prompt_tokens, completion_tokens = estimate(requests)
    log(f"teacher {teacher.public_url} ({teacher.model}): {len(records)} records -> {len(requests)} requests, "
        f"about {prompt_tokens + completion_tokens} tokens ({prompt_tokens} prompt, {completion_tokens} completion)")
    cache = RequestCache(cache_path(output))
    if len(cache):
        log(f"resuming: {len(cache)} requests already answered in {cache.path}")
    first = [r for r in requests if r.kind == "paraphrase"][:PREVIEW_RECORDS]
    answers, seen = run_requests(teacher, first, cache, t.concurrency, t.retries, backoff_s, False)
    _print_preview(first, answers, records, log)
    if preview_only:
        return GenerateResult(None, None, len(first), seen["cached"], seen["tokens"], retries=seen["retries"])
    answers, stats = run_requests(teacher, requests, cache, t.concurrency, t.retries, backoff_s, progress)
    # the preview's requests are answered from the cache the second time: count them once
    result = GenerateResult(None, None, len(requests), stats["cached"] - len(first) + seen["cached"],
                            stats["tokens"] + seen["tokens"], retries=stats["retries"] + seen["retries"])
    rows, review = collect(requests, answers, records, provenance(teacher), result, embedder)
    result.output, result.review = write_outputs(output, rows, review)
    return result


def _print_preview(first: list[Request], answers: dict[int, list[dict]], records, log) -> None:
    for i, request in enumerate(first):
        log(f"preview: {records[request.record][0]}")
        for item in answers.get(i, []):
            log(f"    [{item['style'] or '?'}] {item['question']}")


def collect(requests: list[Request], answers: dict[int, list[dict]], records, prov: dict, result: GenerateResult,
            embedder=None) -> tuple[list[dict], list[str]]:
    """The checked rows to write (step 5) and the review file's lines; counts go into `result`."""
    lang = language(" ".join(q for q, _, _ in records[:50]))
    record_questions = {normalise_text(q) for q, _, _ in records}
    seen: set[str] = set()
    rows, review = [], [f"afinar data generate: review ({PROMPT_VERSION})", ""]
    for i, request in enumerate(requests):
        for item in answers.get(i, []):
            reason = reject_reason(item["question"], lang, record_questions, seen)
            if reason:
                result.rejected[reason] += 1
                review.append(f"rejected ({reason}) [{request.kind}]: {item['question']}")
                continue
            seen.add(normalise_text(item["question"]))
            row = {"kind": request.kind, "question": item["question"].strip()}
            if request.kind == "paraphrase":
                q, _, source = records[request.record]
                row.update(record=q, style=item["style"], source=source)
            rows.append(dict(row, provenance=prov))
    result.flagged = _flag_answered(rows, records, embedder, review)
    result.accepted.update(r["kind"] for r in rows)
    return rows, review


def _flag_answered(rows: list[dict], records, embedder, review: list[str]) -> int:
    """Flag near misses and out-of-domain questions that score like the records' own paraphrases:
    at or above the median score of the kept paraphrases against their record (or the guard's
    strict threshold, calibrated on the bundled out-of-domain questions, when there are few)."""
    import numpy as np

    from afinar.data.augment import bundled_negatives
    from afinar.index import DomainGuard, Record, load_embedder

    others = [r for r in rows if r["kind"] != "paraphrase"]
    if not others:
        return 0
    guard = DomainGuard([Record([q], a, s) for q, a, s in records], embedder or load_embedder())
    index = {q: i for i, (q, _, _) in enumerate(records)}
    para = [r for r in rows if r["kind"] == "paraphrase"]
    if len(para) >= 5:
        m = guard.matrix([r["question"] for r in para])
        cut = float(np.median([m[j, index[r["record"]]] for j, r in enumerate(para)]))
    else:
        cut = guard.calibrate(list(bundled_negatives()[0])).strict
    flagged = 0
    for row, (best, score) in zip(others, guard.scores([r["question"] for r in others])):
        if score >= cut:
            row["flag"] = f"scores {score:.2f} against {records[best][0]!r}, like its paraphrases: check it is not answered there"
            review.append(f"flagged [{row['kind']}]: {row['question']}  ->  {records[best][0]} ({score:.2f})")
            flagged += 1
    return flagged
