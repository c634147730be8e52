"""The labelling app in a real headless Chromium (Debian's, driven by Playwright): log in, label
pairs with the mouse and the keyboard, rank a list of four with a tie, see progress; hostile
model output is shown as text and runs nothing; the admin sees the counts; the export matches
what was clicked. Screenshots of each page go to $PREFOPT_SCREENSHOTS (or the test's folder)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from label_helpers import HOSTILE, Server, write_items
from prefopt.label.store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Debian's chromium is not installed (make test installs it with apt-get)",
    ),
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


def log_in(page, server, token: str) -> None:
    """Log in through the login page (on localhost: the session cookie is Secure)."""
    page.goto(f"{server.url.replace('127.0.0.1', 'localhost')}/login")
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_label_pairs_and_a_ranking_in_a_browser(browser, tmp_path, prefopt_cli):
    shots = Path(os.environ.get("PREFOPT_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "prompt": "Which snippet is safe to show?",
            "completions": [HOSTILE[0] + "\n" + HOSTILE[2], HOSTILE[1]],
        },
        {
            "prompt": "Write a function that adds two numbers.",
            "completions": [
                "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt returns the sum.",
                "def add(a, b): return a - b",
            ],
        },
        {"prompt": "Say hello.", "completions": ["Hello!", "Hi there."]},
        {
            "prompt": [{"role": "user", "content": "Name a prime number."}],
            "completions": [
                "2",
                "7",
                "9 (not prime, sorry)",
                "Primes are numbers with two divisors; 13 is one.",
            ],
        },
    ]
    items = write_items(tmp_path / "items.jsonl", rows)
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db)
    annotator, admin = store.add_user("ann"), store.add_user("boss", "admin")
    server = Server(items, db, "--redundancy", "2")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        violations = []  # what the Content-Security-Policy refused (a console error naming it)
        watch = lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        )
        page.on("console", watch)
        page.goto(f"{server.url.replace('127.0.0.1', 'localhost')}/label")
        page.screenshot(path=shots / "login.png")
        page.fill("#token", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("text=That token is not known.")
        page.fill("#token", annotator)
        page.click("button[type=submit]")
        page.wait_for_url("**/label")

        # 1. hostile output, labelled with the mouse: shown as text, nothing runs
        page.wait_for_selector("#pair .completion")
        assert "<script>window.__pwned = 1</script>" in page.inner_text("#pair")
        assert page.locator("#pair script, #pair img, #pair a").count() == 0
        page.click("#pair .completion >> nth=1")  # clicking around runs nothing either
        assert page.evaluate("window.__pwned") is None
        page.screenshot(path=shots / "pair.png")
        page.click("button[data-choice=left]")
        page.fill("#comment", "both look like markup")
        page.click("#submit")

        # 2. code, by keyboard: 2 (B better) then Enter
        page.wait_for_selector("#pair pre code")
        page.screenshot(path=shots / "pair-code.png")
        page.keyboard.press("2")
        assert "selected" in page.get_attribute("button[data-choice=right]", "class")
        page.keyboard.press("Enter")

        # 3. tie by keyboard
        page.wait_for_selector("text=Say hello.")
        page.keyboard.press("3")
        page.keyboard.press("Enter")

        # 4. rank four: click shown answers C, A in order, then tie B and D at rank 3
        page.wait_for_selector("#ranking .completion")
        card = lambda shown: page.locator(f'#ranking .completion[data-index="{shown}"]')
        card(2).locator("span.tag").click()
        card(0).locator("span.tag").click()
        card(1).locator("button[title='rank 3']").click()
        card(3).locator("button[title='rank 3']").click()
        page.screenshot(path=shots / "ranking.png")
        page.keyboard.press("Enter")
        page.wait_for_selector("#done:not([hidden])")
        assert "4 labelled by you" in page.inner_text("#progress")
        page.screenshot(path=shots / "done.png")

        # a second annotator, through the store, for agreement figures
        second = Store(db, redundancy=2)
        bob = second.user_for_token(second.add_user("bob"))
        for answer in (
            {"choice": "a"},
            {"choice": "a"},
            {"choice": "tie"},
            {"ranking": [1, 2, 3, 4]},
        ):
            second.submit(bob, second.next_assignment(bob)["item_id"], **answer)
        admin_page = browser.new_page(viewport={"width": 1280, "height": 860})
        admin_page.on("console", watch)
        log_in(admin_page, server, admin)
        admin_page.wait_for_url("**/admin")
        admin_page.wait_for_selector("#people td")
        assert admin_page.inner_text(".stats .stat >> nth=1").startswith("8")  # labels
        assert "ann" in admin_page.inner_text("#people") and "ann / bob" in admin_page.inner_text(
            "#cohen"
        )
        # disputed items with their prompt and answers, not raw JSON; the labels, filtered; the export
        admin_page.wait_for_selector("#disputed .disputed .answer")
        assert "ann:" in admin_page.inner_text("#disputed .votes >> nth=0")
        admin_page.wait_for_selector("#labels td")
        admin_page.select_option("#annotator", "bob")
        admin_page.click("#filters button[type=submit]")
        admin_page.wait_for_function(
            "() => [...document.querySelectorAll('#labels tr')].slice(1)"
            ".every((row) => row.children[1].innerText === 'bob')"
        )
        with admin_page.expect_download() as download:
            admin_page.click("#export")
        rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
        assert rows and {row["annotator"] for row in rows} == {"bob"}
        admin_page.screenshot(path=shots / "admin.png", full_page=True)
        assert violations == []  # the pages work with no inline script or style allowed
    finally:
        server.stop()

    labels = [lab for lab in Store(db).labels() if lab["annotator"] == "ann"]
    order = [lab["display_order"] for lab in labels]  # shown position → item completion
    expected = [
        [1 if order[0][0] == c else 2 for c in range(2)],  # left (A) better
        [1 if order[1][1] == c else 2 for c in range(2)],  # right (B) better
        [1, 1],  # tie
        [{2: 1, 0: 2, 1: 3, 3: 3}[order[3].index(c)] for c in range(4)],
    ]
    assert [lab["ranks"] for lab in labels] == expected
    assert [lab["choice"] for lab in labels][2] == "tie" and labels[0][
        "comment"
    ] == "both look like markup"
    out = tmp_path / "lists.jsonl"
    done = prefopt_cli("label", "export", "--db", db, "--format", "lists", "--out", out)
    assert done.returncode == 0, done.stderr
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    exported = [row for row in exported if row["annotator"] == "ann"]
    # the tie prefers nothing
    assert [row["ranks"] for row in exported] == [expected[0], expected[1], expected[3]]


def test_rank_by_dragging(browser, tmp_path):
    items = write_items(
        tmp_path / "items.jsonl", [{"prompt": "Order these.", "completions": ["w", "x", "y", "z"]}]
    )
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    token = Store(db).add_user("ann")
    server = Server(items, db)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        log_in(page, server, token)
        page.wait_for_selector("#ranking .completion")
        cards = page.locator("#ranking .completion")
        page.locator('#ranking .completion[data-index="3"]').drag_to(
            cards.nth(0), target_position={"x": 20, "y": 5}
        )
        page.wait_for_function("!document.querySelector('#submit').disabled")
        shown = [int(i) for i in cards.evaluate_all("cards => cards.map(c => c.dataset.index)")]
        assert shown[0] == 3 and sorted(shown) == [0, 1, 2, 3]
        page.click("#submit")
        page.wait_for_selector("#done:not([hidden])")
    finally:
        server.stop()
    label = Store(db).labels()[0]
    by_shown = {shown_index: rank for rank, shown_index in enumerate(shown, start=1)}
    assert label["ranks"] == [by_shown[label["display_order"].index(c)] for c in range(4)]


def test_long_and_strange_text_renders_fast_and_lists_past_z_get_labels(browser, tmp_path):
    """A megabyte without a space, a thousand-character line, a hundred code blocks: the page shows
    the first 4,000 characters of each and a button for the rest at once (the whole megabyte
    took Chromium 90 s to lay out); a list of 30 completions is tagged A … Z, AA … AD."""
    import time

    huge = "x" * 1_000_000
    blocks = "".join(f"step {i}\n```python\nprint({i})\n```\n" for i in range(100))
    rows = [
        {"prompt": "Long answers", "completions": [huge, ("word " * 200 + "\n") * 50]},
        {"prompt": "Code", "completions": [blocks, "short"]},
        {"prompt": "Thirty answers", "completions": [f"answer {i}" for i in range(30)]},
    ]
    items = write_items(tmp_path / "items.jsonl", rows)
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db)
    token = store.add_user("ann")
    server = Server(items, db)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        log_in(page, server, token)
        page.wait_for_url("**/label")
        page.wait_for_selector(".completion .text")
        # from the page's navigation to the first item laid out: fetched, rendered, layout forced
        seconds = [
            page.evaluate("() => { document.body.offsetHeight; return performance.now() / 1000; }")
        ]
        started = time.perf_counter()
        for n in range(2):  # the long pair, then the code blocks (items in file order)
            if n:  # from submitting the long pair to the code blocks laid out
                page.wait_for_selector(".completion pre")
                page.evaluate("() => document.body.offsetHeight")
                seconds.append(time.perf_counter() - started)
            prompt = page.inner_text(".prompt")
            if "Long answers" in prompt:
                assert page.locator("button.more").count() == 2
                assert "Show all (1,000,000 characters)" in page.inner_text("#pair")
                page.locator("button.more").nth(1).click()  # the 10,250-character answer, whole
                assert page.locator("button.more").count() == 1
            page.keyboard.press("3")  # a tie
            started = time.perf_counter()
            page.keyboard.press("Enter")
            page.wait_for_function(
                "(text) => !document.querySelector('.prompt').innerText.includes(text)",
                arg=prompt.splitlines()[-1],
            )
        page.wait_for_selector(".ranking .completion")
        tags = page.locator(".ranking .tag").all_inner_texts()
        assert tags[:3] == ["A", "B", "C"] and tags[25:] == ["Z", "AA", "AB", "AC", "AD"]
        print(
            f"render seconds (the long pair from navigation, the code blocks from submit): "
            f"{[round(s, 3) for s in seconds]}"
        )
        # a fraction of a second alone, 1.6 s seen beside the other test workers: the bound catches
        # the whole text laid out (90 s) without failing under load
        assert max(seconds) < 5.0, seconds
    finally:
        server.stop()


def test_guidelines_skip_and_undo_in_a_browser(browser, tmp_path):
    """The guidelines file is shown, its Markdown as text (a script in it runs nothing); Skip asks
    why and moves on; Undo takes the last label back, the item comes again and the new label is
    the one kept."""
    rules = tmp_path / "rules.md"
    rules.write_text(
        "# How to judge\n\n- prefer **correct** answers\n- then `short` ones\n\n<script>window.hacked = 1"
        "</script>\n"
    )
    rows = [{"prompt": f"Question {i}", "completions": [f"good {i}", f"bad {i}"]} for i in range(3)]
    items = write_items(tmp_path / "items.jsonl", rows)
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db)
    token = store.add_user("ann")
    server = Server(items, db, "--guidelines", str(rules))
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        violations = []
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        log_in(page, server, token)
        page.wait_for_selector("#guidelines:not([hidden]) h3")
        assert page.inner_text("#guidelines h3") == "How to judge"
        assert page.inner_text("#guidelines li strong") == "correct"
        assert page.inner_text("#guidelines li code") == "short"
        assert "<script>window.hacked = 1</script>" in page.inner_text("#guidelines")
        assert page.evaluate("() => window.hacked") is None
        page.wait_for_selector("text=Question 0")
        page.click("#skip")  # asks why first
        page.fill("#skip-reason", "the question is unclear")
        page.click("#skip")
        page.wait_for_selector("text=Question 1")
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Question 2")
        page.click("#undo")
        page.wait_for_selector("text=Question 1")  # back for another judgement
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Question 2")
        page.click("#guidelines-toggle")
        assert page.locator("#guidelines").is_hidden()
    finally:
        server.stop()
    labels = store.labels()
    assert [(label["prompt"], label["choice"]) for label in labels] == [("Question 1", "tie")]
    assert store.counts()["skipped"] == 1 and violations == []


def test_gold_items_come_mixed_in_and_the_admin_sees_agreement_with_them(browser, tmp_path):
    rows = [
        {"prompt": "Gold: 2 + 2?", "completions": ["4", "5"], "gold": "a"},
        {"prompt": "Regular question", "completions": ["yes", "no"]},
    ]
    items = write_items(tmp_path / "items.jsonl", rows)
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db)
    token, admin = store.add_user("ann"), store.add_user("boss", "admin")
    server = Server(items, db, "--gold-rate", "1.0")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        log_in(page, server, token)
        page.wait_for_selector("text=Gold: 2 + 2?")  # shown like any item: annotators cannot tell
        shown = page.locator("#pair .completion").all_inner_texts()
        # the right answer, whichever side
        page.keyboard.press("1" if shown[0].endswith("4") else "2")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Regular question")
        admin_page = browser.new_page(viewport={"width": 1280, "height": 860})
        log_in(admin_page, server, admin)
        admin_page.wait_for_selector("#people td")
        header = admin_page.locator("#people th").all_inner_texts()
        ann = next(
            row
            for row in admin_page.locator("#people tr").all_inner_texts()
            if row.startswith("ann")
        )
        cells = dict(zip(header, ann.split("\t"), strict=True))
        assert cells["gold labels"] == "1" and cells["agreement with gold"] == "1"
    finally:
        server.stop()


def test_thumbs_ratings_and_edits_in_a_browser(browser, tmp_path):
    """A person judges one answer three ways, by mouse and by keyboard; what they clicked is what
    the store keeps. The seconds from handing out to submission of each label are printed (and
    written to $PREFOPT_LABEL_TIMINGS): the app's own share of a label's time, for clicks made as
    fast as a script makes them."""
    shots = Path(os.environ.get("PREFOPT_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": "Give a one-line summary of photosynthesis.", "task": "thumbs",
         "completion": "Plants turn light, water and carbon dioxide into sugar and oxygen."},
        {"prompt": "Say hello in French.", "task": "thumbs", "completion": "Hola!"},
        {"prompt": "Explain why the sky is blue.", "task": "rating",
         "scale": {"1": "wrong", "3": "partly right", "5": "right and clear"},
         "completion": "Air scatters short (blue) wavelengths of sunlight more than long ones."},
        {"prompt": "Explain what a prime number is.", "task": "rating",
         "completion": "A number with exactly two divisors: 1 and itself."},
        {"prompt": "Correct the spelling: 'Teh cat sat on teh mat.'", "task": "edit",
         "completion": "Teh cat sat on the mat."},
    ]  # fmt: skip
    items = write_items(tmp_path / "items.jsonl", rows)
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    token = Store(db).add_user("ann")
    server = Server(items, db)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        log_in(page, server, token)
        # thumbs by mouse, with a reason; then by keyboard
        page.wait_for_selector("#thumbs:not([hidden])")
        page.click("button[data-verdict=good]")
        page.fill("#comment", "accurate and short")
        page.screenshot(path=shots / "label-thumbs.png")
        page.click("#submit")
        page.wait_for_selector("#prompt:has-text('French')")
        page.keyboard.press("2")  # bad
        page.keyboard.press("Enter")
        # ratings: the anchors shown; a point by mouse, then by keyboard (3rd point = 3)
        page.wait_for_selector("#rating:not([hidden]) button")
        assert "right and clear" in page.inner_text("#rating")
        page.click("#rating button[data-point='4']")
        page.screenshot(path=shots / "label-rating.png")
        page.click("#submit")
        page.wait_for_selector("#prompt:has-text('prime')")
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        # the edit: the answer in a text box, corrected, Ctrl+Enter
        page.wait_for_selector("#edited:not([hidden])")
        assert page.input_value("#edited") == "Teh cat sat on the mat."
        page.fill("#edited", "The cat sat on the mat.")
        page.screenshot(path=shots / "label-edit.png")
        page.focus("#edited")
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#done:not([hidden])")
    finally:
        server.stop()
    labels = Store(db).labels()
    assert [(label["task"], label["value"]) for label in labels] == [
        ("thumbs", {"label": True}), ("thumbs", {"label": False}), ("rating", {"rating": 4}),
        ("rating", {"rating": 3}),
        ("edit", {"edited": "The cat sat on the mat.", "changed": True}),
    ]  # fmt: skip
    assert labels[0]["comment"] == "accurate and short"
    seconds = {task: [label["seconds"] for label in labels if label["task"] == task]
               for task in ("thumbs", "rating", "edit")}  # fmt: skip
    print("seconds per label (handed out to submitted):", seconds)
    if os.environ.get("PREFOPT_LABEL_TIMINGS"):
        Path(os.environ["PREFOPT_LABEL_TIMINGS"]).write_text(json.dumps(seconds))
