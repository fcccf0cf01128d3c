"""The Job Monitor's and Pilot Monitor's pages, as HTML built by :mod:`server_stub.markup`.

Functions here only turn data into markup (escaped by construction); what data, who may
see it and what may be done with it is decided in :mod:`server_stub.monitor`. Status is
always written out as text, so nothing depends on colour.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from server_stub.markup import Safe, el, href, join

PAGE_SIZES = (25, 50, 100, 200)
JOB_COLUMNS = (
    ("id", "ID"),
    ("name", "Name"),
    ("status", "Status"),
    ("minor", "Minor status"),
    ("application", "Application status"),
    ("site", "Site"),
    ("owner", "Owner"),
    ("submitted", "Submitted (UTC)"),
    ("updated", "Updated (UTC)"),
)


@dataclass(frozen=True)
class JobQuery:
    """The jobs table's filters, sort and page, as given in the URL."""

    filters: Mapping[str, str]
    sort: str = "id"
    descending: bool = True
    page: int = 1
    size: int = 50

    def link(self, **change: object) -> str:
        values: dict[str, object] = {
            **self.filters,
            "sort": None if self.sort == "id" else self.sort,
            "dir": None if self.descending else "asc",
            "page": None if self.page == 1 else self.page,
            "size": None if self.size == 50 else self.size,
        }
        values.update(change)
        return href("/", **values)


def when(ts: float | None) -> Safe:
    if not ts:
        return Safe("-")
    stamp = time.gmtime(ts)
    return el(
        "time", time.strftime("%Y-%m-%d %H:%M:%S", stamp), datetime=time.strftime("%FT%TZ", stamp)
    )


def job_link(job_id: int) -> Safe:
    return el("a", str(job_id), href=f"/jobs/{job_id}", id=f"job-{job_id}")


def pilot_link(stamp: str | None) -> Safe:
    if not stamp:
        return Safe("-")
    return el("a", stamp, href="/pilots/" + quote(stamp, safe=""))


def value(data: Any) -> Safe:
    """Any JSON value as text: objects as definition lists, lists comma-separated."""
    if isinstance(data, Mapping):
        if not data:
            return Safe("-")
        return el(
            "dl", [(el("dt", str(k)), el("dd", value(v))) for k, v in data.items()], class_="kv"
        )
    if isinstance(data, list | tuple):
        return join([", ".join(str(v) for v in data)]) if data else Safe("-")
    if data is None or data == "":
        return Safe("-")
    if isinstance(data, bool):
        return Safe("yes" if data else "no")
    return join([str(data)])


def table(
    caption: str, head: Sequence[object], rows: Sequence[Sequence[object]], **attrs: object
) -> Safe:
    return el(
        "table",
        el("caption", caption),
        el("thead", el("tr", [el("th", h, scope="col") for h in head])),
        el("tbody", [el("tr", [el("td", c) for c in row]) for row in rows]),
        **attrs,
    )


# -- jobs ---------------------------------------------------------------------------------


def jobs_page(
    query: JobQuery,
    rows: list[dict[str, Any]],
    total: int,
    choices: Mapping[str, list[str]],
) -> tuple[str, Safe]:
    first = (query.page - 1) * query.size + 1
    shown = (
        f"{total} job(s) match; showing {first} to {first + len(rows) - 1}"
        if rows
        else f"{total} job(s) match; none on this page"
    )
    return "Jobs", join(
        [
            el("h1", "Jobs"),
            _filter_form(query, choices),
            el("p", shown, id="summary", role="status"),
            _jobs_table(query, rows),
            _pager(query, total),
        ]
    )


