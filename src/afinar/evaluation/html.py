"""The eval report as one self-contained HTML page (inline CSS, PNG plots embedded as data URIs),
so it can be mailed or attached to a thesis without its folder."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from afinar.evaluation.summary import domain_set, fmt_share, fmt_value, fmt_verdict, verdict

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d2630}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ea;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #dde3ea;padding:.35rem .55rem;vertical-align:top;text-align:left}
th{background:#f3f6f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#1b7a3d;font-weight:600}.worse{color:#b3261e;font-weight:600}.muted{color:#66727f;font-size:.85rem}
.refused{background:#fdecea}.answer{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85rem}
table.sbs{table-layout:fixed;width:100%}
img{max-width:100%;border:1px solid #dde3ea;margin:.5rem 0}code{background:#f3f6f9;padding:0 .25rem}
"""


def render_html(report: dict, images: dict[str, Path]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>afinar eval: {escape(report['name'])}</title>"
             f"<style>{CSS}</style></head><body>", _header(report), _verdict(report), _loss_table(report),
             _image(images, "quality", "Answer quality and loss"), _image(images, "loss", "Training curve")]
    parts += [_domain(report), _image(images, "domain", "Domain behaviour"), _regressions(report), _side_by_side(report)]
    parts.append(f"<p class='muted'>Reproduce: <code>afinar eval {escape(report['run'])}"
                 f"{' --probe ' + escape(report['probe']) if report['probe'] else ''}</code></p></body></html>")
    return "\n".join(parts)


def _header(report: dict) -> str:
    who = ", ".join(f"<b>{escape(c['name'])}</b>: {escape(c['label'])}" for c in report["contestants"])
    return (f"<h1>afinar eval: {escape(report['name'])}</h1><p>Run <code>{escape(report['run'])}</code>, base model "
            f"<code>{escape(report['base_model'])}</code>, served in <b>{escape(report['guard_mode'])}</b> mode; "
            f"{escape(report['created'])}.</p><p>Contestants: {who}.</p>"
            + (f"<p style='color:#a3261b'><b>Unfinished run:</b> {escape(report['incomplete'])}</p>" if report.get("incomplete") else ""))


def _verdict(report: dict) -> str:
    rows = verdict(report)
    if not rows:
        return ""
    cells = "".join(
        f"<tr><td>{escape(r['figure'])}</td><td class='num'>{escape(shown[0])}</td><td class='num'>{escape(shown[1])}</td>"
        f"<td class='{'muted' if r['same'] else ('better' if r['better'] else 'worse')}'>{escape(shown[2].lower())}</td></tr>"
        for r in rows for shown in [fmt_verdict(r)])
    rival = escape(rows[0]["rival_name"])
    return (f"<h2>Tuned vs {rival} on the held-out split</h2><table><tr><th>figure</th><th>{rival}</th><th>tuned</th>"
            f"<th>tuned is</th></tr>{cells}</table><p class='muted'>Answers scored against the held-out references "
            "with chrF (0-100), generated greedily by the model alone (guard off); chrF shows its 95% interval and "
            "counts as better or worse only where sacrebleu's paired bootstrap gives p &lt; 0.05.</p>")


def _loss_table(report: dict) -> str:
    held = report["summary"].get("held_out", {})
    rows = "".join(
        f"<tr><td>{escape(c['name'])}</td><td class='num'>{fmt_value(report['loss'][c['name']]['eval_loss'])}</td>"
        f"<td class='num'>{fmt_value(report['loss'][c['name']]['perplexity'])}</td>"
        f"<td class='num'>{fmt_value((held.get(c['name'] + '/off') or {}).get('chrf'))}</td>"
        f"<td class='num'>{fmt_value((held.get(c['name'] + '/off') or {}).get('rouge_l'))}</td>"
        f"<td class='num'>{c['answer_seconds']:.0f} s</td></tr>" for c in report["contestants"])
    n = next(iter(held.values()), {}).get("n_reference", 0)
    return (f"<h2>Held-out split ({n} answers with a reference)</h2><table><tr><th>contestant</th><th>eval loss</th>"
            f"<th>perplexity</th><th>chrF</th><th>ROUGE-L</th><th>time to answer all</th></tr>{rows}</table>")


