"""What an eval report says: the verdict against the rival and the terminal summary.

Read from the report dict that `evaluate` produced; nothing is typed in. Both the terminal
(`summary_lines`) and the HTML page (`html.py`) use these readings, so they cannot disagree.
"""

from __future__ import annotations

# A difference in chrF counts as better or worse only below this p-value (paired bootstrap).
SIGNIFICANT = 0.05
# The figures compared between the run and its rival, and which direction is better.
# ROUGE-L is reported in the tables but judged nowhere: no paired test for it ships with a library
# here, and on 10-20 answers its differences are mostly noise.
VERDICT = [("eval loss", "loss", "eval_loss", -1), ("perplexity", "loss", "perplexity", -1),
           ("chrF", "held_out", "chrf", 1)]


def domain_set(report: dict) -> tuple[str, dict]:
    """The question set that measures domain behaviour: the probe when there is one (the guard
    knows the held-out questions, since strict mode must serve every curated answer)."""
    for name in ("probe", "held_out"):
        if name in report["summary"]:
            return name, report["summary"][name]
    return "", {}


def verdict(report: dict) -> list[dict]:
    """The run against its rival on each figure: values, and whether the run is better."""
    names = [c["name"] for c in report["contestants"]]
    if len(names) < 2 or names[1] == "ungrounded":
        return []  # no rival (`--against none`)
    rival = names[1]
    rows = []
    for label, section, metric, sign in VERDICT:
        if section == "loss":
            mine, theirs = report["loss"]["tuned"][metric], report["loss"][rival][metric]
        else:
            held = report["summary"].get(section, {})
            mine, theirs = (held.get("tuned/off") or {}).get(metric), (held.get(f"{rival}/off") or {}).get(metric)
        if mine is None or theirs is None:
            continue
        row = {"figure": label, "tuned": mine, "rival": theirs, "rival_name": rival,
               "better": (mine - theirs) * sign > 0, "same": mine == theirs}
        test = (report.get("significance") or {}).get(metric)
        if test:  # chrF: better or worse only when the paired bootstrap says it is not noise
            row.update(tuned=test["tuned"], rival=test["rival"], p_value=test["p_value"],
                       tuned_ci=test["tuned_ci"], rival_ci=test["rival_ci"])
            row["same"] = row["same"] or test["p_value"] >= SIGNIFICANT
        rows.append(row)
    return rows


def fmt_verdict(row: dict) -> tuple[str, str, str]:
    """(rival, tuned, word) as shown: a tested figure with its 95% interval and p-value."""
    word = "same" if row["same"] else ("better" if row["better"] else "WORSE")
    if "p_value" not in row:
        return fmt_value(row["rival"]), fmt_value(row["tuned"]), word
    return (f"{fmt_value(row['rival'])} ± {row['rival_ci']:.1f}", f"{fmt_value(row['tuned'])} ± {row['tuned_ci']:.1f}",
            f"{word}, p = {row['p_value']:.3f}")


def headline(report: dict) -> str | None:
    """The figure a user meets first: the share of in-domain answers, as served, that hold all
    their key facts (and, apart, those about records held out from training)."""
    name, summary = domain_set(report)
    key = f"tuned/{report['guard_mode']}"
    s = summary.get(key) or summary.get("tuned/off")
    if not s or s.get("keys") is None:
        return None
    line = f"key facts: {fmt_share(s['keys'])} of {s['n_keys']} {name.replace('_', '-')} answers ({key})"
    trained, held = (report["summary"].get(k, {}).get(key) for k in ("probe_trained", "probe_held_out"))
    if trained and held and held.get("keys") is not None:
        line += f"; records trained on {fmt_share(trained['keys'])}, held out from training {fmt_share(held['keys'])}"
    if s.get("invented") is not None:
        line += f"; grounded answers with an invented fact {fmt_share(s['invented'])}"
    return line


def summary_lines(report: dict) -> list[str]:
    """A short terminal summary: the headline, the verdict, then domain behaviour per contestant and mode."""
    lines = [f"  {h}"] if (h := headline(report)) else []
    if report.get("incomplete"):
        lines.insert(0, f"  unfinished run: {report['incomplete']}")
    for row in verdict(report):
        rival, tuned, word = fmt_verdict(row)
        lines.append(f"  {row['figure']:<11} {row['rival_name']} {rival} -> tuned {tuned}  ({word})")
    name, summary = domain_set(report)
    if summary:
        lines.append(f"  domain behaviour on the {name.replace('_', '-')} questions:")
        lines.append(f"    {'contestant/mode':<22} {'keys':>6} {'correct':>8} {'ood refused':>12} {'injections':>11} "
                     f"{'wrongly refused':>16} {'invented':>9}")
        for key, s in summary.items():
            lines.append(f"    {key:<22} {fmt_share(s['keys']):>6} {fmt_share(s['correct']):>8} {fmt_share(s['out_of_domain_refused']):>12} "
                         f"{fmt_share(s['injection_refused']):>11} {fmt_share(s['wrongly_refused']):>16} {fmt_share(s.get('invented')):>9}")
    for row in report["regressions"][:3]:
        lines.append(f"  worse than {report['contestants'][1]['name']}: {row['question'][:70]!r} (chrF {row['delta']:+.1f})")
    return lines


def fmt_value(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")


def fmt_share(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