def _filter_form(query: JobQuery, choices: Mapping[str, list[str]]) -> Safe:
    fields = []
    for key, label in (("status", "Status"), ("site", "Site"), ("owner", "Owner")):
        current = query.filters.get(key, "")
        options = [el("option", "any", value="")]
        known = choices.get(key, [])
        if current and current not in known:
            known = [current, *known]
        options += [el("option", v, value=v, selected=v == current) for v in known]
        fields.append(
            el(
                "p",
                el("label", label, for_=f"f-{key}"),
                el("select", options, id=f"f-{key}", name=key),
            )
        )
    for key, label in (
        ("name", "Name contains"),
        ("minor", "Minor status contains"),
        ("application", "Application status contains"),
    ):
        fields.append(
            el(
                "p",
                el("label", label, for_=f"f-{key}"),
                el(
                    "input",
                    id=f"f-{key}",
                    name=key,
                    type="search",
                    value=query.filters.get(key, ""),
                    maxlength="200",
                ),
            )
        )
    sizes = [el("option", str(n), value=str(n), selected=n == query.size) for n in PAGE_SIZES]
    fields.append(
        el(
            "p",
            el("label", "Per page", for_="f-size"),
            el("select", sizes, id="f-size", name="size"),
        )
    )
    hidden = [
        el("input", type="hidden", name="sort", value=query.sort) if query.sort != "id" else None,
        el("input", type="hidden", name="dir", value="asc") if not query.descending else None,
    ]
    buttons = el(
        "p",
        el("button", "Filter", type="submit", id="filter"),
        " ",
        el("a", "Clear filters", href="/"),
        class_="buttons",
    )
    return el(
        "form",
        el("fieldset", el("legend", "Filter jobs"), fields, hidden, buttons),
        method="get",
        action="/",
        class_="filters",
        role="search",
    )


def _jobs_table(query: JobQuery, rows: list[dict[str, Any]]) -> Safe:
    head = []
    for key, label in JOB_COLUMNS:
        active = query.sort == key
        descending = not query.descending if active else key in ("id", "submitted", "updated")
        mark = (" (descending)" if query.descending else " (ascending)") if active else ""
        sort_state = None
        if active:
            sort_state = "descending" if query.descending else "ascending"
        link = el(
            "a",
            label,
            el("span", mark, class_="sort-mark") if mark else None,
            href=query.link(sort=key, dir=None if descending else "asc", page=None),
        )
        head.append(el("th", link, scope="col", aria_sort=sort_state))
    body = [
        el(
            "tr",
            el("td", job_link(r["job_id"])),
            el("td", r["job_name"] or "-", class_="name"),
            el("td", r["status"], class_="status", data_status=r["status"]),
            el("td", r["minor_status"] or "-"),
            el("td", r["application_status"] or "-"),
            el("td", r["site"] or "-"),
            el("td", r["owner"] or "-", class_="owner"),
            el("td", when(r["submitted"])),
            el("td", when(r["updated"])),
        )
        for r in rows
    ]
    return el(
        "div",
        el(
            "table",
            el("caption", "Jobs (select a column heading to sort by it)"),
            el("thead", el("tr", head)),
            el("tbody", body),
            id="jobs",
        ),
        class_="scroll",
    )


