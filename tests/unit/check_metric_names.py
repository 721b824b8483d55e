#!/usr/bin/python3
"""check_metric_names.py — the monitoring files name only metrics lockstep serves (issue 17).

The metric table of connector/metrics_text.c is the one place a metric is declared; what
refers to metrics by name lives elsewhere and would silently show nothing after a
rename: the Grafana dashboard (deploy/grafana-dashboard.json), the Prometheus scrape
configuration (deploy/prometheus.yml), and the README's Monitoring section with its
alert table. This check reads the table through `lockstep metrics --markdown` and:

  1. every lockstep_* name in those files is a metric of the table (a histogram's
     _bucket/_sum/_count series included);
  2. every PromQL expression (the dashboard's targets and template queries, the README's
     alerts) parses: they are written into a rules file checked by `promtool check rules`
     (Debian's prometheus package), after Grafana's variables are given a value;
  3. deploy/prometheus.yml passes `promtool check config`;
  4. the dashboard shows what the issue asks for (lag, held back, throughput, batch
     phases, outbox, state size, health, late records) and every target uses the
     provisioned datasource (uid prometheus).

Run by ctest as unit_check_metric_names; exits 1 naming every problem.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

NAME = re.compile(r"\blockstep_[a-z0-9_]+")


def served_metrics(lockstep):
    out = subprocess.run([lockstep, "metrics", "--markdown"], check=True,
                         capture_output=True, text=True).stdout
    names = {}
    for line in out.splitlines():
        m = re.match(r"\| `(lockstep_[a-z0-9_]+)` \| (\w+) \|", line)
        if m:
            names[m.group(1)] = m.group(2)
    if len(names) < 10:
        sys.exit(f"check_metric_names: `lockstep metrics --markdown` listed {len(names)} "
                 f"metrics; its table format changed?\n{out}")
    series = set(names)
    for n, t in names.items():
        if t == "histogram":
            series |= {n + "_bucket", n + "_sum", n + "_count"}
    return names, series


def monitoring_section(readme):
    text = open(readme).read()
    m = re.search(r"^## Monitoring\n(.*?)^## ", text, re.S | re.M)
    if not m:
        sys.exit("check_metric_names: README.md has no '## Monitoring' section")
    return m.group(1)


def readme_alerts(section):
    """(name, expr) of the alert table: | Alert | `expr` [for ...] | why |"""
    alerts = []
    for line in section.splitlines():
        m = re.match(r"\| ([^|`]+?) \| `([^`]+)`", line)
        if m and m.group(1) != "Alert":
            # the table's placeholder for a configured value
            alerts.append((m.group(1), m.group(2).replace("<outbox.max.bytes>", "268435456")))
    return alerts


def grafana_exprs(dash):
    exprs = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            exprs.append((f"panel '{p.get('title')}' {t.get('refId')}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("definition") or ""
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
        if m:  # Grafana's function, not PromQL: its metric selector is
            exprs.append((f"variable '{v.get('name')}'", m.group(1)))
    return exprs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lockstep", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--promtool", default="promtool")
    a = ap.parse_args()
    problems = []
    names, series = served_metrics(a.lockstep)

    dash_file = os.path.join(a.source, "deploy/grafana-dashboard.json")
    dash = json.load(open(dash_file))
    prom_file = os.path.join(a.source, "deploy/prometheus.yml")
    section = monitoring_section(os.path.join(a.source, "README.md"))

    # 1. names
    for label, text in ((dash_file, open(dash_file).read()), (prom_file, open(prom_file).read()),
                        ("README.md ## Monitoring", section)):
        for n in sorted(set(NAME.findall(text))):
            if n not in series:
                problems.append(f"{label}: {n} is not a metric lockstep serves "
                                f"(lockstep metrics --markdown)")

    # 2. PromQL parses
    exprs = [(f"dashboard {w}", e) for w, e in grafana_exprs(dash)]
    exprs += [(f"README alert '{w}'", e) for w, e in readme_alerts(section)]
    if len(exprs) < 10:
        problems.append(f"only {len(exprs)} expressions found in the dashboard and the README")
    rules = ["groups:", "  - name: check", "    rules:"]
    for i, (where, e) in enumerate(exprs):
        # Grafana's variables: $app is inside a regex string; interval variables are not
        e = e.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        rules += [f"      - record: check:expr{i}", f"        expr: {json.dumps(e)}"]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("\n".join(rules) + "\n")
    try:
        r = subprocess.run([a.promtool, "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode:
            listing = "\n".join(f"  expr{i}: {w}: {e}" for i, (w, e) in enumerate(exprs))
            problems.append(f"promtool check rules refused an expression:\n{r.stdout}{r.stderr}"
                            f"{listing}")
    except FileNotFoundError:
        problems.append(f"{a.promtool} not found: install Debian's prometheus package")
    finally:
        os.unlink(f.name)

    # 3. the scrape configuration
    try:
        r = subprocess.run([a.promtool, "check", "config", prom_file], capture_output=True,
                           text=True)
        if r.returncode:
            problems.append(f"promtool check config {prom_file}:\n{r.stdout}{r.stderr}")
    except FileNotFoundError:
        pass  # reported above

    # 4. what the dashboard must show, from the provisioned datasource
    used = set(NAME.findall(json.dumps(dash)))
    for want in ("lockstep_consumer_lag_records", "lockstep_consumer_held_back_records",
                 "lockstep_records_total", "lockstep_batch_duration_seconds_bucket",
                 "lockstep_outbox_bytes", "lockstep_state_entries", "lockstep_healthy",
                 "lockstep_late_records_total"):
        if want not in used:
            problems.append(f"{dash_file}: no panel shows {want}")
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            uid = (t.get("datasource") or p.get("datasource") or {}).get("uid")
            if uid != "prometheus":
                problems.append(f"{dash_file}: panel '{p.get('title')}' uses datasource {uid}, "
                                f"not the provisioned 'prometheus'")

    for p in problems:
        print("check_metric_names:", p, file=sys.stderr)
    if problems:
        return 1
    print(f"check_metric_names: {len(names)} metrics; {len(exprs)} expressions parse; "
          f"the dashboard and the README name only served metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
