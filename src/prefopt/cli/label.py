"""`prefopt label`: the labelling web app, its people and its export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, fail, run_library

label_app = typer.Typer(
    help="The labelling web app: people compare and rank outputs; labels feed training.",
    no_args_is_help=True,
)
DbOption = Annotated[
    str,
    typer.Option(
        "--db", help="Database URL (sqlite:///…, postgresql+psycopg://…) or a SQLite file path."
    ),
]


CreateOption = Annotated[
    bool,
    typer.Option(
        "--create",
        help="Make the SQLite database if it does not exist (it is never made without this).",
    ),
]


def _store(db: str, create: bool = False, **settings):
    """The store at `db`; a SQLite file that does not exist is an error unless `create`."""
    from prefopt.label.store import Store

    url = db if "://" in db else f"sqlite:///{db}"
    existed = Store.exists(url)
    store = Store(url, create=create, **settings)
    if not existed:
        console().print(f"created the label database {store.path or url}", highlight=False)
    return store


@label_app.command("serve")
def label_serve(
    items: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="Prompts with K ≥ 2 completions to rank, or one `completion` to judge, in "
            "any format `prefopt train` reads (scores not needed).",
        ),
    ] = None,
    db: DbOption = "labels.db",
    host: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0 for a team; put HTTPS in front).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    redundancy: Annotated[
        int, typer.Option(min=1, help="Labels wanted per item, from different people.")
    ] = 1,
    assignment_minutes: Annotated[
        float,
        typer.Option(min=0.1, help="An item handed out is reserved for its annotator this long."),
    ] = 30.0,
    create: CreateOption = False,
    gold_rate: Annotated[
        float,
        typer.Option(
            "--gold-rate",
            min=0.0,
            max=1.0,
            help="The share of each person's items that are gold items (rows with "
            "a `gold` answer), while any are left.",
        ),
    ] = 0.1,
    guidelines: Annotated[
        Path | None,
        typer.Option(
            "--guidelines", help="A Markdown file of labelling guidelines, shown to annotators."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="What to ask of the items that do not say (their `task` field): rank, thumbs, "
            "rating or edit (default: rank for several answers, thumbs for one).",
        ),
    ] = None,
    scale: Annotated[
        str | None,
        typer.Option(
            "--scale",
            help='Rating items\' scale as JSON, each point with its anchor: \'{"1": "useless", '
            '"3": "fine", "5": "perfect"}\' (default 1 to 5; an item\'s `scale` wins).',
        ),
    ] = None,
    secure_cookies: Annotated[
        bool,
        typer.Option(
            "--secure-cookies",
            help="Mark the session cookie Secure on every response: use it behind an HTTPS proxy "
            "(without it, only on https requests and on loopback).",
        ),
    ] = False,
) -> None:
    """Serve the labelling app: prefopt label serve --items ITEMS --db URL."""

    def serve() -> None:
        import uvicorn

        from prefopt.data import load_records
        from prefopt.label.app import create_app

        text = None
        if guidelines is not None:
            text = guidelines.read_text(encoding="utf-8")  # a missing file is one clear line
        store = _store(
            db,
            create,
            redundancy=redundancy,
            assignment_minutes=assignment_minutes,
            gold_rate=gold_rate,
        )
        out = console()
        if items is not None:
            loaded = load_records(items, require_scores=False)
            added = store.add_items(loaded.records, task=task, scale=_scale(scale))
            out.print(f"{loaded.summary()}; {added} new items added", highlight=False)
        out.print(
            f"labelling app at http://{host}:{port}/login (database {store.engine.url!r})",
            highlight=False,
        )
        app = create_app(store, guidelines=text, secure_cookies=secure_cookies)
        uvicorn.run(app, host=host, port=port, log_level="warning")

    run_library(serve)


def _scale(text: str | None) -> dict | None:
    import json

    from prefopt.errors import LabelError

    if text is None:
        return None
    try:
        scale = json.loads(text)
    except json.JSONDecodeError as error:
        raise LabelError(f"--scale is not JSON: {error.msg}", field="scale") from None
    if not isinstance(scale, dict):
        raise LabelError('--scale must be a JSON object {"1": "anchor", …}', field="scale")
    return scale


def _add_person(name: str, db: str, role: str, create: bool) -> None:
    def add() -> None:
        token = _store(db, create).add_user(name, role)
        out = console()
        out.print(
            f"{role} {name!r} added. Their token (shown once, only its hash is stored):",
            highlight=False,
        )
        out.print(token, highlight=False, markup=False)

    run_library(add)


@label_app.command("add-annotator")
def label_add_annotator(
    name: Annotated[str, typer.Argument(help="A unique name.")],
    db: DbOption = "labels.db",
    create: CreateOption = False,
) -> None:
    """Add an annotator and print their token once."""
    _add_person(name, db, "annotator", create)


@label_app.command("add-admin")
def label_add_admin(
    name: Annotated[str, typer.Argument(help="A unique name.")],
    db: DbOption = "labels.db",
    create: CreateOption = False,
) -> None:
    """Add an admin (sees counts, agreement and every label) and print their token once."""
    _add_person(name, db, "admin", create)


@label_app.command("revoke")
def label_revoke(
    name: Annotated[str, typer.Argument(help="The person's name.")], db: DbOption = "labels.db"
) -> None:
    """End every session of a person and disable their token (rotate gives them a new one)."""
    run_library(
        lambda: (
            _store(db).revoke(name, new_token=False)
            or console().print(
                f"{name!r}: every session ended and the token disabled", highlight=False
            )
        )
    )


@label_app.command("rotate")
def label_rotate(
    name: Annotated[str, typer.Argument(help="The person's name.")], db: DbOption = "labels.db"
) -> None:
    """End every session of a person and print a new token for them, once (the old one stops working)."""

    def rotate() -> None:
        token = _store(db).revoke(name, new_token=True)
        out = console()
        out.print(
            f"{name!r}: every session ended; their new token (shown once, only its hash is stored):",
            highlight=False,
        )
        out.print(token, highlight=False, markup=False)

    run_library(rotate)


@label_app.command("export")
def label_export(
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    db: DbOption = "labels.db",
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="lists: every label's full order with ties; pairs: the "
            "majority preference per pair of completions; label-studio: the items (not the "
            "labels) as Label Studio tasks (JSON), to label them there.",
        ),
    ] = "lists",
) -> None:
    """Write the labels as training data that `prefopt train` reads as is."""
    from prefopt.label.export import FORMATS

    if fmt not in (*FORMATS, "label-studio"):
        fail(f"--format must be one of {', '.join(FORMATS)}, label-studio; got {fmt!r}")

    def export() -> None:
        from prefopt.files import write_atomic, write_jsonl
        from prefopt.label.export import export_rows

        if fmt == "label-studio":
            from prefopt.data.tools import label_studio_tasks

            tasks = label_studio_tasks(_store(db).items())
            write_atomic(out, json.dumps(tasks, ensure_ascii=False, indent=1))
            console().print(f"wrote {len(tasks)} Label Studio tasks to {out}", highlight=False)
            return

        rows, left_out = export_rows(_store(db).labels(), fmt)
        write_jsonl(out, rows)
        skipped = "; ".join(f"{count} {reason} left out" for reason, count in left_out.items())
        console().print(
            f"wrote {len(rows)} {fmt} rows to {out}" + (f" ({skipped})" if skipped else ""),
            highlight=False,
        )

    run_library(export)