def _pager(query: JobQuery, total: int) -> Safe:
    pages = max(1, -(-total // query.size))
    page = query.page

    def step(label: str, target: int, rel: str | None = None) -> Safe:
        if target == page or target < 1 or target > pages:
            return el("span", label, class_="disabled", aria_disabled="true")
        return el("a", label, href=query.link(page=target), rel=rel)

    return el(
        "nav",
        step("First", 1),
        " ",
        step("Previous", page - 1, "prev"),
        " ",
        el("span", f"Page {page} of {pages}"),
        " ",
        step("Next", page + 1, "next"),
        " ",
        step("Last", pages),
        aria_label="Pages",
        class_="pager",
    )


def job_page(
    job: dict[str, Any],
    history: list[dict[str, Any]],
    jdl_text: str,
    *,
    may_act: bool,
    csrf: str,
    result: str | None,
    killable: bool,
    reschedulable: bool,
) -> tuple[str, Safe]:
    jid = job["job_id"]
    actions: list[object] = []
    if may_act and killable:
        actions.append(_action(f"/jobs/{jid}/kill", "Kill job", csrf, "kill"))
    if may_act and reschedulable:
        actions.append(_action(f"/jobs/{jid}/reschedule", "Reschedule job", csrf, "reschedule"))
    summary = {
        "Status": job["status"],
        "Minor status": job["minor_status"],
        "Application status": job["application_status"],
        "Site": job["site"],
        "Owner": job["owner"],
        "Priority": job["priority"],
        "Reschedules": job["reschedules"],
    }
    timing = job.get("timing") or {}
    output = (
        el(
            "p",
            el("a", "Download the output sandbox", href=f"/jobs/{jid}/output", download=True),
            f" (sha256 {job['output_sandbox']})",
        )
        if job.get("output_sandbox")
        else el("p", "No output sandbox yet.")
    )
    return f"Job {jid}", join(
        [
            el("h1", f"Job {jid}: ", el("span", job.get("job_name") or "(no name)", id="job-name")),
            el("p", result, role="status", id="result") if result else None,
            el("div", actions, class_="actions") if actions else None,
            el(
                "dl",
                [(el("dt", k), el("dd", value(v), id=_key(k))) for k, v in summary.items()],
                el("dt", "Pilot"),
                el("dd", pilot_link(job.get("pilot"))),
                el("dt", "Submitted (UTC)"),
                el("dd", when(job["submitted"])),
                el("dt", "Updated (UTC)"),
                el("dd", when(job["updated"])),
                class_="summary",
            ),
            el("h2", "Output"),
            output,
            el("h2", "Timing"),
            table(
                "Time spent in each stage (seconds)",
                ["Stage", "Seconds"],
                [
                    [k, f"{v:.3f}" if isinstance(v, int | float) else str(v)]
                    for k, v in timing.items()
                ],
            )
            if timing
            else el("p", "No timing reported yet."),
            el("h2", "Parameters"),
            el("p", "The last heartbeat's figures, as the pilot's watchdog sent them."),
            value(job.get("heartbeat") or {}),
            el("h2", "Status history"),
            table(
                "Status history, oldest first",
                ["Time (UTC)", "Status", "Minor status", "Application status", "Source"],
                [
                    [
                        when(h["Timestamp"]),
                        h["Status"],
                        h["MinorStatus"] or "-",
                        h["ApplicationStatus"] or "-",
                        h["Source"],
                    ]
                    for h in history
                ],
                id="history",
            ),
            el("h2", "JDL"),
            el("pre", jdl_text, id="jdl"),
        ]
    )


def _key(label: str) -> str:
    return "job-" + label.lower().replace(" ", "-")


def _action(path: str, label: str, csrf: str, name: str) -> Safe:
    return el(
        "form",
        el("input", type="hidden", name="csrf", value=csrf),
        el("button", label, type="submit", id=name),
        method="post",
        action=path,
    )


# -- pilots -------------------------------------------------------------------------------


def _checks_summary(pilot: Mapping[str, Any]) -> str:
    checks = pilot.get("checks") or {}
    results = checks.get("results") or []
    failed = [str(r.get("name")) for r in results if r.get("status") == "FAILED"]
    fit = "fit" if checks.get("ok", True) else "NOT FIT"
    return f"{fit}; {len(results)} checks" + (f", failed: {', '.join(failed)}" if failed else "")


def pilots_page(
    pilots: list[dict[str, Any]], total: int, page: int, size: int, last: Mapping[str, Any]
) -> tuple[str, Safe]:
    rows = []
    for p in pilots:
        seen = last.get(p["stamp"])
        rows.append(
            [
                pilot_link(p["stamp"]),
                when(p["registered"]),
                p.get("site") or "-",
                p.get("ce") or "-",
                _checks_summary(p),
                value((p.get("checks") or {}).get("tags") or []),
                str(p.get("jobs", 0)),
                _last_match_text(seen),
            ]
        )
    pages = max(1, -(-total // size))
    nav = el(
        "nav",
        el("a", "Previous", href=href("/pilots", page=page - 1), rel="prev") if page > 1 else None,
        " ",
        el("span", f"Page {page} of {pages}"),
        " ",
        el("a", "Next", href=href("/pilots", page=page + 1), rel="next") if page < pages else None,
        aria_label="Pages",
        class_="pager",
    )
    return "Pilots", join(
        [
            el("h1", "Pilots"),
            el("p", f"{total} pilot(s) registered, newest first.", role="status"),
            el(
                "div",
                table(
                    "Pilots",
                    [
                        "Stamp",
                        "Registered (UTC)",
                        "Site",
                        "CE",
                        "Checks",
                        "Tags",
                        "Jobs",
                        "Last match",
                    ],
                    rows,
                    id="pilots",
                ),
                class_="scroll",
            ),
            nav,
        ]
    )


def _last_match_text(seen: Any) -> Safe:
    if seen is None:
        return Safe("none since the stub started")
    stamp = when(seen.time)
    if seen.job_id is None:
        return join([stamp, ": nothing matched"])
    return join([stamp, ": job ", job_link(seen.job_id)])


def pilot_page(
    pilot: dict[str, Any],
    jobs: list[dict[str, Any]],
    last: Any,
    near_misses: list[dict[str, Any]] | None,
    waiting: int,
) -> tuple[str, Safe]:
    stamp = pilot["stamp"]
    checks = pilot.get("checks") or {}
    results = checks.get("results") or []
    check_rows = [
        [
            el("span", r.get("name", "?"), class_="check-name"),
            el("span", r.get("status", "?"), class_="status", data_status=r.get("status")),
            "yes" if r.get("required") else "no",
            r.get("source") or "-",
            f"{r.get('duration', 0)} s",
            el("span", r.get("message") or "-", class_="message"),
            value(r.get("tags") or []),
            value(r.get("facts") or {}),
        ]
        for r in results
    ]
    about = {
        "Registered (UTC)": when(pilot["registered"]),
        "Version": value(pilot.get("version")),
        "Site": value(pilot.get("site")),
        "CE": value(pilot.get("ce")),
        "Identity": value(pilot.get("identity")),
        "Batch slot": value(pilot.get("batch") or {}),
        "Isolation": value(pilot.get("isolation") or {}),
        "Node fit": Safe("yes" if checks.get("ok", True) else "NO: a required check failed"),
    }
    log_link = (
        el("p", el("a", "The pilot's uploaded log (text)", href=f"/pilots/{quote(stamp)}/log"))
        if pilot.get("log_size")
        else el("p", "No log uploaded yet.")
    )
    return f"Pilot {stamp}", join(
        [
            el("h1", "Pilot ", el("span", stamp, id="stamp")),
            el("dl", [(el("dt", k), el("dd", v)) for k, v in about.items()], class_="summary"),
            log_link,
            el("h2", "Last match"),
            _last_match(last, near_misses, waiting),
            el("h2", "Resource description"),
            el("div", value(pilot.get("resources") or {}), id="resources"),
            el("h2", "Check report"),
            el("p", "Tags advertised: ", el("span", value(checks.get("tags") or []), id="tags")),
            el(
                "div",
                table(
                    "Every check the pilot ran, built-in and plugins",
                    ["Check", "Status", "Required", "Source", "Took", "Message", "Tags", "Facts"],
                    check_rows,
                    id="checks",
                ),
                class_="scroll",
            ),
            el("h2", "Jobs"),
            _pilot_jobs(jobs),
        ]
    )


def _last_match(last: Any, near_misses: list[dict[str, Any]] | None, waiting: int) -> Safe:
    if last is None:
        return el("p", "This pilot has asked for no job since the stub started.", id="last-match")
    if last.job_id is not None:
        return el(
            "p",
            "At ",
            when(last.time),
            " it was given job ",
            job_link(last.job_id),
            id="last-match",
        )
    intro = el("p", "At ", when(last.time), " nothing matched it.", id="last-match")
    if not waiting:
        return join([intro, el("p", "No job is waiting now.")])
    rows = [[job_link(m["job_id"]), "; ".join(m["reasons"])] for m in near_misses or []]
    return join(
        [
            intro,
            el(
                "p",
                f"{waiting} job(s) are waiting now; why the first of them (in matching order)"
                " do not fit what it last offered:",
            ),
            table("Nearest misses", ["Job", "Why it does not fit"], rows, id="near-misses")
            if rows
            else el("p", "All of them would fit its last offer now."),
        ]
    )


def _pilot_jobs(jobs: list[dict[str, Any]]) -> Safe:
    if not jobs:
        return el("p", "No job is recorded for this pilot.")
    rows = [
        [
            job_link(j["job_id"]),
            el("span", j["job_name"] or "-", class_="name"),
            j["status"],
            j["minor_status"] or "-",
            when(j["updated"]),
        ]
        for j in jobs
    ]
    return table(
        "Jobs this pilot holds or ran, newest first",
        ["ID", "Name", "Status", "Minor status", "Updated (UTC)"],
        rows,
        id="pilot-jobs",
    )


# -- frame and small pages ----------------------------------------------------------------


def login_page(csrf: str, next_path: str, error: str | None) -> tuple[str, Safe]:
    return "Sign in", join(
        [
            el("h1", "Sign in"),
            el("p", error, role="alert", id="error") if error else None,
            el(
                "p",
                "This stub accepts user tokens. Paste yours to open the monitor: this browser"
                " then gets a session cookie for 12 hours (a random id, not the token, and"
                " not readable by scripts).",
            ),
            el(
                "form",
                el("input", type="hidden", name="csrf", value=csrf),
                el("input", type="hidden", name="next", value=next_path),
                el(
                    "p",
                    el("label", "User token", for_="token"),
                    el(
                        "input",
                        type="password",
                        id="token",
                        name="token",
                        autocomplete="off",
                        required=True,
                    ),
                ),
                el("p", el("button", "Sign in", type="submit", id="sign-in")),
                method="post",
                action="/login",
            ),
        ]
    )


def error_page(status: int, message: str) -> tuple[str, Safe]:
    return f"Error {status}", join(
        [
            el("h1", f"Error {status}"),
            el("p", message, role="alert"),
            el("p", el("a", "Jobs", href="/")),
        ]
    )


def frame(
    title: str,
    main: Safe,
    *,
    section: str,
    who: str | None,
    csrf: str | None,
    live: str | None,
    version: str | None,
) -> bytes:
    nav = el(
        "nav",
        el("a", "Jobs", href="/", aria_current="page" if section == "jobs" else None),
        " ",
        el("a", "Pilots", href="/pilots", aria_current="page" if section == "pilots" else None),
        aria_label="Monitor",
    )
    account: list[object] = []
    if who:
        account.append(el("span", f"Signed in as {who}", class_="who"))
    if who == "user-token" and csrf:
        account.append(
            el(
                "form",
                el("input", type="hidden", name="csrf", value=csrf),
                el("button", "Sign out", type="submit"),
                method="post",
                action="/logout",
                class_="inline",
            )
        )
    head = [
        el("meta", charset="utf-8"),
        el("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("title", f"{title} - pilot-stub monitor"),
        el("link", rel="stylesheet", href="/static/monitor.css"),
    ]
    if live:
        head.append(el("script", src="/static/live.js", defer=True))
        head.append(el("noscript", el("meta", http_equiv="refresh", content="10")))
    body = el(
        "body",
        el("a", "Skip to content", href="#main", class_="skip"),
        el("header", el("span", "pilot-stub monitor", class_="brand"), " ", nav, " ", account),
        el("main", main, id="main", tabindex="-1"),
        data_live=live,
        data_version=version,
    )
    return ("<!doctype html>" + el("html", el("head", head), body, lang="en")).encode()


def live_answer(version: str) -> bytes:
    return json.dumps({"version": version}).encode()