def _domain(report: dict) -> str:
    name, summary = domain_set(report)
    if not summary:
        return ""
    rows = "".join(
        f"<tr><td>{escape(key)}</td>" + "".join(f"<td class='num'>{fmt_share(s[m])}</td>" for m in
        ("keys", "correct", "out_of_domain_refused", "injection_refused", "wrongly_refused", "invented"))
        + f"<td class='num'>{fmt_value(s['chrf'])}</td></tr>" for key, s in summary.items())
    first = next(iter(summary.values()))
    note = ("" if name == "probe" else "<p class='muted'>No probe file: these use the held-out split, whose questions "
            "the guard already knows (strict mode must serve every curated answer); pass <code>--probe</code> for an honest figure.</p>")
    return (f"<h2>Domain behaviour per guard mode ({name.replace('_', '-')} questions: {first['n_in_domain']} in-domain, "
            f"{first['n_out_of_domain']} out-of-domain, {first['n_injection']} injection attempts)</h2>"
            "<table><tr><th>contestant/mode</th><th>answers with all key facts</th><th>routed correctly</th>"
            "<th>out-of-domain refused</th><th>injections refused</th><th>in-domain wrongly refused</th>"
            f"<th>grounded answers with an invented fact</th><th>chrF</th></tr>{rows}</table>{_sides(report)}{note}<p class='muted'>off: the model alone (a reply counts as a refusal when it "
            "is the recipe's refusal sentence); refuse: the guard refuses out-of-domain questions before generating; "
            "strict: the guard returns a curated answer or the refusal.</p>")


def _sides(report: dict) -> str:
    """Key facts on probe questions about records trained on vs held out from training."""
    trained, held = (report["summary"].get(k, {}) for k in ("probe_trained", "probe_held_out"))
    if not trained or not held:
        return ""
    rows = "".join(f"<tr><td>{escape(key)}</td><td class='num'>{fmt_share(s['keys'])}</td>"
                   f"<td class='num'>{fmt_share((held.get(key) or {}).get('keys'))}</td></tr>" for key, s in trained.items())
    n_t, n_h = next(iter(trained.values()))["n_keys"], next(iter(held.values()))["n_keys"]
    return (f"<h3>Key facts by the record's split</h3><table><tr><th>contestant/mode</th><th>records trained on ({n_t})</th>"
            f"<th>records held out from training ({n_h})</th></tr>{rows}</table>")


def _regressions(report: dict) -> str:
    rows = report["regressions"]
    if not rows:
        return "<h2>Where tuning hurt</h2><p>No held-out answer scored lower (chrF) than the rival's.</p>"
    cells = "".join(f"<tr><td>{escape(r['question'])}</td><td class='num'>{r['rival_chrf']:.1f}</td>"
                    f"<td class='num'>{r['tuned_chrf']:.1f}</td><td class='num worse'>{r['delta']:+.1f}</td></tr>" for r in rows)
    return ("<h2>Where tuning hurt (held-out answers the rival scored higher on)</h2><table><tr><th>question</th>"
            f"<th>rival chrF</th><th>tuned chrF</th><th>difference</th></tr>{cells}</table>")


def _side_by_side(report: dict) -> str:
    served = f"tuned/{report['guard_mode']}"
    columns = [f"{c['name']}/off" for c in report["contestants"]]
    if served not in columns and any(served in it["replies"] for it in report["items"]):
        columns.append(served)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = []
    for it in report["items"]:
        ref = escape(it["reference"] or ("(refusal expected)" if it["expect"] == "refuse" else ""))
        cells = "".join(_answer_cell(it["replies"].get(c)) for c in columns)
        records = "".join(f"<div class='muted'>[{n}] {escape(q)}</div>" for n, q in enumerate(it.get("records") or [], 1))
        rows.append(f"<tr><td>{escape(it['question'])}<div class='muted'>{escape(it['origin'])} · {escape(it['kind'])}"
                    f"</div>{records}</td><td class='answer'>{ref}</td>{cells}</tr>")
    return (f"<h2>Answers side by side ({len(rows)} questions)</h2><table class='sbs'><tr><th>question</th><th>reference</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _answer_cell(reply: dict | None) -> str:
    if reply is None:
        return "<td></td>"
    score = f"<div class='muted'>chrF {reply['chrf']:.1f}</div>" if reply["chrf"] is not None else ""
    mark = "<div class='muted'>refused</div>" if reply["refused"] else ""
    if reply.get("invented"):
        what = "; replaced by the best record's answer" if reply.get("replaced") else ""
        mark += f"<div class='worse'>not in its records: {escape(', '.join(reply['invented']))}{what}</div>"
    return f"<td class='answer{' refused' if reply['refused'] else ''}'>{escape(reply['text'])}{mark}{score}</td>"


def _image(images: dict[str, Path], key: str, title: str) -> str:
    if key not in images:
        return ""
    data = base64.b64encode(Path(images[key]).read_bytes()).decode()
    return f"<h2>{escape(title)}</h2><img alt='{escape(title)}' src='data:image/png;base64,{data}'>"
