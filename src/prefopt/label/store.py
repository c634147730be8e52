"""The labelling store: items to judge, people, assignments and labels, in any database
SQLAlchemy speaks (a SQLite file by default, PostgreSQL by URL). The schema is created and
upgraded by Alembic (migrations/). Every write is one short transaction; a label that got its
answer is committed."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import random
import secrets

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.exc import IntegrityError

from prefopt.errors import LabelError
from prefopt.label import agreement
from prefopt.label.database import file_identity, make_engine, serialize, sqlite_file, upgrade
from prefopt.label.names import normalized_name, skeleton
from prefopt.label.tasks import SINGLE, gold_of, ranks_of, scale_of, single_value, task_of

ROLES = ("annotator", "admin")
MAX_COMMENT = 2000
MAX_ID = 2**31 - 1  # the largest id PostgreSQL's integer column holds
SESSION_HOURS = 12.0  # a login lasts a working day
UNDO_SECONDS = 120  # how long a label can be taken back
MAX_REASON = 500
MAX_COMPLETIONS = 256  # completions of one item a ranking may rank
_CHUNK = 500  # ids per statement: well under SQLite's and PostgreSQL's limits on bound parameters


class Base(orm.DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Item(Base):
    __tablename__ = "items"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    # where it was first read ("file, row N")
    source: orm.Mapped[str] = orm.mapped_column(sa.String(500))
    # its identity: content_key
    content: orm.Mapped[str] = orm.mapped_column(sa.String(64), index=True)
    # JSON: the known answer's ranks, for gold items
    gold: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    prompt: orm.Mapped[str] = orm.mapped_column(sa.Text)  # JSON: a string or chat messages
    completions: orm.Mapped[str] = orm.mapped_column(sa.Text)  # JSON list
    k: orm.Mapped[int]
    task: orm.Mapped[str] = orm.mapped_column(sa.String(10), default="rank")  # label/tasks.py
    scale: orm.Mapped[str | None] = orm.mapped_column(sa.Text)  # JSON {point: anchor}, ratings
    priority: orm.Mapped[float] = orm.mapped_column(default=0.0, index=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=_now)


class User(Base):
    __tablename__ = "users"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)
    role: orm.Mapped[str] = orm.mapped_column(sa.String(20))
    token_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64), unique=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=_now)


class Session(Base):
    __tablename__ = "sessions"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    user_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("users.id"), index=True)
    id_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64), unique=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=_now)
    expires_at: orm.Mapped[dt.datetime]


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (sa.UniqueConstraint("item_id", "user_id"),)
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    item_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("items.id"), index=True)
    user_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("users.id"), index=True)
    display_order: orm.Mapped[str] = orm.mapped_column(sa.Text)  # JSON: completion indices as shown
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=_now)
    expires_at: orm.Mapped[dt.datetime]
    done: orm.Mapped[bool] = orm.mapped_column(default=False)
    # the reason, when passed on
    skipped: orm.Mapped[str | None] = orm.mapped_column(sa.String(500))
    # gold items: the person's first answer, JSON {"choice", "ranks"}, kept through an undo
    first_answer: orm.Mapped[str | None] = orm.mapped_column(sa.Text)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (sa.UniqueConstraint("item_id", "user_id"),)
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    item_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("items.id"), index=True)
    user_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("users.id"), index=True)
    choice: orm.Mapped[str | None] = orm.mapped_column(sa.String(10))  # pairs: a, b, tie, both_bad
    # JSON: rank of each completion, 1 = best, ties equal
    ranks: orm.Mapped[str] = orm.mapped_column(sa.Text)
    display_order: orm.Mapped[str] = orm.mapped_column(sa.Text)
    comment: orm.Mapped[str] = orm.mapped_column(sa.Text, default="")
    # one-answer tasks: JSON {"label"} | {"rating"} | {"edited", "changed"}
    value: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    seconds: orm.Mapped[float | None]  # from handing out to submission
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=_now)


def _next_gold(s: orm.Session, user: User, mine) -> int | None:
    """The next gold item this person has not had, in an order of their own (seeded by who they
    are): gold items handed out in one order to everyone would be known by their place."""
    left = set(s.scalars(sa.select(Item.id).where(Item.gold.is_not(None), ~Item.id.in_(mine))))
    if not left:
        return None
    golds = sorted(s.scalars(sa.select(Item.id).where(Item.gold.is_not(None))))
    random.Random(f"gold order of {user.id}").shuffle(golds)
    return next(item_id for item_id in golds if item_id in left)


def content_key(prompt, completions, task: str = "rank") -> str:
    """An item's identity: a hash of its prompt and completions (and of its task, for the tasks on
    one answer: a verdict and a rating of one answer are two questions)."""
    identity = [prompt, list(completions)] + ([task] if task in SINGLE else [])
    text = json.dumps(identity, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """All reads and writes of the labelling app. `assignment_minutes` is how long a handed-out
    item stays reserved; `redundancy` is how many different people label each item."""

    def __init__(
        self,
        url: str,
        *,
        assignment_minutes: float = 30.0,
        redundancy: int = 1,
        migrate: bool = True,
        create: bool = True,
        gold_rate: float = 0.0,
    ):
        self.url = url
        self.assignment_minutes, self.redundancy = assignment_minutes, redundancy
        # the share of a person's items that are gold, while gold items are left
        self.gold_rate = gold_rate
        self.path = sqlite_file(url)
        if self.path is not None and not self.path.exists() and not create:
            raise LabelError(
                f"{self.path}: no such database; add --create to make one there",
                field="db",
                status=404,
            )
        self.engine = make_engine(url)
        if migrate:
            upgrade(self.engine)
        # writes: `with self.session.begin()`
        self.session = orm.sessionmaker(self.engine, expire_on_commit=False)
        # reads take no write lock: on SQLite a deferred transaction reads the last commit while a
        # writer holds its lock (WAL); PostgreSQL's reads never wait on writers
        self.read_engine = make_engine(url, writes=False)
        self.reading = orm.sessionmaker(self.read_engine, expire_on_commit=False)
        # the SQLite file written to; a write checks it is still there
        self._file = file_identity(self.path)

    @contextlib.contextmanager
    def _writing(self):
        """A write transaction that never acknowledges what it cannot keep: the SQLite file must
        still be the one the store opened (not deleted or replaced), and a database that became
        read-only is said to be so; both refuse the write with 503."""
        if self._file is not None and file_identity(self.path) != self._file:
            raise LabelError(
                f"the database file {self.path} is gone (deleted or replaced while serving); nothing "
                "can be saved: restart the server on the database",
                status=503,
            )
        try:
            with self.session.begin() as s:
                yield s
        except sa.exc.OperationalError as error:
            if "readonly" in str(error) or "read-only" in str(error):
                raise LabelError(
                    f"the database {self.path or self.url} is read-only; nothing can be saved",
                    status=503,
                ) from None
            raise

    @staticmethod
    def exists(url: str) -> bool:
        """Whether the database is there already (a server's database, PostgreSQL's, always is)."""
        path = sqlite_file(url)
        return path is None or path.exists()

    def close(self) -> None:
        """Close the store's connections (both engines)."""
        self.engine.dispose()
        self.read_engine.dispose()

    # people -------------------------------------------------------------------------------
    def add_user(self, name: str, role: str = "annotator") -> str:
        """Create a person and return their token (shown once; only its hash is kept). The name
        is normalized (Unicode NFKC, outer spaces dropped), may hold no control or invisible
        character, and is unique whatever its case and look: "Ann" and "ann" are one person, and
        "Аnn" (a Cyrillic А) is refused as a look-alike."""
        name = normalized_name(name)
        if role not in ROLES:
            raise LabelError(f"role must be one of {', '.join(ROLES)}", field="role")
        token = secrets.token_urlsafe(24)
        with self._writing() as s:
            names = list(s.scalars(sa.select(User.name)))
            taken = next((other for other in names if other.casefold() == name.casefold()), None)
            if taken is not None:
                raise LabelError(
                    f"a person named {taken!r} already exists", field="name", status=409
                )
            look = skeleton(name)
            alike = next((other for other in names if skeleton(other) == look), None)
            if alike is not None:
                raise LabelError(
                    f"{name!r} looks like {alike!r}, who already exists: choose a name that looks "
                    "different",
                    field="name",
                    status=409,
                )
            s.add(User(name=name, role=role, token_hash=hash_token(token)))
        return token

    def user_for_token(self, token: str | None) -> User | None:
        if not token:
            return None
        with self.reading() as s:
            return s.scalar(sa.select(User).where(User.token_hash == hash_token(token)))

    def start_session(self, user: User, hours: float = SESSION_HOURS) -> str:
        """A new session for a person who logged in: its id (for the cookie), stored hashed."""
        session_id = secrets.token_urlsafe(32)
        now = _now()
        with self._writing() as s:
            s.add(
                Session(
                    user_id=user.id,
                    id_hash=hash_token(session_id),
                    created_at=now,
                    expires_at=now + dt.timedelta(hours=hours),
                )
            )
        return session_id

    def user_for_session(self, session_id: str | None) -> User | None:
        """The person of a session that has neither ended nor expired."""
        if not session_id:
            return None
        with self.reading() as s:
            return s.scalar(
                sa.select(User)
                .join(Session, Session.user_id == User.id)
                .where(Session.id_hash == hash_token(session_id), Session.expires_at > _now())
            )

    def end_session(self, session_id: str) -> None:
        with self._writing() as s:
            s.execute(sa.delete(Session).where(Session.id_hash == hash_token(session_id)))

    def revoke(self, name: str, *, new_token: bool) -> str | None:
        """End every session of a person and make their token unusable; with `new_token`, issue
        them a new one (returned, shown once)."""
        token = secrets.token_urlsafe(24) if new_token else None
        with self._writing() as s:
            wanted = normalized_name(name).casefold()
            user = next(
                (u for u in s.scalars(sa.select(User)) if u.name.casefold() == wanted), None
            )
            if user is None:
                raise LabelError(f"no person named {name!r}", field="name", status=404)
            s.execute(sa.delete(Session).where(Session.user_id == user.id))
            # a revoked token is replaced by the hash of a random one nobody holds
            user.token_hash = hash_token(token or secrets.token_urlsafe(32))
        return token

    # items --------------------------------------------------------------------------------
    def add_items(self, records, task: str | None = None, scale: dict | None = None) -> int:
        """Add PreferenceRecords (or anything with prompt, completions, source) and return how
        many were new. An item is its content: a record with the prompt and completions of a
        stored item adds nothing (the same file served by another path, or asked about again),
        and a changed row is a new item, the old one and its labels kept. `task` and `scale` are
        the file's, for rows that do not name their own (label/tasks.py)."""
        # checked before anything is stored
        tasks = [task_of(record, task) for record in records]
        keys = [
            content_key(r.prompt, r.completions, t) for r, t in zip(records, tasks, strict=True)
        ]
        scales = [
            scale_of(r, scale) if t == "rating" else None
            for r, t in zip(records, tasks, strict=True)
        ]
        golds = [gold_of(r, t, sc) for r, t, sc in zip(records, tasks, scales, strict=True)]
        with self._writing() as s:
            known = self._known(s, keys)
            rows = []
            for record, key, gold, task_, scale_ in zip(records, keys, golds, tasks, scales,
                                                        strict=True):  # fmt: skip
                if key not in known:
                    known.add(key)
                    rows.append(
                        Item(
                            source=record.source[:500],
                            content=key,
                            prompt=json.dumps(record.prompt),
                            k=len(record.completions),
                            completions=json.dumps(list(record.completions)),
                            gold=None if gold is None else json.dumps(gold),
                            task=task_,
                            scale=None if scale_ is None else json.dumps(scale_),
                        )
                    )
            s.add_all(rows)
        return len(rows)

    @staticmethod
    def _known(s, keys: list[str]) -> set[str]:
        found = set()
        for start in range(0, len(keys), _CHUNK):  # a bounded IN list
            found |= set(
                s.scalars(
                    sa.select(Item.content).where(Item.content.in_(keys[start : start + _CHUNK]))
                )
            )
        return found

    def item_ids(self, keys: list[str]) -> dict[str, int]:
        """The ids of the stored items with these content keys (the first stored, if ever two)."""
        found: dict[str, int] = {}
        with self.reading() as s:
            for start in range(0, len(keys), _CHUNK):
                query = (
                    sa.select(Item.content, Item.id)
                    .where(Item.content.in_(keys[start : start + _CHUNK]))
                    .order_by(Item.id.desc())
                )
                found |= dict(s.execute(query).all())
        return found

    def judgements(self, item_ids: list[int]) -> dict[int, list[dict]]:
        """Every label of each of these items, oldest first: its ranks (1 = best, ties equal), for
        pairs the choice ("both_bad" is its own judgement, though its ranks are a tie's), for one
        answer its value (label/tasks.py)."""
        found: dict[int, list[dict]] = {item_id: [] for item_id in item_ids}
        with self.reading() as s:
            for start in range(0, len(item_ids), _CHUNK):
                chunk = item_ids[start : start + _CHUNK]
                query = (
                    sa.select(Label.item_id, Label.ranks, Label.choice, Label.value)
                    .where(Label.item_id.in_(chunk))
                    .order_by(Label.id)
                )
                for item_id, ranks, choice, value in s.execute(query):
                    found[item_id].append({"ranks": json.loads(ranks), "choice": choice,
                                           "value": None if value is None else json.loads(value)})  # fmt: skip
        return found

    def set_priorities(self, priorities: dict[int, float]) -> None:
        """Items with a higher priority are handed out first (the active loop sets these). All or
        nothing: an unknown id changes no priority. Ids are checked and written in chunks, so any
        number fits the database's limit on bound parameters."""
        ids = list(priorities)
        with self._writing() as s:
            known = set()
            for start in range(0, len(ids), _CHUNK):
                known |= set(
                    s.scalars(sa.select(Item.id).where(Item.id.in_(ids[start : start + _CHUNK])))
                )
            missing = sorted(set(ids) - known)
            if missing:
                raise LabelError(f"unknown item ids: {missing[:10]}", field="item_id", status=404)
            rows = [
                {"id": item_id, "priority": float(priority)}
                for item_id, priority in priorities.items()
            ]
            for start in range(0, len(rows), _CHUNK):
                # by primary key, one statement a chunk
                s.execute(sa.update(Item), rows[start : start + _CHUNK])

    # assignment ---------------------------------------------------------------------------
    def next_assignment(self, user: User, rng: secrets.SystemRandom | None = None) -> dict | None:
        """The item this person should judge next: one they hold already, else the highest
        priority item they have not seen that still needs labels and that fewer than
        `redundancy` others hold right now. None when nothing is left for them."""
        rng = rng or secrets.SystemRandom()
        now = _now()
        with self._writing() as s:
            serialize(s)
            held = s.scalar(
                sa.select(Assignment)
                .where(Assignment.user_id == user.id, ~Assignment.done, Assignment.expires_at > now)
                .limit(1)
            )
            if held is None:
                labels = (
                    sa.select(Label.item_id, sa.func.count().label("n"))
                    .group_by(Label.item_id)
                    .subquery()
                )
                holders = (
                    sa.select(Assignment.item_id, sa.func.count().label("n"))
                    .where(~Assignment.done, Assignment.expires_at > now)
                    .group_by(Assignment.item_id)
                    .subquery()
                )
                mine = sa.select(Assignment.item_id).where(Assignment.user_id == user.id)
                item_id = None
                if self.gold_rate and rng.random() < self.gold_rate:
                    item_id = _next_gold(s, user, mine)
                if item_id is None:
                    item_id = s.scalar(
                        sa.select(Item.id)
                        .outerjoin(labels, labels.c.item_id == Item.id)
                        .outerjoin(holders, holders.c.item_id == Item.id)
                        .where(
                            ~Item.id.in_(mine),
                            Item.gold.is_(None),
                            sa.func.coalesce(labels.c.n, 0) + sa.func.coalesce(holders.c.n, 0)
                            < self.redundancy,
                        )
                        .order_by(Item.priority.desc(), Item.id)
                        .limit(1)
                    )
                if item_id is None:
                    return None
                k = s.get(Item, item_id).k
                order = list(range(k))
                rng.shuffle(order)
                held = Assignment(
                    item_id=item_id,
                    user_id=user.id,
                    display_order=json.dumps(order),
                    created_at=now,
                    expires_at=now + dt.timedelta(minutes=self.assignment_minutes),
                )
                s.add(held)
                s.flush()
            item = s.get(Item, held.item_id)
            order = json.loads(held.display_order)
            completions = json.loads(item.completions)
            kind = item.task if item.task in SINGLE else "pair" if item.k == 2 else "ranking"
            return {
                "assignment_id": held.id,
                "item_id": item.id,
                "kind": kind,
                **({"scale": json.loads(item.scale)} if item.scale else {}),
                "prompt": json.loads(item.prompt),
                "completions": [completions[i] for i in order],
                "display_order": order,
                "expires_at": held.expires_at.isoformat() + "Z",
            }

    def skip(self, user: User, item_id: int, reason: str) -> None:
        """Pass on an item handed to you, saying why; it is never handed to you again (others
        still get it)."""
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON:
            raise LabelError(f"give a reason of 1 to {MAX_REASON} characters", field="reason")
        with self._writing() as s:
            held = s.scalar(
                sa.select(Assignment).where(
                    Assignment.item_id == item_id, Assignment.user_id == user.id
                )
            )
            if held is None or held.done:
                raise LabelError(
                    f"item {item_id} is not waiting for you (ask /api/next)",
                    field="item_id",
                    status=409,
                )
            held.done, held.skipped = True, reason

    def undo(self, user: User, label_id: int) -> int:
        """Take back your own label within UNDO_SECONDS of giving it: the label is deleted and its
        item handed back to you (the next /api/next). Returns the item's id."""
        with self._writing() as s:
            label = s.get(Label, label_id)
            if label is None or label.user_id != user.id:
                raise LabelError(f"you have no label {label_id}", field="label_id", status=404)
            age = (_now() - label.created_at).total_seconds()
            if age > UNDO_SECONDS:
                raise LabelError(
                    f"label {label_id} was given {age:.0f} s ago; it can be undone for "
                    f"{UNDO_SECONDS} s",
                    field="label_id",
                    status=409,
                )
            held = s.scalar(
                sa.select(Assignment).where(
                    Assignment.item_id == label.item_id, Assignment.user_id == user.id
                )
            )
            held.done = False
            held.expires_at = _now() + dt.timedelta(minutes=self.assignment_minutes)
            s.delete(label)
            return label.item_id

    # labels -------------------------------------------------------------------------------
    def submit(
        self,
        user: User,
        item_id: int,
        *,
        choice: str | None = None,
        ranking: list[int] | None = None,
        comment: str = "",
        verdict: str | None = None,
        rating: int | None = None,
        edited: str | None = None,
    ) -> int:
        """Store one judgement. Pairs give `choice` (a, b, tie, both_bad about completions 0
        and 1 of the item); lists give `ranking`, the rank of each completion in item order
        (1 = best, equal ranks = tie); one answer its task's `verdict` (good, bad), `rating` or
        `edited` answer. Returns the label id; nothing is written on an error."""
        if len(comment) > MAX_COMMENT:
            raise LabelError(
                f"comment is {len(comment)} characters; at most {MAX_COMMENT}", field="comment"
            )
        with self._writing() as s:
            item = s.get(Item, item_id)
            if item is None:
                raise LabelError(f"no item with id {item_id}", field="item_id", status=404)
            held = s.scalar(
                sa.select(Assignment).where(
                    Assignment.item_id == item_id, Assignment.user_id == user.id
                )
            )
            if held is None:
                raise LabelError(
                    f"item {item_id} was not handed to you (ask /api/next)",
                    field="item_id",
                    status=409,
                )
            if held.skipped is not None:
                raise LabelError(
                    f"you passed on item {item_id}; it cannot be labelled now",
                    field="item_id",
                    status=409,
                )
            value = None
            if item.task in SINGLE:
                if choice is not None or ranking is not None:
                    raise LabelError(f"a {item.task} item takes no choice or ranking",
                                     field="choice" if choice is not None else "ranking")  # fmt: skip
                answer = json.loads(item.completions)[0]
                scale = json.loads(item.scale) if item.scale else None
                value = single_value(item.task, scale, answer, verdict=verdict, rating=rating,
                                     edited=edited)  # fmt: skip
                ranks = [1]
            elif (verdict, rating, edited) != (None, None, None):
                raise LabelError("a ranking item takes a choice or a ranking", field="choice")
            else:
                ranks = ranks_of(item.k, choice, ranking)
            if s.scalar(
                sa.select(Label.id).where(Label.item_id == item_id, Label.user_id == user.id)
            ):
                raise LabelError(
                    f"you already labelled item {item_id}", field="item_id", status=409
                )
            now = _now()
            label = Label(
                item_id=item_id,
                user_id=user.id,
                choice=choice if item.k == 2 else None,
                ranks=json.dumps(ranks),
                value=None if value is None else json.dumps(value),
                display_order=held.display_order,
                comment=comment,
                seconds=(now - held.created_at).total_seconds(),
                created_at=now,
            )
            s.add(label)
            held.done = True
            if item.gold is not None and held.first_answer is None:
                held.first_answer = json.dumps({"choice": label.choice, "ranks": ranks,
                                                "value": value})  # fmt: skip
            try:
                s.flush()
            except IntegrityError:  # the same label submitted twice at once: the other one won
                raise LabelError(
                    f"you already labelled item {item_id}", field="item_id", status=409
                ) from None
            return label.id

    def labels(
        self,
        annotator: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[dict]:
        """Every label (or one person's, or those given from `since` to before `until`), oldest
        first, with the item's prompt and completions."""
        query = (
            sa.select(Label, User.name, Item)
            .join(User, User.id == Label.user_id)
            .join(Item, Item.id == Label.item_id)
            .order_by(Label.id)
        )
        if annotator is not None:
            query = query.where(User.name == annotator)
        if since is not None:
            query = query.where(Label.created_at >= since)
        if until is not None:
            query = query.where(Label.created_at < until)
        with self.reading() as s:
            return [
                {
                    "id": label.id,
                    "item_id": label.item_id,
                    "annotator": name,
                    "choice": label.choice,
                    "ranks": json.loads(label.ranks),
                    "display_order": json.loads(label.display_order),
                    "comment": label.comment,
                    "task": item.task,
                    "value": None if label.value is None else json.loads(label.value),
                    "seconds": label.seconds,
                    "created_at": label.created_at.isoformat() + "Z",
                    "prompt": json.loads(item.prompt),
                    "completions": json.loads(item.completions),
                    "source": item.source,
                    "gold": None if item.gold is None else json.loads(item.gold),
                }
                for label, name, item in s.execute(query)
            ]

    def judged(self) -> list[dict]:
        """Every label as the agreement statistics read it: item, person, choice, ranks and the
        item's gold ranks (None for a regular item), without the texts, so statistics stay fast
        with many labels. On a gold item a person's first answer counts: undoing it and
        answering again changes nothing of their agreement with gold."""
        query = (
            sa.select(
                Label.item_id,
                User.name,
                Label.choice,
                Label.ranks,
                Item.gold,
                Assignment.first_answer,
                Item.task,
                Label.value,
            )
            .join(User, User.id == Label.user_id)
            .join(Item, Item.id == Label.item_id)
            .outerjoin(
                Assignment,
                (Assignment.item_id == Label.item_id) & (Assignment.user_id == Label.user_id),
            )
            .order_by(Label.id)
        )
        judged = []
        with self.reading() as s:
            for item_id, name, choice, ranks, gold, first, task, value in s.execute(query):
                answer = {"choice": choice, "ranks": json.loads(ranks),
                          "value": None if value is None else json.loads(value)}  # fmt: skip
                if gold is not None and first is not None:
                    answer = {"value": None, **json.loads(first)}
                gold = None if gold is None else json.loads(gold)
                judged.append({"item_id": item_id, "annotator": name, "task": task, **answer,
                               "gold": gold})  # fmt: skip
        return judged

    def items(self) -> list[dict]:
        """Every item: its id, task, prompt and completions, in the order they were added."""
        query = sa.select(Item.id, Item.task, Item.prompt, Item.completions).order_by(Item.id)
        with self.reading() as s:
            return [{"item_id": item_id, "task": task, "prompt": json.loads(prompt),
                     "completions": json.loads(completions)}
                    for item_id, task, prompt, completions in s.execute(query)]  # fmt: skip

    def item_texts(self, item_ids: list[int]) -> dict[int, dict]:
        """The prompt and completions of these items."""
        found = {}
        with self.reading() as s:
            for start in range(0, len(item_ids), _CHUNK):
                query = sa.select(Item.id, Item.prompt, Item.completions).where(
                    Item.id.in_(item_ids[start : start + _CHUNK])
                )
                found |= {
                    item_id: {"prompt": json.loads(prompt), "completions": json.loads(completions)}
                    for item_id, prompt, completions in s.execute(query)
                }
        return found

    def quality(self) -> dict[str, dict]:
        """Per person: agreement with gold answers and with the majority (agreement.quality)."""
        return agreement.quality(self.judged())

    def progress(self, user: User) -> dict:
        with self.reading() as s:
            mine = s.scalar(
                sa.select(sa.func.count()).select_from(Label).where(Label.user_id == user.id)
            )
            total = s.scalar(sa.select(sa.func.count()).select_from(Item))
            labelled = s.scalar(sa.select(sa.func.count()).select_from(Label))
        return {
            "name": user.name,
            "role": user.role,
            "labelled_by_you": mine,
            "items": total,
            "labels": labelled,
            "labels_wanted": total * self.redundancy,
        }

    def counts(self) -> dict:
        with self.reading() as s:
            per_user = s.execute(
                sa.select(
                    User.name,
                    User.role,
                    sa.func.count(Label.id),
                    sa.func.min(Label.created_at),
                    sa.func.max(Label.created_at),
                    sa.func.avg(Label.seconds),
                )
                .outerjoin(Label, Label.user_id == User.id)
                .group_by(User.id)
                .order_by(User.name)
            ).all()
            items = s.scalar(sa.select(sa.func.count()).select_from(Item))
            labels = s.scalar(sa.select(sa.func.count()).select_from(Label))
            per_item = (
                sa.select(Label.item_id, sa.func.count().label("n"))
                .group_by(Label.item_id)
                .subquery()
            )
            complete = s.scalar(
                sa.select(sa.func.count())
                .select_from(per_item)
                .where(per_item.c.n >= self.redundancy)
            )
            skips = dict(
                s.execute(
                    sa.select(User.name, sa.func.count(Assignment.id))
                    .join(Assignment)
                    .where(Assignment.skipped.is_not(None))
                    .group_by(User.id)
                ).all()
            )
        people = []
        for name, role, count, first, last, seconds in per_user:
            hours = (last - first).total_seconds() / 3600 if count > 1 else 0.0
            # a rate over less than a minute means nothing
            hours = hours if hours > 1 / 60 else None
            people.append(
                {
                    "name": name,
                    "role": role,
                    "labels": count,
                    "skipped": skips.get(name, 0),
                    "labels_per_hour": round((count - 1) / hours, 1) if hours else None,
                    "mean_seconds_per_label": round(seconds, 1) if seconds is not None else None,
                }
            )
        return {
            "items": items,
            "labels": labels,
            "items_complete": complete,
            "redundancy": self.redundancy,
            "skipped": sum(skips.values()),
            "annotators": people,
        }
